"""Metrics torchmetrics lacks, and the lookup of a benchmark's standard metric.

Which metrics each task type logs, its loss and its primary metric live in
:mod:`peftlab.model.task_kinds`.
"""

from __future__ import annotations

import torch
import torchmetrics as tm


class BinaryBalancedAccuracy(tm.classification.BinaryStatScores):
    """Mean of sensitivity and specificity. torchmetrics has it for multiclass
    inputs only (macro accuracy), so this small subclass computes it from the
    binary confusion counts."""

    def compute(self) -> torch.Tensor:
        tp, fp, tn, fn = self._final_state()
        tp, fp, tn, fn = (t.sum().float() for t in (tp, fp, tn, fn))
        return 0.5 * (tp / (tp + fn).clamp_min(1) + tn / (tn + fp).clamp_min(1))


def benchmark_metric_from(table: dict[str, tuple[str, str]], benchmark: str) -> str:
    """The logged metric a benchmark reports, from a domain's table
    (benchmark -> (metric, "max" | "min"))."""
    if benchmark not in table:
        raise ValueError(f"no standard metric recorded for {benchmark!r}; known: {', '.join(table)}")
    return table[benchmark][0]
