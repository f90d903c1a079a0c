"""The base of the medical image DataModules: the record type, the MONAI
transform chain, datasets and batches, and the label vocabulary of a data set.

Every format (:mod:`.medmnist`, :mod:`.image_folder`, :mod:`.image_csv`, and
:mod:`peftlab_medical.synthetic`) implements :meth:`MedicalImageDataModule.read_records`:
its :class:`ImageRecord` objects (each with its split when the data names one)
and their :class:`~peftlab.data.LabelVocabulary`, built with
:meth:`~MedicalImageDataModule.class_names_vocabulary` (labels that are class
names) or :meth:`~MedicalImageDataModule.class_index_vocabulary` (labels that are
class indices or 0/1 lists). The base splits the records that name no split.

Transforms (all MONAI, see :meth:`MedicalImageDataModule.transform`):
load -> ``ScaleIntensity`` (each image min-max scaled to [0, 1]) -> ``Resize``
(when ``image_size`` is set) -> on the train split only, when ``augment``:
``RandFlip`` (left-right), ``RandRotate``, ``RandZoom`` -> ``RepeatChannel``
(grayscale to 3 channels when ``channels=3``) -> a plain float32 tensor. The
random transforms are reseeded before every item from (DataModule seed, epoch,
item index), so the augmented training stream is the same whatever the number
of DataLoader workers or the cache, and a run resumed from a mid-epoch
checkpoint sees the same augmentations as the uninterrupted run.

Items are ``{"image": FloatTensor[C, H, W] (3D: [C, D, H, W]), "label": Tensor,
"id": str}``; :meth:`MedicalImageDataModule.collate` stacks them into
``{"images": [B, C, H, W], "labels": ..., "ids": [...]}`` with labels float
``[B]`` (binary), long ``[B]`` (multiclass) or float ``[B, K]`` (multilabel).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.data import Dataset
from monai.transforms import Compose, EnsureTyped, RandFlipd, RandRotated, RandZoomd, Resized, ScaleIntensityd
from torch.utils.data import DataLoader

from peftlab.data import (DataError, LabelVocabulary, LoadedData, PeftDataModule, assign_splits, class_vocabulary,
                          rebuild_loader)
from peftlab_medical.data.transforms import CachedImageDataset, ImageDataset, LoadImageRecordd, RepeatGrayd

IMAGE_TASK_TYPES = ("binary", "multiclass", "multilabel")


@dataclass
class ImageRecord:
    """One image example.

    Attributes:
        id: record id, unique within a data set (``train_17`` for MedMNIST, the
            path relative to the root for class folders, the image path or id
            column for CSV manifests).
        image: a file path (decoded when the item is read) or an array
            (MedMNIST: ``(H, W)``, ``(H, W, C)`` or ``(D, H, W)``).
        label: class index ``int`` (binary: 0/1; multiclass) or ``list[float]``
            of 0/1 values (multilabel).
        split: ``"train"``, ``"val"`` or ``"test"`` when the data says so, else ``None``.
    """

    id: str
    image: str | np.ndarray
    label: int | list[float]
    split: str | None = None


def infer_task_type(num_classes: int, num_label_columns: int = 1) -> str:
    """``multilabel`` for several label columns, else ``binary`` for <= 2 classes, else ``multiclass``."""
    if num_label_columns > 1:
        return "multilabel"
    return "binary" if num_classes <= 2 else "multiclass"


def _check_image_task(task_type: str) -> str:
    if task_type not in IMAGE_TASK_TYPES:
        raise ValueError(f"image task_type must be one of {IMAGE_TASK_TYPES} (or None to infer it), "
                         f"got {task_type!r}")
    return task_type


def class_order(names: set[str]) -> list[str]:
    """Class names in a stable order: numerically when all are (ASCII) integers, else alphabetically."""
    # not str.isdigit: it accepts "²", which int() refuses
    if names and all(re.fullmatch(r"-?[0-9]+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


class MedicalImageDataModule(PeftDataModule):
    """Base of the image DataModules: MONAI transforms, datasets, labels and batching.

    Subclasses implement :meth:`read_records` (the records, labels already
    class indices or 0/1 lists, and the label vocabulary).

    Args:
        task_type: ``binary``, ``multiclass`` or ``multilabel``.
        label_names: class names (binary: negative then positive; multiclass;
            for MedMNIST in label-index order) or label names (multilabel).
            Where labels are names (class folders, CSV manifests) the default
            is the names seen, sorted (numerically when all are integers), and
            a label outside a given list is a DataError.
        image_size: resize every image to ``image_size`` pixels per side
            (e.g. 224 for a ViT); ``None`` keeps the data's size.
        channels: 1 or 3; grayscale images are repeated to 3 channels when 3
            is asked; ``None`` keeps the data's channels.
        spatial_dims: 2 for images (and 2D DICOM / NIfTI slices), 3 for
            volumes (NIfTI, the 3D MedMNIST sets ``(N, D, H, W)``).
        augment: random flip, rotation and zoom on the train split (never on
            val/test).
        flip_prob: probability of a left-right flip (last spatial axis).
        rotate_prob: probability of a rotation by up to ``rotate_degrees``.
        rotate_degrees: largest rotation angle, in degrees (3D: about every axis).
        zoom_prob: probability of a zoom by a factor drawn from ``zoom_range``.
        zoom_range: smallest and largest zoom factor (the image size is kept).
        cache: keep decoded, scaled and resized images in memory (MONAI
            ``CacheDataset``), so later epochs only run the random transforms.
        batch_size: examples per batch.
        group_by_length: off for images (every record has length 1).

    The options every DataModule shares (``num_workers``, ``seed`` of generated
    splits, batch order and augmentation, ``val_fraction`` / ``test_fraction``,
    ``predict_split``) go on to :class:`peftlab.data.PeftDataModule`.
    """

    input_keys = ("images",)

    tags_epochs = True  # augmentation seeded per (seed, epoch, item): the same with any workers, exact on resume

    def __init__(self, task_type: str = "binary", label_names: list[str] | None = None,
                 image_size: int | None = None, channels: int | None = None, spatial_dims: int = 2,
                 augment: bool = True, flip_prob: float = 0.5, rotate_prob: float = 0.5,
                 rotate_degrees: float = 15.0, zoom_prob: float = 0.5,
                 zoom_range: tuple[float, float] = (0.9, 1.1), cache: bool = False, batch_size: int = 32,
                 group_by_length: bool = False, **kwargs: Any):
        super().__init__(task_type=_check_image_task(task_type), batch_size=batch_size,
                         group_by_length=group_by_length, **kwargs)
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be >= 1 or None, got {image_size}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, got {channels}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        for name, p in (("flip_prob", flip_prob), ("rotate_prob", rotate_prob), ("zoom_prob", zoom_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        low, high = zoom_range
        if not 0 < low <= high:
            raise ValueError(f"zoom_range must be (low, high) with 0 < low <= high, got {zoom_range}")
        self.given_label_names = list(label_names) if label_names is not None else None
        self.image_size = image_size
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.augment = augment
        self.flip_prob = flip_prob
        self.rotate_prob = rotate_prob
        self.rotate_degrees = rotate_degrees
        self.zoom_prob = zoom_prob
        self.zoom_range = (float(low), float(high))
        self.cache = cache
        self._datasets: dict[str, tuple[list[ImageRecord], Dataset]] = {}

    # ---- what a subclass implements ------------------------------------------------
    @property
    def source(self) -> str:
        """The data file or folder, for error messages."""
        return "<images>"

    def read_records(self) -> tuple[list[ImageRecord], LabelVocabulary]:
        """Every record (with its split when the data names one; labels class indices or 0/1 lists)
        and the label vocabulary (:meth:`class_names_vocabulary`, :meth:`class_index_vocabulary`)."""
        raise NotImplementedError

    def array_channel_dim(self) -> int | str:
        """Channel axis of array records (``"no_channel"`` or ``-1``); files carry their own."""
        return "no_channel"

    # ---- the label vocabulary, for subclasses ------------------------------------------
    def class_names_vocabulary(self, labelled: Sequence[tuple[Any, str]], source: Any) -> LabelVocabulary:
        """The classes of the ``(record, class name)`` pairs of a whole data set: ``label_names``
        in their order, else the names seen in :func:`class_order`; a name outside
        ``label_names`` is a DataError naming ``source`` and its first record."""
        given = self.given_label_names
        names = given if given is not None else class_order({name for _, name in labelled})
        # in name order: of several labels outside label_names, the first by name is the one reported
        return class_vocabulary(sorted(labelled, key=lambda pair: pair[1]), names, source, self.task_type)

    def class_index_vocabulary(self, names: list[str] | None, num_classes: int) -> LabelVocabulary:
        """The vocabulary of labels that are class indices (or 0/1 lists, multilabel): ``num_classes``
        classes (one output for binary) named by ``names``, when the data has names."""
        index = {} if names is None or self.task_type == "multilabel" else {n: i for i, n in enumerate(names)}
        return LabelVocabulary(num_outputs=1 if self.task_type == "binary" else num_classes,
                               names=None if names is None else list(names), index=index)

    # ---- PeftDataModule hooks -----------------------------------------------------------
    def load_data(self) -> LoadedData:
        """:meth:`read_records`, the records that name no split split with ``val_fraction`` /
        ``test_fraction`` (:func:`peftlab.data.assign_splits`; a split nobody names is carved out of train)."""
        records, labels = self.read_records()
        return LoadedData(assign_splits(records, self.val_fraction, self.test_fraction, self.seed, self.source),
                          labels)

    def record_length(self, record: ImageRecord) -> int:
        return 1

    def transform(self, split: str) -> Compose:
        """The MONAI transform chain of one split (augmentation only for ``train``)."""
        nd = self.spatial_dims
        steps: list[Any] = [
            LoadImageRecordd(spatial_dims=nd, channels=self.channels, source=self.source,
                             array_channel_dim=self.array_channel_dim()),
            ScaleIntensityd(keys="image", minv=0.0, maxv=1.0),
        ]
        if self.image_size is not None:
            steps.append(Resized(keys="image", spatial_size=(self.image_size,) * nd,
                                 mode="bilinear" if nd == 2 else "trilinear", anti_aliasing=True))
        if split == "train" and self.augment:
            angle = math.radians(self.rotate_degrees)
            rotation = dict(range_x=angle) if nd == 2 else dict(range_x=angle, range_y=angle, range_z=angle)
            steps += [
                RandFlipd(keys="image", prob=self.flip_prob, spatial_axis=nd - 1),
                RandRotated(keys="image", prob=self.rotate_prob, padding_mode="border", **rotation),
                RandZoomd(keys="image", prob=self.zoom_prob, min_zoom=self.zoom_range[0],
                          max_zoom=self.zoom_range[1], keep_size=True),
            ]
        if self.channels == 3:
            steps.append(RepeatGrayd(keys="image"))
        steps.append(EnsureTyped(keys="image", data_type="tensor", dtype=torch.float32, track_meta=False))
        chain = Compose(steps)
        chain.set_random_state(seed=self.seed)
        return chain

    def dataset(self, split: str, records: list[ImageRecord]) -> Dataset:
        """A MONAI ``Dataset`` (or ``CacheDataset`` when ``cache``) of the split's items.

        The dataset is kept per split, so a cache is filled once per run and not
        on every ``*_dataloader`` call.
        """
        kept = self._datasets.get(split)
        if kept is not None and kept[0] is records:
            return kept[1]
        items = [{"image": r.image, "label": self._label_tensor(r.label), "id": r.id} for r in records]
        if self.cache:
            data: Dataset = CachedImageDataset(items, self.transform(split), num_workers=max(1, self.num_workers),
                                               progress=False)
        else:
            data = ImageDataset(items, self.transform(split))
        data.seed = self.seed  # augmentation per (seed, epoch, item): see transforms._ItemSeeded
        self._datasets[split] = (records, data)
        return data

    def predict_dataloader(self) -> DataLoader:
        """Prediction never augments, not even on the train split."""
        loader = super().predict_dataloader()
        if self.predict_split != "train" or not self.augment:
            return loader
        return rebuild_loader(loader, dataset=self.dataset("predict-train", self.splits["train"]))

    def _label_tensor(self, label: int | list[float]) -> torch.Tensor:
        if self.task_type == "multiclass":
            return torch.tensor(int(label), dtype=torch.long)  # type: ignore[arg-type]
        return torch.tensor(label, dtype=torch.float32)

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Items -> ``{"images": [B, C, H, W] (3D: [B, C, D, H, W]), "labels": ..., "ids": [...]}``.

        Labels: float ``[B]`` (binary), long ``[B]`` (multiclass), float
        ``[B, K]`` (multilabel).
        """
        if not items:
            raise ValueError("collate got an empty batch")
        first = items[0]
        for item in items[1:]:
            if item["image"].shape != first["image"].shape:
                raise DataError(self.source, item["id"],
                                f"image shape {tuple(item['image'].shape)} differs from {tuple(first['image'].shape)}"
                                f" of {first['id']} in the same batch; set image_size (and channels) so that "
                                f"every image has the same shape")
        return {"images": torch.stack([torch.as_tensor(it["image"], dtype=torch.float32) for it in items]),
                "labels": torch.stack([it["label"] for it in items]),
                "ids": [str(it["id"]) for it in items]}
