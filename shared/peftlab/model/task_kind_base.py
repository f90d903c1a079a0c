"""The base class of the task kinds (:mod:`peftlab.model.task_kinds` holds the table of them).

A :class:`TaskKind` builds the head on the backbone's features, the metric
set, the loss (with the metric inputs) for a batch, the scores ``peftlab
predict`` returns and the rows of ``predictions.csv``. Its defaults are a
sequence-level task's (one output row per example); the kinds of dense tasks
live beside their task's code (:mod:`peftlab.model.transcription`,
:mod:`peftlab.model.segmentation`).

Why our own small class: Lightning has no notion of a task type and
torchmetrics only supplies the metrics; the table of what each type needs lives
somewhere, and a class per type keeps each type's choices together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torchmetrics as tm
from torch import Tensor, nn

from peftlab.model.heads import TaskHead
from peftlab.tasks import PER_TOKEN_TASK_TYPES


class TaskKind:
    """What a task type needs from the model. Subclasses set :attr:`name` and
    :attr:`primary_metric` and override what differs from a sequence-level task.

    Attributes:
        name: the ``task_type`` string of configs and adapters.
        primary_metric: the metric (without ``val/``) that selects checkpoints
            and fills paper tables.
        cacheable: frozen features may be cached per example
            (``cache_frozen_features``).
    """

    name: str = ""
    primary_metric: str = ""
    cacheable: bool = True
    #: the options a run may set (``PeftModule(task_options=...)``) and their defaults
    default_options: dict[str, Any] = {}

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.default_options))
        if unknown:
            known = ", ".join(self.default_options) or "none"
            raise ValueError(f"task_type {self.name!r} has no option(s) {', '.join(unknown)}; its options: {known}")
        self.options = {**self.default_options, **options}

    def with_options(self, options: dict[str, Any] | None) -> "TaskKind":
        """This kind with a run's ``task_options`` set (a new instance; the registered one stays as it is)."""
        return type(self)(**options) if options else self

    def infer(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        """The logits of a batch (training, validation, test and predict): ``model(batch)``; a kind may
        run the model otherwise, e.g. over sliding windows of whole volumes when not training."""
        return model(batch)

    def write_prediction_files(self, outputs: list[dict[str, Any]], csv_path: Path) -> None:
        """Files ``peftlab predict`` writes beside ``predictions.csv`` (``csv_path``), before its rows
        are made: nothing, except for kinds with more to give than table rows (segmentation: one
        mask per case in ``masks/``; transcription: a Kaldi ``text`` file)."""

    @property
    def per_token(self) -> bool:
        """The head outputs one row per token (``[B, T, K]``)."""
        return self.name in PER_TOKEN_TASK_TYPES

    def build_head(self, backbone: Any, num_outputs: int, *, pooling: str = "mean", hidden_dim: int | None = None,
                   dropout: float = 0.1, weighted_layers: int | None = None,
                   pair_combination: str | None = None) -> nn.Module:
        """The trainable head on the backbone's :class:`~peftlab.backbone.Features`
        (``pair_combination``: the batch holds pairs, see :class:`~peftlab.model.heads.TaskHead`)."""
        return TaskHead(backbone.embed_dim, self.name, num_outputs, pooling, hidden_dim, dropout,
                        weighted_layers=weighted_layers, pair_combination=pair_combination)

    def build_metrics(self, num_outputs: int) -> tm.MetricCollection:
        """The metrics logged for validation and test (vector-valued ones become one scalar per entry)."""
        raise NotImplementedError

    def with_labels(self, label_names: list[str] | None) -> TaskKind:
        """The kind a model with these label names uses (PeftModule asks once): itself, unless
        the kind needs the names to compute its outputs (transcription decodes with them)."""
        return self

    def loss_and_predictions(self, logits: Tensor, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss, metric_preds, metric_target)`` for one batch (labels in ``batch["labels"]``)."""
        raise NotImplementedError

    def scores(self, logits: Tensor) -> Tensor:
        """What ``predict`` returns per example: probabilities, or values for regression."""
        return logits.float()

    def predict_output(self, logits: Tensor, batch: dict[str, Any]) -> dict[str, Any]:
        """One predict batch's output, for :meth:`prediction_table` (and gathered across processes)."""
        return {"ids": batch["ids"], "scores": self.scores(logits)}

    def prediction_table(self, outputs: list[dict[str, Any]],
                         label_names: list[str] | None) -> tuple[list[str], list[list[Any]]]:
        """``(header, rows)`` of ``predictions.csv``: ``id``, one column per output
        score (class names, ``probability`` for binary, ``prediction`` for a
        single regression output) and, for classification, ``predicted``."""
        header: list[str] = ["id"]
        rows: list[list[Any]] = []
        for out in outputs:
            scores = out["scores"]
            width = scores.shape[-1] if scores.ndim > 1 else 1
            header = ["id"] + self.score_columns(label_names, width) + (["predicted"] if self.classifies else [])
            for id_, values in zip(out["ids"], scores.reshape(len(out["ids"]), -1).tolist()):
                rows.append([id_] + values + ([self.predicted(label_names, values)] if self.classifies else []))
        return header, rows

    classifies: bool = True  # predictions.csv gets a ``predicted`` label column

    single_score_column = "output_0"  # the column of a one-score task without label names

    def score_columns(self, names: list[str] | None, width: int) -> list[str]:
        if names and len(names) == width:
            return [str(n) for n in names]
        return [self.single_score_column] if width == 1 else [f"output_{k}" for k in range(width)]

    def predicted(self, names: list[str] | None, values: list[float]) -> Any:
        """The predicted label of one row of scores: the class name of the argmax."""
        best = max(range(len(values)), key=values.__getitem__)
        return str(names[best]) if names and len(names) == len(values) else best
