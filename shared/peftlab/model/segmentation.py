"""The ``segmentation`` task kind (:class:`Segmentation`, at the end) and what it runs on:
Dice / HD95 scores per case and class, the loss, whole-volume sliding-window
inference and the NIfTI masks ``peftlab predict`` writes.

Every number comes from MONAI (``compute_dice``, ``compute_hausdorff_distance``
with ``percentile=95``, ``DiceCELoss``, ``sliding_window_inference``);
MONAI is imported inside the functions, so the core still imports no field
library until a segmentation run asks for it (``tests/test_lean_imports.py``).

Batches of a dense task: ``images`` ``[B, C, *spatial]``, ``labels``
``[B, 1, *spatial]`` class indices, ``ids``; evaluation batches of whole
volumes of different sizes are padded to one size and carry ``shapes``
(``[B, n_spatial]``, each case's own size), so that every case is scored on
its own voxels only; ``affines`` (``[B, 4, 4]``, 3D) place the predicted masks.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torchmetrics as tm
from torch import Tensor, nn
from torchmetrics.utilities import dim_zero_cat

from peftlab.model.task_kind_base import TaskKind

#: the loss names ``task_options.loss`` accepts -> MONAI class names
LOSSES = {"dice_ce": "DiceCELoss", "dice": "DiceLoss", "dice_focal": "DiceFocalLoss"}


def build_loss(name: str, include_background: bool = True, lambda_dice: float = 1.0,
               lambda_other: float = 1.0, batch_dice: bool = True) -> torch.nn.Module:
    """A MONAI loss on logits ``[B, C, *spatial]`` and class-index labels ``[B, 1, *spatial]``
    (softmax over classes, labels one-hot encoded by MONAI). ``batch_dice``: the Dice term over
    the whole batch (MONAI's ``batch=True``, as nnU-Net does) instead of per crop; per crop, a
    structure absent from a crop drives its soft Dice towards predicting it nowhere, which on
    small structures (the hippocampus) stalls training at all-background."""
    import monai.losses

    if name not in LOSSES:
        raise ValueError(f"segmentation loss must be one of {', '.join(LOSSES)}, got {name!r}")
    cls = getattr(monai.losses, LOSSES[name])
    kwargs: dict[str, Any] = dict(to_onehot_y=True, softmax=True, include_background=include_background,
                                  batch=batch_dice)
    if name == "dice_ce":
        kwargs.update(lambda_dice=lambda_dice, lambda_ce=lambda_other)
    elif name == "dice_focal":
        kwargs.update(lambda_dice=lambda_dice, lambda_focal=lambda_other)
    return cls(**kwargs)


def cases(values: Tensor, shapes: Tensor | None) -> list[Tensor]:
    """The cases of a batch ``[B, ..., *spatial]``, each cut back to its own spatial size
    (``shapes``: ``[B, n_spatial]``; ``None``: the batch's size is every case's size)."""
    if shapes is None:
        return list(values)
    n = shapes.shape[1]
    return [v[(Ellipsis, *(slice(0, int(s)) for s in shape))] if v.ndim >= n else v
            for v, shape in zip(values, shapes.tolist())]


def case_scores(pred: Tensor, target: Tensor, num_classes: int, hd95: bool = True,
                nsd_tolerance: float | None = 1.0) -> Tensor:
    """``[3, C]``: MONAI's Dice, 95th-percentile Hausdorff distance and normalised surface Dice (NSD)
    of every class (background first) for one case, from class-index maps ``[*spatial]``. Distances are
    in voxels (the batches carry no spacing; resample with the data's ``spacing`` to make voxels mm).
    Dice of a class absent from both masks is NaN (MONAI's ``ignore_empty``); HD95 where either mask
    lacks the class is NaN (MONAI gives NaN or inf there: no surface to measure from), and left out of
    the means. NSD (``compute_surface_dice``): the fraction of both surfaces within ``nsd_tolerance``
    voxels of the other; NaN where neither mask has the class, 0 where one lacks it. ``hd95=False`` or
    ``nsd_tolerance=None``: that row is NaN (not computed)."""
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
    from monai.networks.utils import one_hot

    p = one_hot(pred[None, None].long(), num_classes)  # [1, C, *spatial]
    t = one_hot(target[None, None].long(), num_classes)
    dice = compute_dice(p, t, include_background=True, ignore_empty=True)[0].float().cpu()
    hd = nsd = torch.full_like(dice, math.nan)
    with warnings.catch_warnings():  # MONAI warns for every class a mask lacks; those values are NaN
        warnings.simplefilter("ignore")
        if hd95:
            hd = compute_hausdorff_distance(p, t, include_background=True, percentile=95)[0].float().cpu()
            hd = torch.where(torch.isfinite(hd), hd, torch.full_like(hd, math.nan))
        if nsd_tolerance is not None:
            nsd = compute_surface_dice(p, t, [float(nsd_tolerance)] * num_classes,
                                       include_background=True)[0].float().cpu()
    return torch.stack([dice, hd, nsd])


class SegmentationScores(tm.Metric):
    """Dice, HD95 and NSD per class and their means over the foreground classes, over every case seen.

    Why a torchmetrics wrapper around MONAI's functions: MONAI's cumulative metrics
    (``DiceMetric``, ``HausdorffDistanceMetric``) keep their buffers in Python lists that
    neither Lightning's logging nor torchmetrics' ``reset`` / cross-process ``sync`` know about.
    Here MONAI computes each case's values (:func:`case_scores`) and a ``cat`` state keeps them,
    so the scores reset with the metric collection after every epoch and gather across
    data-parallel processes like every other metric.

    ``update(preds, target)``: class-index maps ``[B, *spatial]`` or lists of per-case maps (whole
    volumes of different sizes). ``compute()``: ``{"dice", "dice_per_class", "hd95",
    "hd95_per_class", "nsd", "nsd_per_class"}``; per-class vectors have one entry per class, background
    first (logged under the data's class names), the plain ``dice``, ``hd95`` and ``nsd`` average the
    foreground classes (each class first averaged over the cases that have it). ``hd95=False`` /
    ``nsd_tolerance=None``: that metric is not computed (NaN).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, hd95: bool = True, nsd_tolerance: float | None = 1.0) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"segmentation needs at least 2 classes (background and one structure), got {num_classes}")
        check_nsd_tolerance(nsd_tolerance)
        self.num_classes, self.with_hd95, self.nsd_tolerance = num_classes, hd95, nsd_tolerance
        self.add_state("scores", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor | list[Tensor], target: Tensor | list[Tensor]) -> None:
        for p, t in zip(preds, target):
            if p.shape != t.shape:
                raise ValueError(f"prediction {tuple(p.shape)} and label {tuple(t.shape)} shapes differ")
            scores = case_scores(p, t, self.num_classes, self.with_hd95, self.nsd_tolerance)
            self.scores.append(scores[None].to(self.device))

    def compute(self) -> dict[str, Tensor]:
        scores = dim_zero_cat(self.scores) if self.scores else torch.full((1, 3, self.num_classes), math.nan)
        per_class = scores.nanmean(0)  # [3, C]: a class counts in the cases that have it
        foreground = per_class[:, 1:].nanmean(1)
        return {"dice": foreground[0], "dice_per_class": per_class[0],
                "hd95": foreground[1], "hd95_per_class": per_class[1],
                "nsd": foreground[2], "nsd_per_class": per_class[2]}


def check_nsd_tolerance(tolerance: float | None) -> None:
    """``None`` (NSD off) or a finite tolerance >= 0 in voxels, else a clear error naming the option."""
    if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
                                  or not math.isfinite(tolerance) or tolerance < 0):
        raise ValueError(f"segmentation task_options.nsd_tolerance must be a finite number of voxels >= 0, "
                         f"got {tolerance!r}")


def sliding_window_logits(model: torch.nn.Module, images: Tensor, roi_size: list[int], overlap: float,
                          sw_batch_size: int, mode: str) -> Tensor:
    """Logits of whole volumes (``[B, C, *spatial]``) from windows of ``roi_size``
    (MONAI's ``sliding_window_inference``: windows overlapping by ``overlap``, blended
    ``gaussian`` or ``constant``; volumes smaller than a window are padded and cut back)."""
    from monai.inferers import sliding_window_inference

    if len(roi_size) != images.ndim - 2:
        raise ValueError(f"roi_size {list(roi_size)} has {len(roi_size)} sizes for {images.ndim - 2}D images")
    out = sliding_window_inference(images, list(roi_size), sw_batch_size, lambda x: model({"images": x}),
                                   overlap=overlap, mode=mode)
    return out.as_tensor() if hasattr(out, "as_tensor") else out


def write_masks(outputs: list[dict[str, Any]], folder: Path) -> None:
    """One NIfTI mask per case (``<folder>/<id>.nii.gz``, uint8 class indices) with the affine
    the case's image came with; adds ``mask`` (the path) to every case of ``outputs``."""
    import nibabel as nib
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    for out in outputs:
        out["masks_written"] = []
        for id_, mask, affine in zip(out["ids"], out["masks"], out["affines"]):
            path = folder / f"{Path(str(id_)).name}.nii.gz"
            arr = mask.cpu().numpy().astype(np.uint8)
            nib.save(nib.Nifti1Image(arr, None if affine is None else np.asarray(affine, dtype=np.float64)), path)
            out["masks_written"].append(str(path))


# ---- the task kind ----------------------------------------------------------------------------------

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
    HD95; off saves time on large volumes), ``nsd`` (compute the normalised surface Dice; off saves time) and
    ``nsd_tolerance`` (how far, in voxels, a surface may lie from the other's and still count; default 1.0
    voxel: the batches carry no spacing, so resample with the data's ``spacing`` to make it mm)."""

    name, primary_metric, cacheable = "segmentation", "dice", False
    default_options = {"roi_size": None, "overlap": 0.25, "sw_batch_size": 4, "blend": "gaussian",
                       "loss": "dice_ce", "lambda_dice": 1.0, "lambda_other": 1.0, "loss_background": True,
                       "batch_dice": True, "hd95": True, "nsd": True, "nsd_tolerance": 1.0}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options["loss"] not in LOSSES:
            raise ValueError(f"segmentation loss must be one of {', '.join(LOSSES)}, got {self.options['loss']!r}")
        check_nsd_tolerance(self.options["nsd_tolerance"])
        self._loss: nn.Module | None = None  # built on first use: MONAI is imported only by segmentation runs

    @property
    def nsd_tolerance(self) -> float | None:
        """The NSD tolerance in voxels, or ``None`` when ``nsd`` is off."""
        return self.options["nsd_tolerance"] if self.options["nsd"] else None

    @property
    def loss(self) -> nn.Module:
        if self._loss is None:
            o = self.options
            self._loss = build_loss(o["loss"], o["loss_background"], o["lambda_dice"], o["lambda_other"],
                                        o["batch_dice"])
        return self._loss

    def build_head(self, backbone, num_outputs, **_):
        if not hasattr(backbone, "segmentation_head"):
            raise ValueError(f"task_type segmentation needs a backbone with a segmentation decoder "
                             f"(segmentation_head), which {backbone.name} has not; e.g. "
                             f"peftlab_medical.MonaiUNETRBackbone, peftlab_medical.MonaiSwinUNETRBackbone or "
                             f"peftlab_medical.TimmBackbone with a ViT / DeiT")
        return backbone.segmentation_head(num_outputs)

    def build_metrics(self, num_outputs):
        return tm.MetricCollection({"dice": SegmentationScores(num_outputs, self.options["hd95"], self.nsd_tolerance)},
                                   compute_groups=False)

    def infer(self, model, batch):
        roi = self.options["roi_size"] or getattr(getattr(model, "backbone", None), "input_size", None)
        if model.training or roi is None:
            return model(batch)
        o = self.options
        return sliding_window_logits(model, batch["images"], list(roi), o["overlap"], o["sw_batch_size"],
                                         o["blend"])

    def loss_and_predictions(self, logits, batch):
        labels, shapes = batch["labels"].long(), batch.get("shapes")
        if labels.ndim == logits.ndim - 1:
            labels = labels.unsqueeze(1)
        if shapes is None:
            return self.loss(logits, labels), logits.argmax(1), labels[:, 0]
        z, y = cases(logits, shapes), cases(labels, shapes)  # whole volumes, each its own size
        loss = torch.stack([self.loss(zi[None], yi[None]) for zi, yi in zip(z, y)]).mean()
        return loss, [zi.argmax(0) for zi in z], [yi[0] for yi in y]

    def scores(self, logits):
        return logits.float().softmax(1)

    def predict_output(self, logits, batch):
        masks = cases(logits.argmax(1), batch.get("shapes"))
        out = {"ids": batch["ids"], "masks": [m.to(torch.uint8).cpu() for m in masks],
               "affines": list(batch["affines"].cpu()) if "affines" in batch else [None] * len(masks)}
        if "labels" in batch:
            labels = cases(batch["labels"].long().reshape(logits.shape[:1] + logits.shape[2:]), batch.get("shapes"))
            out["scores"] = [case_scores(m, y, logits.shape[1], self.options["hd95"], self.nsd_tolerance)
                             for m, y in zip(masks, labels)]
        return out

    def write_prediction_files(self, outputs, csv_path):
        write_masks(outputs, Path(csv_path).parent / "masks")

    def prediction_table(self, outputs, label_names):
        """One row per case: ``id``, ``mask`` (the NIfTI file) and, when the data had labels,
        ``dice/<class>``, ``hd95/<class>`` and ``nsd/<class>`` for every class, background first."""
        header, rows = ["id", "mask"], []
        for out in outputs:
            n = len(out["scores"][0][0]) if out.get("scores") else 0
            names = [str(c) for c in label_names] if label_names and len(label_names) == n else list(map(str, range(n)))
            header = ["id", "mask"] + [f"{m}/{c}" for m in ("dice", "hd95", "nsd") for c in names]
            for i, id_ in enumerate(out["ids"]):
                values = out["scores"][i].flatten().tolist() if out.get("scores") else []
                rows.append([id_, out.get("masks_written", [""] * len(out["ids"]))[i]] + values)
        return header, rows
