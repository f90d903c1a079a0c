"""Protein metrics.

Every metric the protein benchmarks use is a task metric that
``peftlab.metrics`` already builds from torchmetrics (Spearman / Pearson /
MSE / MAE for fitness regression; accuracy / MCC / F1 / AUROC for
classification; per-residue accuracy, i.e. Q3 / Q8, for secondary structure),
so this module only records which one each benchmark reports.
"""

from __future__ import annotations

# benchmark -> (logged metric, better when)
BENCHMARK_METRIC: dict[str, tuple[str, str]] = {
    "flip_gb1": ("test/spearman", "max"),      # Dallago et al. 2021
    "flip_aav": ("test/spearman", "max"),
    "flip_meltome": ("test/spearman", "max"),
    "secondary_structure": ("test/accuracy", "max"),  # per-residue Q3 / Q8
    "subcellular_location": ("test/accuracy", "max"),
}


def benchmark_metric(benchmark: str) -> str:
    if benchmark not in BENCHMARK_METRIC:
        raise ValueError(f"no standard metric recorded for {benchmark!r}; known: {', '.join(BENCHMARK_METRIC)}")
    return BENCHMARK_METRIC[benchmark][0]
