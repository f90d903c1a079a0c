"""Task types and what each needs (imports nothing heavy, so every floor of the core can use it)."""

from __future__ import annotations

#: metric names (the part after ``val/`` / ``test/``) for which a smaller value is better
LOWER_IS_BETTER = ("mse", "mae", "loss", "rmse", "error", "wer", "cer")


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of this metric is better (errors, losses): ``test/mse``, ``val/loss``..."""
    name = metric.rsplit("/", 1)[-1]
    return any(name == m or name.startswith(m + "_") for m in LOWER_IS_BETTER)
