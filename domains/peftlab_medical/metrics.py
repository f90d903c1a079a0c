"""Medical imaging metrics.

The metrics imaging papers report are task metrics that ``peftlab.metrics``
builds from torchmetrics: AUROC (macro, and per class / per label, logged as
``auroc_per_class/<class>``), accuracy, balanced accuracy and F1. This module
records which one each benchmark reports.
"""

from __future__ import annotations

from peftlab.model.metrics import benchmark_metric_from

# benchmark -> (logged metric, better when)
BENCHMARK_METRIC: dict[str, tuple[str, str]] = {
    "pneumoniamnist": ("test/auroc", "max"),    # MedMNIST v2 reports AUC and ACC
    "chestmnist": ("test/auroc", "max"),        # multi-label: macro AUROC over 14 labels
    "dermamnist": ("test/auroc", "max"),
    "ham10000": ("test/balanced_accuracy", "max"),  # ISIC 2018 task 3 ranks by balanced accuracy
}


def benchmark_metric(benchmark: str) -> str:
    return benchmark_metric_from(BENCHMARK_METRIC, benchmark)
