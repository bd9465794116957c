"""`reuse_freed_host_memory`: a freed large tensor's pages are reused, not faulted in again, and the switch is honoured.

Each case runs in a fresh interpreter: malloc's settings are per process and cannot be undone.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lightning_most.host_memory import HOST_MALLOC_ENV, reuse_freed_host_memory

# Allocate, write and free a 64 MiB tensor 19 times; print whether the setting took and the minor page faults of
# the last three rounds. The heap settled after 4-8 rounds here (glibc 2.36; torch asks posix_memalign for 64-byte
# alignment, which wants more than a freed chunk of the same size): from then on the freed block is reused.
PROBE = """
import resource, torch
from lightning_most.host_memory import reuse_freed_host_memory
active = reuse_freed_host_memory()
for _ in range(16):
    x = torch.ones(16 * 1024 * 1024); del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    x = torch.ones(16 * 1024 * 1024); del x
print(active, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = 16 * 1024 * 1024 * 4 // 4096  # 16384 pages of 4 KiB in 64 MiB


def _probe(mode: str) -> tuple[bool, int]:
    env = os.environ | {HOST_MALLOC_ENV: mode}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=True)
    active, faults = out.stdout.split()
    return active == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_reuse_keeps_freed_pages_and_system_faults_them_again():
    active, faults = _probe("reuse")
    assert active
    assert faults < PAGES // 10, f"{faults} page faults in 3 rounds: the freed 64 MiB was not reused"
    active, faults = _probe("system")
    assert not active
    assert faults > 2 * PAGES, f"only {faults} page faults in 3 rounds with glibc's defaults: the probe no longer measures reuse"


def test_unknown_mode_is_refused_with_the_variable_named(monkeypatch):
    monkeypatch.setenv(HOST_MALLOC_ENV, "jemalloc")
    with pytest.raises(ValueError, match=f"{HOST_MALLOC_ENV}='jemalloc'.*'reuse'.*'system'"):
        reuse_freed_host_memory()
