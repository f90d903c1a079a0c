"""One class per task type: what the model needs to know about it.

A :class:`TaskKind` builds the head on the backbone's features, the metric
set, the loss (with the metric inputs) for a batch, the scores ``peftlab
predict`` returns and the rows of ``predictions.csv``. :class:`PeftModule`
asks the kind of its ``task_type`` for each of these, so a new task type
(segmentation, transcription, per-residue regression...) is one subclass
registered here plus its name in :data:`peftlab.tasks.TASK_TYPES`, and the
module, the sweep and the prediction writer need no change.

Why our own small class: Lightning has no notion of a task type and
torchmetrics only supplies the metrics; the table of what each type needs lives
somewhere, and a class per type keeps each type's choices together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics as tm
from torch import Tensor, nn

from peftlab.data.transcripts import BLANK
from peftlab.model import segmentation as seg
from peftlab.model.heads import TaskHead
from peftlab.model.metrics import BinaryBalancedAccuracy
from peftlab.model.transcription import (BeamSearchDecoder, CTCHead, ctc_loss, greedy_decode, kaldi_text,
                                         references, split_head_output, utterance_wer)
from peftlab.persistence.atomic import atomic_write
from peftlab.tasks import IGNORE_INDEX, PER_TOKEN_TASK_TYPES, TASK_TYPES, check_task_type


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


class Transcription(TaskKind):
    """Speech recognition with CTC (:mod:`peftlab.model.transcription`): a frame-level head
    over the character vocabulary (the label names: ``<blank>``, ``|``, the characters),
    word and character error rates. ``head_hidden_dim`` gives SUPERB's 2-layer BiLSTM
    downstream (units per direction); ``pooling`` is not used.

    Options (``task_options``, stored with the adapter): ``decoder`` ``greedy`` (default) or
    ``beam`` (torchaudio's flashlight CTC beam search, :class:`~peftlab.model.transcription.BeamSearchDecoder`)
    for validation, test and predict alike, so the checkpoint is selected on the WER the test
    reports; ``beam_size``, ``lexicon`` (a ``word c h a r s |`` file restricting the output to its
    words), ``lm`` (a KenLM binary or ARPA file), ``lm_weight`` and ``word_score`` apply to ``beam``."""

    name, primary_metric, cacheable, classifies = "transcription", "wer", False, False
    DECODERS = ("greedy", "beam")
    default_options = {"decoder": "greedy", "beam_size": 50, "lexicon": None, "lm": None, "lm_weight": 2.0,
                       "word_score": 0.0}

    def __init__(self, vocabulary: list[str] | None = None, **options: Any) -> None:
        super().__init__(**options)
        if self.options["decoder"] not in self.DECODERS:
            raise ValueError(f"transcription decoder must be one of {', '.join(self.DECODERS)}, "
                             f"got {self.options['decoder']!r}")
        beam_only = [k for k in ("lexicon", "lm") if self.options[k] is not None]
        if beam_only and self.options["decoder"] != "beam":
            raise ValueError(f"transcription option(s) {', '.join(beam_only)} need decoder: beam (greedy decoding "
                             "uses no lexicon or language model)")
        self.vocabulary = vocabulary
        self._beam: BeamSearchDecoder | None = None  # built on first use (it loads the lexicon and LM)

    def with_options(self, options):
        return Transcription(self.vocabulary, **options) if options else self

    def with_labels(self, label_names):
        if not label_names or label_names[0] != BLANK:
            raise ValueError(f"task_type transcription needs label_names: the character vocabulary, {BLANK!r} "
                             f"first (a transcription DataModule gives it), got {label_names!r}")
        return Transcription(list(label_names), **self.options)

    def decode(self, scores: Tensor, frames: Tensor) -> list[str]:
        """The hypotheses of a batch of head scores, with the configured decoder."""
        if self.options["decoder"] == "greedy":
            return greedy_decode(scores, frames, self.vocabulary)
        if self._beam is None:
            o = self.options
            self._beam = BeamSearchDecoder(self.vocabulary, lexicon=o["lexicon"], lm=o["lm"],
                                           beam_size=o["beam_size"], lm_weight=o["lm_weight"],
                                           word_score=o["word_score"])
        return self._beam(scores, frames)

    def build_head(self, backbone, num_outputs, *, pooling="mean", hidden_dim=None, dropout=0.1,
                   weighted_layers=None, pair_combination=None):
        if pair_combination is not None:
            raise ValueError("transcription takes one utterance per example, not pairs")
        return CTCHead(backbone.embed_dim, num_outputs, hidden_dim, dropout, weighted_layers)

    def build_metrics(self, num_outputs: int) -> tm.MetricCollection:
        return tm.MetricCollection({"wer": tm.text.WordErrorRate(), "cer": tm.text.CharErrorRate()},
                                   compute_groups=False)

    def loss_and_predictions(self, logits, batch):
        scores, frames = split_head_output(logits)
        loss = ctc_loss(scores, frames, batch["labels"], batch["ids"])
        return loss, self.decode(scores, frames), references(batch["labels"], self.vocabulary)

    def predict_output(self, logits, batch):
        scores, frames = split_head_output(logits)
        refs = references(batch["labels"], self.vocabulary) if "labels" in batch else None
        return {"ids": batch["ids"], "hypotheses": self.decode(scores, frames),
                "references": refs}

    def prediction_table(self, outputs, label_names):
        """``id``, ``hypothesis`` and, when the data has transcripts, ``reference`` and the utterance's ``wer``."""
        with_refs = all(out.get("references") is not None for out in outputs)
        header = ["id", "hypothesis"] + (["reference", "wer"] if with_refs else [])
        rows: list[list[Any]] = []
        for out in outputs:
            for i, (id_, hyp) in enumerate(zip(out["ids"], out["hypotheses"])):
                ref = out["references"][i] if with_refs else None
                rows.append([id_, hyp] + ([ref, utterance_wer(hyp, ref)] if with_refs else []))
        return header, rows

    def write_prediction_files(self, outputs, csv_path):
        """The hypotheses as a Kaldi ``text`` file (``<id> <hypothesis>`` per line), the CSV's path
        with the suffix ``.text`` (``predictions.text``)."""
        text = kaldi_text([pair for out in outputs for pair in zip(out["ids"], out["hypotheses"])])
        atomic_write(Path(csv_path).with_suffix(".text"), lambda tmp: Path(tmp).write_text(text))


class Segmentation(TaskKind):
    """One class per voxel (or pixel): logits ``[B, C, *spatial]``, labels ``[B, 1, *spatial]`` class
    indices (background 0). Loss: a MONAI Dice loss (``dice_ce`` by default); metrics: MONAI's Dice and
    HD95 per class (background first) and over the foreground classes (primary: ``dice``), see
    :mod:`peftlab.model.segmentation`. Training runs the model on the crops it is given; validation,
    test and predict run it over whole volumes in sliding windows of ``roi_size`` (default: the
    backbone's ``input_size``). The head is the backbone's own decoder (``segmentation_head``).

    Options (``task_options``): ``roi_size``, ``overlap``, ``sw_batch_size``, ``blend`` (``gaussian``
    or ``constant``), ``loss`` (``dice_ce``, ``dice``, ``dice_focal``), ``lambda_dice``, ``lambda_other``
    (CE or focal weight), ``loss_background`` (the Dice term includes the background), ``batch_dice`` (the
    Dice term over the whole batch, see :func:`peftlab.model.segmentation.build_loss`), ``hd95`` (compute
    HD95; off saves time on large volumes)."""

    name, primary_metric, cacheable = "segmentation", "dice", False
    default_options = {"roi_size": None, "overlap": 0.25, "sw_batch_size": 4, "blend": "gaussian",
                       "loss": "dice_ce", "lambda_dice": 1.0, "lambda_other": 1.0, "loss_background": True,
                       "batch_dice": True, "hd95": True}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options["loss"] not in seg.LOSSES:
            raise ValueError(f"segmentation loss must be one of {', '.join(seg.LOSSES)}, got {self.options['loss']!r}")
        self._loss: nn.Module | None = None  # built on first use: MONAI is imported only by segmentation runs

    @property
    def loss(self) -> nn.Module:
        if self._loss is None:
            o = self.options
            self._loss = seg.build_loss(o["loss"], o["loss_background"], o["lambda_dice"], o["lambda_other"],
                                        o["batch_dice"])
        return self._loss

    def build_head(self, backbone, num_outputs, **_):
        if not hasattr(backbone, "segmentation_head"):
            raise ValueError(f"task_type segmentation needs a backbone with a segmentation decoder "
                             f"(segmentation_head), which {backbone.name} has not; e.g. "
                             f"peftlab_medical.MonaiUNETRBackbone")
        return backbone.segmentation_head(num_outputs)

    def build_metrics(self, num_outputs):
        return tm.MetricCollection({"dice": seg.SegmentationScores(num_outputs, hd95=self.options["hd95"])},
                                   compute_groups=False)

    def infer(self, model, batch):
        roi = self.options["roi_size"] or getattr(getattr(model, "backbone", None), "input_size", None)
        if model.training or roi is None:
            return model(batch)
        o = self.options
        return seg.sliding_window_logits(model, batch["images"], list(roi), o["overlap"], o["sw_batch_size"],
                                         o["blend"])

    def loss_and_predictions(self, logits, batch):
        labels, shapes = batch["labels"].long(), batch.get("shapes")
        if labels.ndim == logits.ndim - 1:
            labels = labels.unsqueeze(1)
        if shapes is None:
            return self.loss(logits, labels), logits.argmax(1), labels[:, 0]
        z, y = seg.cases(logits, shapes), seg.cases(labels, shapes)  # whole volumes, each its own size
        loss = torch.stack([self.loss(zi[None], yi[None]) for zi, yi in zip(z, y)]).mean()
        return loss, [zi.argmax(0) for zi in z], [yi[0] for yi in y]

    def scores(self, logits):
        return logits.float().softmax(1)

    def predict_output(self, logits, batch):
        masks = seg.cases(logits.argmax(1), batch.get("shapes"))
        out = {"ids": batch["ids"], "masks": [m.to(torch.uint8).cpu() for m in masks],
               "affines": list(batch["affines"].cpu()) if "affines" in batch else [None] * len(masks)}
        if "labels" in batch:
            labels = seg.cases(batch["labels"].long().reshape(logits.shape[:1] + logits.shape[2:]), batch.get("shapes"))
            out["scores"] = [seg.case_scores(m, y, logits.shape[1], self.options["hd95"])
                             for m, y in zip(masks, labels)]
        return out

    def write_prediction_files(self, outputs, csv_path):
        seg.write_masks(outputs, Path(csv_path).parent / "masks")

    def prediction_table(self, outputs, label_names):
        """One row per case: ``id``, ``mask`` (the NIfTI file) and, when the data had labels,
        ``dice/<class>`` and ``hd95/<class>`` for every class, background first."""
        header, rows = ["id", "mask"], []
        for out in outputs:
            n = len(out["scores"][0][0]) if out.get("scores") else 0
            names = [str(c) for c in label_names] if label_names and len(label_names) == n else list(map(str, range(n)))
            header = ["id", "mask"] + [f"{m}/{c}" for m in ("dice", "hd95") for c in names]
            for i, id_ in enumerate(out["ids"]):
                values = out["scores"][i].flatten().tolist() if out.get("scores") else []
                rows.append([id_, out.get("masks_written", [""] * len(out["ids"]))[i]] + values)
        return header, rows


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
