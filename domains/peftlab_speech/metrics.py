"""Speech metrics.

Keyword spotting and speaker identification report accuracy; emotion
recognition reports unweighted average recall (UAR), the mean of per-class
recalls, which is the multiclass ``balanced_accuracy`` that
``peftlab.metrics`` logs (torchmetrics' macro-averaged accuracy), next to
macro F1 and per-class AUROC. This module records which one each benchmark
reports.
"""

from __future__ import annotations

from peftlab.model.metrics import benchmark_metric_from

# benchmark -> (logged metric, better when)
BENCHMARK_METRIC: dict[str, tuple[str, str]] = {
    "fsdd_digit": ("test/accuracy", "max"),
    "fsdd_speaker": ("test/accuracy", "max"),
    "speech_commands_12": ("test/accuracy", "max"),  # SUPERB KS
    "emotion": ("test/balanced_accuracy", "max"),   # UAR (PEFT-SER, IEMOCAP / CREMA-D)
}


def benchmark_metric(benchmark: str) -> str:
    return benchmark_metric_from(BENCHMARK_METRIC, benchmark)
