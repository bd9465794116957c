#!/usr/bin/env bash
# Set up lightning_most on a fresh Debian/Ubuntu machine: system voices and tools, then a venv in .venv.
#   bash scripts/setup.sh            # then: .venv/bin/python -m lightning_most fit --config conf/quickstart.yaml
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(espeak-ng sox flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts festlex-cmu
              fortunes fortunes-min wordnet-base)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -qq "${missing[@]}" || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}"; }
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[dev]"
echo "lightning_most is set up in .venv"
