"""Task types and what each needs (imports nothing heavy, so every floor of the core can use it)."""

from __future__ import annotations

#: every task type; each has its TaskKind (head, loss, metrics, predictions) in peftlab.model.task_kinds
TASK_TYPES = ("binary", "multiclass", "multilabel", "regression", "token_classification", "token_regression",
              "transcription", "segmentation")

#: task types whose head outputs one row per token (``[B, T, K]``; transcription: per encoder frame)
PER_TOKEN_TASK_TYPES = ("token_classification", "token_regression", "transcription")

IGNORE_INDEX = -100  # label value that losses and metrics skip (padding, special tokens)

#: metric names (the part after ``val/`` / ``test/``) for which a smaller value is better
LOWER_IS_BETTER = ("mse", "mae", "loss", "rmse", "error", "wer", "cer", "hd95")


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of this metric is better (errors, losses): ``test/mse``, ``val/loss``..."""
    name = metric.rsplit("/", 1)[-1]
    return any(name == m or name.startswith(m + "_") for m in LOWER_IS_BETTER)


def check_task_type(task_type: str) -> str:
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task_type {task_type!r}; expected one of {', '.join(TASK_TYPES)}")
    return task_type
