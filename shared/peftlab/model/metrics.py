"""Task metrics from torchmetrics, and how predictions are read from logits.

One place decides, per task type, the loss target, the metric set and the
primary metric (used for checkpoint selection and the paper tables).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchmetrics as tm
from torch import Tensor

from peftlab.tasks import IGNORE_INDEX

PRIMARY_METRIC = {
    "regression": "spearman",
    "binary": "auroc",
    "multiclass": "accuracy",
    "multilabel": "auroc",
    "token_classification": "accuracy",
}


class BinaryBalancedAccuracy(tm.classification.BinaryStatScores):
    """Mean of sensitivity and specificity. torchmetrics has it for multiclass
    inputs only (macro accuracy), so this small subclass computes it from the
    binary confusion counts."""

    def compute(self) -> torch.Tensor:
        tp, fp, tn, fn = self._final_state()
        tp, fp, tn, fn = (t.sum().float() for t in (tp, fp, tn, fn))
        return 0.5 * (tp / (tp + fn).clamp_min(1) + tn / (tn + fp).clamp_min(1))


def build_metrics(task_type: str, num_outputs: int) -> tm.MetricCollection:
    """Metrics per task. Vector-valued ones (per class, per label, per output)
    are logged as one scalar per entry by PeftModule."""
    n = num_outputs
    if task_type == "regression":
        return tm.MetricCollection({
            "spearman": tm.SpearmanCorrCoef(num_outputs=n), "pearson": tm.PearsonCorrCoef(num_outputs=n),
            "mse": tm.MeanSquaredError(num_outputs=n), "mae": tm.MeanAbsoluteError(num_outputs=n)})
    if task_type == "binary":
        return tm.MetricCollection({
            "accuracy": tm.classification.BinaryAccuracy(), "balanced_accuracy": BinaryBalancedAccuracy(),
            "mcc": tm.classification.BinaryMatthewsCorrCoef(),
            "f1": tm.classification.BinaryF1Score(), "auroc": tm.classification.BinaryAUROC()})
    if task_type == "multiclass":
        return tm.MetricCollection({
            "accuracy": tm.classification.MulticlassAccuracy(n, average="micro"),
            "balanced_accuracy": tm.classification.MulticlassAccuracy(n, average="macro"),
            "mcc": tm.classification.MulticlassMatthewsCorrCoef(n),
            "f1": tm.classification.MulticlassF1Score(n, average="macro"),
            "auroc": tm.classification.MulticlassAUROC(n, average="macro"),
            "auroc_per_class": tm.classification.MulticlassAUROC(n, average=None)})
    if task_type == "multilabel":
        return tm.MetricCollection({
            "accuracy": tm.classification.MultilabelAccuracy(n), "f1": tm.classification.MultilabelF1Score(n),
            "auroc": tm.classification.MultilabelAUROC(n, average="macro"),
            "auroc_per_label": tm.classification.MultilabelAUROC(n, average=None)})
    if task_type == "token_classification":
        return tm.MetricCollection({
            "accuracy": tm.classification.MulticlassAccuracy(n, average="micro", ignore_index=IGNORE_INDEX)})
    raise ValueError(f"unknown task_type {task_type!r}")


def loss_and_predictions(task_type: str, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, metric_preds, metric_target)`` for one batch."""
    if task_type == "regression":
        preds = logits.squeeze(-1) if logits.shape[-1] == 1 else logits
        labels = labels.to(preds.dtype).reshape(preds.shape)
        return F.mse_loss(preds, labels), preds.float(), labels.float()
    if task_type == "binary":
        z = logits.squeeze(-1)
        y = labels.to(z.dtype).reshape(z.shape)
        return F.binary_cross_entropy_with_logits(z, y), z.float().sigmoid(), y.long()
    if task_type == "multiclass":
        return F.cross_entropy(logits, labels.long()), logits.float().softmax(-1), labels.long()
    if task_type == "multilabel":
        y = labels.to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, y), logits.float().sigmoid(), y.long()
    if task_type == "token_classification":
        flat, y = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).long()
        return F.cross_entropy(flat, y, ignore_index=IGNORE_INDEX), flat.float().softmax(-1), y
    raise ValueError(f"unknown task_type {task_type!r}")


def benchmark_metric_from(table: dict[str, tuple[str, str]], benchmark: str) -> str:
    """The logged metric a benchmark reports, from a domain's table
    (benchmark -> (metric, "max" | "min"))."""
    if benchmark not in table:
        raise ValueError(f"no standard metric recorded for {benchmark!r}; known: {', '.join(table)}")
    return table[benchmark][0]
