"""Protein metrics.

Every metric the protein benchmarks use is a task metric that
``peftlab.model.task_kinds`` already builds from torchmetrics (Spearman /
Pearson / MSE / MAE for fitness regression and, over every scored residue, for
per-residue regression; accuracy / MCC / F1 / AUROC / AUPR for
classification and pairs; per-residue accuracy, i.e. Q3 / Q8, for secondary
structure), so this module only records which one each benchmark reports.
"""

from __future__ import annotations

from peftlab.model.metrics import benchmark_metric_from

# benchmark -> (logged metric, better when)
BENCHMARK_METRIC: dict[str, tuple[str, str]] = {
    "flip_gb1": ("test/spearman", "max"),      # Dallago et al. 2021
    "flip_aav": ("test/spearman", "max"),
    "flip_meltome": ("test/spearman", "max"),
    "secondary_structure": ("test/accuracy", "max"),  # per-residue Q3 / Q8
    "subcellular_location": ("test/accuracy", "max"),
    "chezod": ("test/spearman", "max"),        # residue-level disorder (Dass et al. 2020; Schmirler et al. 2024)
    "ppi_yeast": ("test/aupr", "max"),         # D-SCRIPT yeast PPI (Sledzieski et al. 2021): positives 1 in 11
}


def benchmark_metric(benchmark: str) -> str:
    return benchmark_metric_from(BENCHMARK_METRIC, benchmark)
