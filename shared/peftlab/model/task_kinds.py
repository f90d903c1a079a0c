"""One class per task type: what the model needs to know about it.

A :class:`~peftlab.model.task_kind_base.TaskKind` builds the head on the
backbone's features, the metric set, the loss (with the metric inputs) for a
batch, the scores ``peftlab predict`` returns and the rows of
``predictions.csv``. :class:`PeftModule` asks the kind of its ``task_type`` for
each of these, so a new task type is one subclass registered here plus its name
in :data:`peftlab.tasks.TASK_TYPES`, and the module, the sweep and the
prediction writer need no change. The sequence- and token-level kinds are
here; transcription's and segmentation's live beside their task's code
(:mod:`peftlab.model.transcription`, :mod:`peftlab.model.segmentation`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics as tm

from peftlab.model.metrics import BinaryBalancedAccuracy
from peftlab.model.segmentation import Segmentation
from peftlab.model.task_kind_base import TaskKind
from peftlab.model.transcription import Transcription
from peftlab.tasks import IGNORE_INDEX, TASK_TYPES, check_task_type

__all__ = ["TASK_KINDS", "TaskKind", "register_task_kind", "task_kind"]


class Regression(TaskKind):
    name, primary_metric, classifies = "regression", "spearman", False

    def build_metrics(self, num_outputs: int) -> tm.MetricCollection:
        n = num_outputs
        return tm.MetricCollection({
            "spearman": tm.SpearmanCorrCoef(num_outputs=n), "pearson": tm.PearsonCorrCoef(num_outputs=n),
            "mse": tm.MeanSquaredError(num_outputs=n), "mae": tm.MeanAbsoluteError(num_outputs=n)})

    def loss_and_predictions(self, logits, batch):
        preds = logits.squeeze(-1) if logits.shape[-1] == 1 else logits
        labels = batch["labels"].to(preds.dtype).reshape(preds.shape)
        return F.mse_loss(preds, labels), preds.float(), labels.float()

    single_score_column = "prediction"


class Binary(TaskKind):
    name, primary_metric = "binary", "auroc"

    def build_metrics(self, num_outputs: int) -> tm.MetricCollection:
        return tm.MetricCollection({
            "accuracy": tm.classification.BinaryAccuracy(), "balanced_accuracy": BinaryBalancedAccuracy(),
            "mcc": tm.classification.BinaryMatthewsCorrCoef(),
            "f1": tm.classification.BinaryF1Score(), "auroc": tm.classification.BinaryAUROC(),
            "aupr": tm.classification.BinaryAveragePrecision()})

    def loss_and_predictions(self, logits, batch):
        z = logits.squeeze(-1)
        y = batch["labels"].to(z.dtype).reshape(z.shape)
        return F.binary_cross_entropy_with_logits(z, y), z.float().sigmoid(), y.long()

    def scores(self, logits):
        return logits.float().sigmoid()

    single_score_column = "probability"

    def predicted(self, names, values):
        """The positive or negative class at probability 0.5."""
        positive = int(values[0] >= 0.5)
        return str(names[positive]) if names and len(names) == 2 else positive


class Multiclass(TaskKind):
    name, primary_metric = "multiclass", "accuracy"

    def build_metrics(self, num_outputs: int) -> tm.MetricCollection:
        n = num_outputs
        return tm.MetricCollection({
            "accuracy": tm.classification.MulticlassAccuracy(n, average="micro"),
            "balanced_accuracy": tm.classification.MulticlassAccuracy(n, average="macro"),
            "mcc": tm.classification.MulticlassMatthewsCorrCoef(n),
            "f1": tm.classification.MulticlassF1Score(n, average="macro"),
            "auroc": tm.classification.MulticlassAUROC(n, average="macro"),
            "auroc_per_class": tm.classification.MulticlassAUROC(n, average=None)})

    def loss_and_predictions(self, logits, batch):
        labels = batch["labels"].long()
        return F.cross_entropy(logits, labels), logits.float().softmax(-1), labels

    def scores(self, logits):
        return logits.float().softmax(-1)


class Multilabel(TaskKind):
    name, primary_metric = "multilabel", "auroc"

    def build_metrics(self, num_outputs: int) -> tm.MetricCollection:
        n = num_outputs
        return tm.MetricCollection({
            "accuracy": tm.classification.MultilabelAccuracy(n), "f1": tm.classification.MultilabelF1Score(n),
            "auroc": tm.classification.MultilabelAUROC(n, average="macro"),
            "auroc_per_label": tm.classification.MultilabelAUROC(n, average=None),
            "aupr": tm.classification.MultilabelAveragePrecision(n, average="macro")})

    def loss_and_predictions(self, logits, batch):
        y = batch["labels"].to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, y), logits.float().sigmoid(), y.long()

    def scores(self, logits):
        return logits.float().sigmoid()

    def predicted(self, names, values):
        """The labels at or above probability 0.5, joined by ``;``."""
        on = [i for i, v in enumerate(values) if v >= 0.5]
        return ";".join(str(names[i]) if names and len(names) == len(values) else str(i) for i in on)


def per_token_table(kind: TaskKind, outputs: list[dict[str, Any]],
                    label_names: list[str] | None) -> tuple[list[str], list[list[Any]]]:
    """``predictions.csv`` of a per-token kind: one row per scored token (``mask``), every token
    when the batch had no labels to mark the scored ones."""
    header: list[str] = ["id", "position"]
    rows: list[list[Any]] = []
    for out in outputs:
        scores, mask = out["scores"], out.get("mask")
        header = (["id", "position"] + kind.score_columns(label_names, scores.shape[-1])
                  + (["predicted"] if kind.classifies else []))
        for i, id_ in enumerate(out["ids"]):
            positions = (mask[i].nonzero().flatten().tolist() if mask is not None
                         else list(range(scores.shape[1])))
            for pos in positions:
                values = scores[i, pos].tolist()
                rows.append([id_, pos] + values + ([kind.predicted(label_names, values)] if kind.classifies else []))
    return header, rows


class TokenClassification(TaskKind):
    """One class per token; tokens labelled :data:`IGNORE_INDEX` (padding,
    special tokens, unlabelled residues) count in neither loss nor metrics."""

    name, primary_metric, cacheable = "token_classification", "accuracy", False

    def build_metrics(self, num_outputs: int) -> tm.MetricCollection:
        return tm.MetricCollection({"accuracy": tm.classification.MulticlassAccuracy(
            num_outputs, average="micro", ignore_index=IGNORE_INDEX)})

    def loss_and_predictions(self, logits, batch):
        flat, y = logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1).long()
        return F.cross_entropy(flat, y, ignore_index=IGNORE_INDEX), flat.float().softmax(-1), y

    def scores(self, logits):
        return logits.float().softmax(-1)

    def predict_output(self, logits, batch):
        out = super().predict_output(logits, batch)
        out["mask"] = batch["labels"] != IGNORE_INDEX if "labels" in batch else None
        return out

    def prediction_table(self, outputs, label_names):
        """One row per scored token: ``id``, ``position``, the class scores and ``predicted``."""
        return per_token_table(self, outputs, label_names)

class TokenRegression(TaskKind):
    """One value per token (per-residue disorder, per-frame pitch...). Labels
    ``[B, T]`` (``[B, T, K]`` for K values per token) hold NaN where a token is
    not scored: padding and special tokens, masked residues, missing
    measurements. Only scored tokens count in the loss and the metrics, and the
    metrics pool every scored token of the split (Spearman over residues, not a
    mean of per-protein correlations)."""

    name, primary_metric, cacheable, classifies = "token_regression", "spearman", False, False
    single_score_column = "prediction"

    def build_metrics(self, num_outputs: int) -> tm.MetricCollection:
        return Regression().build_metrics(num_outputs)

    def loss_and_predictions(self, logits, batch):
        labels = batch["labels"].to(logits.dtype).reshape(logits.shape)
        scored = torch.isfinite(labels).all(-1)  # [B, T]: a token is scored when all its values are
        preds, target = logits[scored], labels[scored]  # [N, K]
        if logits.shape[-1] == 1:
            preds, target = preds.squeeze(-1), target.squeeze(-1)
        # no scored token in the batch: a zero loss that still reaches every trained weight
        loss = F.mse_loss(preds, target) if preds.numel() else logits.sum() * 0.0
        return loss, preds.float(), target.float()

    def predict_output(self, logits, batch):
        out = super().predict_output(logits, batch)
        labels = batch.get("labels")
        out["mask"] = torch.isfinite(labels.reshape(logits.shape)).all(-1) if labels is not None else None
        return out

    def prediction_table(self, outputs, label_names):
        """One row per scored token: ``id``, ``position``, the prediction(s)."""
        return per_token_table(self, outputs, label_names)


TASK_KINDS: dict[str, TaskKind] = {}


def register_task_kind(kind: TaskKind) -> TaskKind:
    """Add a task type's kind to the table (its name must be in :data:`peftlab.tasks.TASK_TYPES`)."""
    check_task_type(kind.name)
    TASK_KINDS[kind.name] = kind
    return kind


for _kind in (Regression(), Binary(), Multiclass(), Multilabel(), TokenClassification(), TokenRegression(),
              Transcription(), Segmentation()):
    register_task_kind(_kind)


def task_kind(task_type: str) -> TaskKind:
    """The :class:`TaskKind` of a ``task_type`` (a ValueError listing the known ones otherwise)."""
    check_task_type(task_type)
    if task_type not in TASK_KINDS:  # named in tasks.py but its kind not registered: a core bug
        raise ValueError(f"task_type {task_type!r} has no TaskKind registered; registered: {', '.join(TASK_KINDS)}")
    return TASK_KINDS[task_type]


assert set(TASK_KINDS) == set(TASK_TYPES), "every task type in peftlab.tasks needs a TaskKind here"
