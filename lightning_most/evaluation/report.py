"""Evaluation results to JSON, a Markdown table and TensorBoard scalars.

A report holds, per suite name (``asr/librispeech_test_clean``, ``tts/embedded``, ``sWUGGY``, ...),
the scalar ``metrics()`` of its result and the full result as plain JSON data (``details``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class HasMetrics(Protocol):
    """Any suite result: ``AsrResult``, ``TtsResult``, ``PairAccuracyResult``, ``QaResult``."""

    def metrics(self) -> dict[str, float]:
        """Scalar metrics of the result."""
        ...


class ScalarWriter(Protocol):
    """A TensorBoard ``SummaryWriter``, e.g. a Lightning ``TensorBoardLogger.experiment``."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> Any:
        """Log one scalar."""
        ...


def _jsonable(value: Any) -> Any:
    """Plain JSON data for a result: dataclasses to dicts, paths to strings, tuples to lists."""
    plain = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return json.loads(json.dumps(plain, default=str))


@dataclass
class EvaluationReport:
    """Metrics and details of several suites, keyed by suite name."""

    metrics: dict[str, dict[str, float]]
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_results(cls, results: Mapping[str, HasMetrics]) -> EvaluationReport:
        """Collect the metrics and details of suite results keyed by suite name."""
        return cls(
            metrics={name: dict(result.metrics()) for name, result in results.items()},
            details={name: _jsonable(result) for name, result in results.items()},
        )

    def to_json(self, path: str | Path) -> Path:
        """Write the report as JSON to ``path`` and return it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"metrics": self.metrics, "details": self.details}, indent=2), encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> EvaluationReport:
        """Read a report written by ``to_json``."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if "metrics" not in data:
            raise ValueError(f"{path} is not an evaluation report: it has no 'metrics' key")
        return cls(metrics=data["metrics"], details=data.get("details", {}))

    def to_markdown(self) -> str:
        """One Markdown table: suite, metric, value (counts as integers, rates with 4 decimals)."""
        lines = ["| suite | metric | value |", "|---|---|---:|"]
        for suite, metrics in self.metrics.items():
            for metric, value in metrics.items():
                shown = str(int(value)) if metric.startswith("num_") else f"{value:.4f}"
                lines.append(f"| {suite} | {metric} | {shown} |")
        return "\n".join(lines) + "\n"

    def log_to_tensorboard(self, writer: ScalarWriter, step: int = 0, prefix: str = "eval") -> None:
        """``add_scalar`` every metric as ``<prefix>/<suite>/<metric>`` at ``step``."""
        for suite, metrics in self.metrics.items():
            for metric, value in metrics.items():
                writer.add_scalar(f"{prefix}/{suite}/{metric}", value, step)
