"""Medical image data through MONAI: MedMNIST ``.npz`` files, class folders and CSV manifests.

Three DataModules read three layouts, all producing :class:`ImageRecord` objects
that MONAI transforms turn into items:

* :class:`MedMNISTDataModule`: a MedMNIST v2 ``.npz`` with the keys
  ``{train,val,test}_images`` / ``{train,val,test}_labels``. Images are
  ``(N, H, W)`` (grayscale) or ``(N, H, W, 3)`` (RGB) for 2D sets and
  ``(N, D, H, W)`` for the 3D sets (``spatial_dims=3``); labels are ``(N, 1)``
  class indices (binary/multiclass) or ``(N, K)`` 0/1 columns (multi-label,
  e.g. ChestMNIST's 14 findings).
* :class:`ImageFolderDataModule`: one folder per class holding PNG, JPEG,
  DICOM (``.dcm``) or NIfTI (``.nii``, ``.nii.gz``) files, optionally inside
  ``train/``, ``val/`` and ``test/`` folders.
* :class:`ImageCSVDataModule`: a CSV manifest ``path,label`` (paths relative to
  the CSV's folder), or one 0/1 column per label for multi-label tasks, with
  an optional ``split`` column.

Files are decoded with MONAI's ``LoadImage`` (PIL for PNG/JPEG, pydicom for
DICOM, nibabel for NIfTI) inside the Dataset, so decoding runs in DataLoader
workers. Arrays keep numpy's ``(rows, columns)`` order for every format (MONAI's
PIL and pydicom readers are told not to swap the axes), so a PNG and the same
pixels in an ``.npz`` give the same tensor.

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

Every problem in the input raises :class:`peftlab.data.DataError`, whose message
names the file, the record and what is wrong. Decoding errors raised inside a
MONAI transform chain are unwrapped from MONAI's ``RuntimeError`` so that the
DataError itself reaches the caller (in the main process; a DataLoader worker
re-raises it as a ``RuntimeError`` carrying the same message).
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, MetaTensor, NibabelReader, PILReader, PydicomReader
from monai.transforms import (
    Compose,
    EnsureChannelFirst,
    EnsureTyped,
    LoadImage,
    MapTransform,
    RandFlipd,
    Randomizable,
    RandRotated,
    RandZoomd,
    RepeatChanneld,
    Resized,
    ScaleIntensityd,
    Transform,
)
from torch.utils.data import DataLoader

from peftlab.data import (DataError, PeftDataModule, assign_splits, csv_dict_reader, file_exists, item_seed,
                          open_text, rebuild_loader)

__all__ = [
    "IMAGE_SUFFIXES",
    "IMAGE_TASK_TYPES",
    "ImageCSVDataModule",
    "ImageFolderDataModule",
    "ImageRecord",
    "LoadImageRecordd",
    "ManifestRow",
    "MedMNISTDataModule",
    "MedicalImageDataModule",
    "image_format",
    "infer_task_type",
    "read_image_csv",
    "read_medmnist",
    "scan_image_folder",
]

IMAGE_TASK_TYPES = ("binary", "multiclass", "multilabel")
MIN_IMAGE_SIDE = 2  # pixels per spatial side: RandZoom (and any resize) breaks on 1-pixel sides
_LABEL_LIMIT = 2**31  # a label at or beyond this is not a class index (and would wrap in int64 casts)
# file suffix -> the MONAI reader that decodes it
IMAGE_SUFFIXES: dict[str, str] = {".png": "pil", ".jpg": "pil", ".jpeg": "pil", ".dcm": "dicom",
                                  ".nii": "nifti", ".nii.gz": "nifti"}
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}

PathLike = str | os.PathLike


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


# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------

def image_format(path: PathLike) -> str | None:
    """The reader kind for a file (``pil``, ``dicom`` or ``nifti``) from its suffix, or ``None``."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return IMAGE_SUFFIXES[".nii.gz"]
    return IMAGE_SUFFIXES.get(Path(name).suffix)


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


def _split_name(value: str, path: PathLike, record: Any) -> str:
    split = SPLIT_NAMES.get(value.strip().lower())
    if split is None:
        raise DataError(path, record, f"unknown split {value!r} (expected train, val or test)")
    return split


def _sorted_names(names: set[str]) -> list[str]:
    """Class names in a stable order: numerically when all are (ASCII) integers, else alphabetically."""
    # not str.isdigit: it accepts "²", which int() refuses
    if names and all(re.fullmatch(r"-?[0-9]+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _check_channels(found: int, wanted: int | None, path: PathLike, record: Any) -> None:
    """A DataError unless an image with ``found`` channels can become ``wanted`` channels."""
    if found not in (1, 3):
        hint = {2: " (grayscale + alpha?)", 4: " (RGBA or CMYK? save it as RGB or grayscale)"}.get(found, "")
        raise DataError(path, record, f"image has {found} channels{hint}; expected 1 (grayscale) or 3 (RGB)")
    if wanted == 1 and found == 3:
        raise DataError(path, record, "image has 3 channels (RGB) but channels=1 was asked; "
                                      "use channels=3 (or None to keep the data's channels)")


def _pil_mode(image: Any) -> Any:
    """PIL converter for MONAI's PILReader: palette and bilevel images to pixel values.

    Palette (``P``/``PA``) PNGs would otherwise load as palette indices, CMYK and
    YCbCr JPEGs as 4 or 3 non-RGB channels; RGBA and LA stay as they are so
    that their channel count is reported.
    """
    mode = image.mode
    if mode in ("P", "PA"):
        return image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
    if mode == "1":
        return image.convert("L")
    if mode in ("CMYK", "YCbCr"):
        return image.convert("RGB")
    return image


# ---------------------------------------------------------------------------------------
# Loading one record (a MONAI transform) and the datasets
# ---------------------------------------------------------------------------------------

def _quiet_load_image() -> LoadImage:
    """MONAI ``LoadImage(image_only=True, ensure_channel_first=True)`` built without GPU-reader noise.

    ``LoadImage`` instantiates every MONAI reader, and the nvImageCodec DICOM
    reader logs and warns when nvImageCodec is absent. The readers used here
    are passed per call (:class:`LoadImageRecordd`), so that message is muted
    while the loader is built (the logger's level is restored afterwards).
    """
    logger = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
            return LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)
    finally:
        logger.setLevel(level)


class LoadImageRecordd(MapTransform):
    """Read the ``image`` of one record into a channel-first float32 tensor, checked.

    Files are decoded with MONAI's ``LoadImage`` (``image_only=True``,
    ``ensure_channel_first=True``); the reader is chosen by suffix. Arrays
    (MedMNIST, synthetic data) get their channel axis from ``array_channel_dim``
    (``"no_channel"`` for grayscale, ``-1`` for channel-last RGB) with MONAI's
    ``EnsureChannelFirst``. Trailing size-1 axes beyond ``spatial_dims`` (a 2D
    slice stored as ``(H, W, 1)`` NIfTI) are dropped. The result is a plain
    tensor: the files' metadata (affine, spacing) is not kept, as
    classification does not use it.

    Any decoding error, a wrong number of spatial axes, a side shorter than
    :data:`MIN_IMAGE_SIDE`, NaN or infinite pixel values or an unusable channel
    count raises :class:`DataError` naming the file (``source`` for arrays) and
    the record id.
    """

    def __init__(self, spatial_dims: int = 2, channels: int | None = None, source: str | None = None,
                 array_channel_dim: int | str = "no_channel"):
        super().__init__(keys="image")
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.source = source
        self.array_channel_dim = array_channel_dim
        self.loader = _quiet_load_image()
        self.readers = {
            # keep numpy's (rows, columns) order: MONAI's PIL and pydicom readers swap them by default
            "pil": PILReader(reverse_indexing=False, converter=_pil_mode),
            "dicom": PydicomReader(swap_ij=False),
            "nifti": NibabelReader(),
        }

    def _decode(self, path: str, record: Any) -> torch.Tensor:
        kind = image_format(path)
        if kind is None:
            raise DataError(path, record, f"unsupported image file type; expected one of "
                                          f"{', '.join(IMAGE_SUFFIXES)}")
        if not os.path.isfile(path):
            raise DataError(path, record, "image file not found")
        try:
            return self.loader(path, reader=self.readers[kind])
        except Exception as error:  # PIL, pydicom, nibabel and MONAI raise many kinds
            text = " ".join(str(error).split())
            text = text if len(text) <= 300 else text[:300] + "..."
            raise DataError(path, record, f"cannot read the image ({type(error).__name__}: {text})") from error

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        record = d.get("id")
        source = d["image"]
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            image = self._decode(path, record)
        else:
            path = self.source or "<array>"
            image = EnsureChannelFirst(channel_dim=self.array_channel_dim)(torch.as_tensor(source, dtype=torch.float32))
        while image.ndim > self.spatial_dims + 1 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim != self.spatial_dims + 1:
            raise DataError(path, record, f"image has {image.ndim - 1} spatial axes (shape {tuple(image.shape[1:])}"
                                          f" after the channel axis); expected {self.spatial_dims}D images"
                                          + ("" if self.spatial_dims == 3 else " (set spatial_dims=3 for volumes)"))
        if min(image.shape[1:]) < MIN_IMAGE_SIDE:
            raise DataError(path, record, f"image is too small: shape {tuple(image.shape[1:])}; every side needs "
                                          f"at least {MIN_IMAGE_SIDE} pixels")
        if not torch.isfinite(image).all():
            raise DataError(path, record, "non-finite pixel values (NaN or inf)")
        _check_channels(int(image.shape[0]), self.channels, path, record)
        # a plain tensor: later transforms start from fresh metadata whose spatial rank
        # matches the channel-first shape (a MetaTensor made before the channel axis was
        # added, or before squeezing, keeps a wrong rank and breaks RandZoom)
        d["image"] = image.as_tensor() if isinstance(image, MetaTensor) else image
        return d


@contextmanager
def _data_errors() -> Iterator[None]:
    """Re-raise a DataError that MONAI's ``apply_transform`` wrapped in a RuntimeError."""
    try:
        yield
    except RuntimeError as error:
        cause: BaseException | None = error
        while cause is not None:
            if isinstance(cause, DataError):
                raise cause from None
            cause = cause.__cause__
        raise


def _randomizable_transforms(transform: Any) -> list[Randomizable]:
    """Every random transform in a MONAI chain, nested ones included (a dictionary transform keeps its
    array transform, e.g. ``RandRotated.rand_rotate``, with a random state of its own); each is given a
    random state object of its own (MONAI's class-level default is shared by all instances)."""
    found: list[Randomizable] = []
    seen: set[int] = set()

    def visit(t: Any) -> None:
        if id(t) in seen:
            return
        seen.add(id(t))
        if isinstance(t, Randomizable):
            found.append(t)
        children = list(getattr(t, "transforms", None) or ()) if isinstance(t, Compose) else []
        children += [v for v in vars(t).values() if isinstance(v, Transform)] if hasattr(t, "__dict__") else []
        for child in children:
            visit(child)

    visit(transform)
    for t in found:
        t.R = np.random.RandomState()
    return found


class _ItemSeeded:
    """Mixin for MONAI datasets: DataError unwrapping and augmentation seeded per (seed, epoch, item).

    Before each item, every random transform of the chain is reseeded from
    :func:`peftlab.data.item_seed` of the DataModule's seed, the epoch and the
    item's index. The training loader asks for ``(epoch, index)`` keys
    (:class:`peftlab.data.EpochTaggedBatchSampler`); a plain ``int`` key counts
    the reads of that index instead (read ``n`` is epoch ``n``'s draw). The
    augmented stream is then the same whatever the number of DataLoader workers
    or the cache, and a run resumed from a mid-epoch checkpoint draws what the
    uninterrupted run drew (a chain seeded once and drawn from in order, or
    reseeded per worker as MONAI's DataLoader does, depends on both).
    Slices and index lists still give MONAI's ``Subset``.
    """

    transform: Compose
    seed: int = 0

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, (int, np.integer)) for k in key):
            epoch, index = int(key[0]), int(key[1])
        elif isinstance(key, (int, np.integer)):
            index = int(key) + (len(self) if key < 0 else 0)  # type: ignore[arg-type]
            draws = self.__dict__.setdefault("_draws", {})
            epoch = draws.get(index, 0)
            draws[index] = epoch + 1
        else:
            return super().__getitem__(key)  # type: ignore[misc]
        self._seed_item(epoch, index)
        return self._transform(index)

    def _seed_item(self, epoch: int, index: int) -> None:
        transforms = self.__dict__.get("_random_transforms")
        if transforms is None:
            transforms = self.__dict__["_random_transforms"] = _randomizable_transforms(self.transform)
        base = item_seed(self.seed, epoch, index)
        for i, t in enumerate(transforms):  # in place: ~7 us each, a new RandomState ~65 us
            t.R.seed([base & 0xFFFFFFFF, base >> 32, i])

    def _transform(self, index: int) -> Any:
        with _data_errors():
            return super()._transform(index)  # type: ignore[misc]


class _ImageDataset(_ItemSeeded, Dataset):
    """MONAI ``Dataset`` whose decoding errors surface as DataError."""


class _CachedImageDataset(_ItemSeeded, CacheDataset):
    """MONAI ``CacheDataset`` (deterministic transforms run once) whose decoding errors surface as DataError."""

    def _load_cache_item(self, idx: int) -> Any:
        with _data_errors():
            return super()._load_cache_item(idx)


# ---------------------------------------------------------------------------------------
# The shared image DataModule
# ---------------------------------------------------------------------------------------

class MedicalImageDataModule(PeftDataModule):
    """Base of the image DataModules: MONAI transforms, datasets, labels and batching.

    Subclasses implement :meth:`read_splits` (records per split, labels already
    class indices or 0/1 lists) and set ``self._label_names`` /
    ``self._num_outputs`` while reading.

    Args:
        task_type: ``binary``, ``multiclass`` or ``multilabel``.
        label_names: class names (binary: negative then positive; multiclass)
            or label names (multilabel).
        image_size: resize every image to ``image_size`` pixels per side
            (e.g. 224 for a ViT); ``None`` keeps the data's size.
        channels: 1 or 3; grayscale images are repeated to 3 channels when 3
            is asked; ``None`` keeps the data's channels.
        spatial_dims: 2 for images, 3 for volumes.
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
        num_workers: DataLoader worker processes (and cache-filling threads).
        seed: seed of generated splits, batch order and augmentation.
        group_by_length: off for images (every record has length 1).
        val_fraction / test_fraction: used when the data names no such split.
        predict_split: split that ``predict`` runs on.
    """

    input_keys = ("images",)

    tags_epochs = True  # augmentation seeded per (seed, epoch, item): the same with any workers, exact on resume

    def __init__(self, task_type: str = "binary", label_names: list[str] | None = None,
                 image_size: int | None = None, channels: int | None = None, spatial_dims: int = 2,
                 augment: bool = True, flip_prob: float = 0.5, rotate_prob: float = 0.5,
                 rotate_degrees: float = 15.0, zoom_prob: float = 0.5,
                 zoom_range: tuple[float, float] = (0.9, 1.1), cache: bool = False, batch_size: int = 32,
                 num_workers: int = 0, seed: int = 0, group_by_length: bool = False,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, predict_split: str = "test"):
        super().__init__(task_type=_check_image_task(task_type), batch_size=batch_size, num_workers=num_workers,
                         seed=seed, group_by_length=group_by_length, val_fraction=val_fraction,
                         test_fraction=test_fraction, predict_split=predict_split)
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

    def read_splits(self) -> dict[str, list[ImageRecord]]:
        """Records per split, labels resolved; also sets ``_label_names`` and ``_num_outputs``."""
        raise NotImplementedError

    def array_channel_dim(self) -> int | str:
        """Channel axis of array records (``"no_channel"`` or ``-1``); files carry their own."""
        return "no_channel"

    # ---- PeftDataModule hooks -----------------------------------------------------------
    def load_splits(self) -> dict[str, list[ImageRecord]]:
        return self.read_splits()

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
            steps.append(_RepeatGrayd(keys="image"))
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
            data: Dataset = _CachedImageDataset(items, self.transform(split), num_workers=max(1, self.num_workers),
                                                progress=False)
        else:
            data = _ImageDataset(items, self.transform(split))
        data.seed = self.seed  # augmentation per (seed, epoch, item): see _ItemSeeded
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

    # ---- label helpers for subclasses ---------------------------------------------------
    def _class_names(self, seen: set[str], path: PathLike, where: dict[str, Any]) -> list[str]:
        """The class list (given or sorted seen names); a seen name outside it is a DataError.

        ``where`` maps each name to the record (or folder) to blame in the message.
        """
        names = self.given_label_names if self.given_label_names is not None else _sorted_names(seen)
        for name in sorted(seen - set(names)):
            raise DataError(path, where.get(name), f"label {name!r} is not one of label_names {names}")
        if self.task_type == "binary" and len(names) > 2:
            raise DataError(path, None, f"task_type binary but {len(names)} classes: {names}")
        return list(names)

    def _set_classes(self, names: list[str] | None, num_classes: int) -> None:
        self._label_names = names
        self._num_outputs = 1 if self.task_type == "binary" else num_classes


class _RepeatGrayd(RepeatChanneld):
    """``RepeatChanneld`` that repeats only 1-channel images (to 3), leaving RGB as it is."""

    def __init__(self, keys: str):
        super().__init__(keys=keys, repeats=3)

    def __call__(self, data: Any) -> dict[str, Any]:
        if data["image"].shape[0] != 1:
            return dict(data)
        return super().__call__(data)


# ---------------------------------------------------------------------------------------
# MedMNIST .npz
# ---------------------------------------------------------------------------------------

def _open_npz(path: PathLike) -> Any:
    p = Path(path)
    if not p.is_file():
        raise DataError(p, None, "is a directory, not a file" if p.is_dir() else "file not found (no such file)")
    try:
        archive = np.load(p, allow_pickle=False)
    except Exception as error:
        raise DataError(p, None, f"cannot read as a .npz archive ({type(error).__name__}: {error})") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(p, None, "holds a single array, not a .npz archive with train/val/test keys")
    return archive


def _npz_array(archive: Any, key: str, path: PathLike) -> np.ndarray:
    if key not in archive.files:
        split = key.split("_")[0]
        raise DataError(path, None, f"missing key {key!r} (the {split!r} split); found keys {sorted(archive.files)}")
    try:
        return archive[key]
    except Exception as error:
        raise DataError(path, key, f"cannot read the array ({type(error).__name__}: {error})") from error


def _medmnist_labels(labels: np.ndarray, count: int, key: str, path: PathLike) -> np.ndarray:
    """Labels as an ``(N, K)`` int64 array, checked for dtype, shape and integer values."""
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2:
        raise DataError(path, key, f"labels have shape {labels.shape}; expected (N, 1) or (N, K)")
    if labels.shape[0] != count:
        raise DataError(path, key, f"{labels.shape[0]} labels for {count} images")
    if labels.dtype.kind not in "biuf":
        raise DataError(path, key, f"labels have dtype {labels.dtype}; expected integers")
    if labels.dtype.kind == "f":
        bad = ~np.isfinite(labels) | (labels != np.round(labels))
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DataError(path, f"{key}[{row}]", f"label {labels[row].tolist()} is not a whole number")
    if labels.size and labels.dtype.kind in "iuf":  # before the int64 cast, which would wrap huge values
        values = labels.astype(np.float64) if labels.dtype.kind == "f" else labels  # float16 cannot hold 2**31
        bad = (values >= _LABEL_LIMIT) | (values < -_LABEL_LIMIT)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DataError(path, f"{key}[{row}]", f"label {labels[row].tolist()} is not a class index "
                                                   f"(far outside any class range)")
    return labels.astype(np.int64)


def read_medmnist(path: PathLike, spatial_dims: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The three splits of a MedMNIST v2 ``.npz`` as ``{split: (images, labels (N, K) int64)}``.

    Checks every key is there, images are numeric with a 2D (``(N,H,W)``,
    ``(N,H,W,1|3)``) or 3D (``(N,D,H,W)``, ``(N,D,H,W,1|3)``) shape, the same
    layout in every split, at least one image per split, sides of at least
    :data:`MIN_IMAGE_SIDE` and finite values, and labels are whole numbers with
    one row per image and the same width in every split.
    Label *ranges* are checked by :class:`MedMNISTDataModule` (they depend on the task).
    """
    archive = _open_npz(path)
    with archive:
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for split in ("train", "val", "test"):
            images = _npz_array(archive, f"{split}_images", path)
            labels = _npz_array(archive, f"{split}_labels", path)
            key = f"{split}_images"
            if images.dtype.kind not in "biuf":
                raise DataError(path, key, f"images have dtype {images.dtype}; expected a numeric (uint8) array")
            plain = images.ndim == spatial_dims + 1
            channel_last = images.ndim == spatial_dims + 2
            if not (plain or channel_last):
                layout = "(N, H, W) or (N, H, W, C)" if spatial_dims == 2 else "(N, D, H, W) or (N, D, H, W, C)"
                raise DataError(path, key, f"images have shape {images.shape}; expected {layout} for "
                                           f"spatial_dims={spatial_dims}")
            if channel_last and images.shape[-1] not in (1, 3):
                hint = " (3D volumes? set spatial_dims=3)" if spatial_dims == 2 and images.shape[-1] > 4 else ""
                raise DataError(path, key, f"images have shape {images.shape}: {images.shape[-1]} channels on the "
                                           f"last axis{hint}; expected 1 (grayscale) or 3 (RGB)")
            image_layout = (images.ndim, images.shape[-1] if channel_last else None)
            if split == "train":
                train_shape, train_layout = images.shape, image_layout
            elif image_layout != train_layout:  # items take their channel axis from the train split's layout
                raise DataError(path, key, f"images have shape {images.shape} but train_images have shape "
                                           f"{train_shape}: every split needs the same layout (channel axis or "
                                           "not, same channel count)")
            if images.shape[0] == 0:
                raise DataError(path, key, f"holds no images (shape {images.shape}): the {split!r} split is empty")
            sides = images.shape[1 : 1 + spatial_dims]
            if min(sides) < MIN_IMAGE_SIDE:
                raise DataError(path, key, f"images have shape {images.shape}: spatial size {sides} is too small "
                                           f"(every side needs at least {MIN_IMAGE_SIDE} pixels)")
            if images.dtype.kind == "f":
                finite = np.isfinite(images).reshape(images.shape[0], -1).all(axis=1)
                if not finite.all():
                    i = int(np.argmin(finite))
                    raise DataError(path, f"{split}_{i}", f"image {i} of {key} has non-finite pixel values "
                                                          "(NaN or inf)")
            out[split] = (images, _medmnist_labels(labels, images.shape[0], f"{split}_labels", path))
    widths = {s: labels.shape[1] for s, (_, labels) in out.items()}
    if len(set(widths.values())) > 1:
        raise DataError(path, None, f"label columns differ between splits: {widths}")
    return out


def _npz_label_summary(path: PathLike) -> tuple[int, int]:
    """``(label columns, largest label + 1)`` of a MedMNIST file, reading only the label arrays."""
    archive = _open_npz(path)
    with archive:
        widths, top = {}, 0
        for split in ("train", "val", "test"):
            key = f"{split}_labels"
            labels = _npz_array(archive, key, path)
            labels = _medmnist_labels(labels, labels.shape[0] if labels.ndim else 0, key, path)
            widths[split] = labels.shape[1]
            if labels.size:
                top = max(top, int(labels.max()) + 1)
    if len(set(widths.values())) > 1:
        raise DataError(path, None, f"label columns differ between splits: {widths}")
    return widths["train"], top


class MedMNISTDataModule(MedicalImageDataModule):
    """A MedMNIST v2 ``.npz`` file (2D or 3D), with its official train/val/test splits.

    Args:
        path: the ``.npz`` file (keys ``{train,val,test}_images`` and ``{train,val,test}_labels``).
        task_type: ``binary``, ``multiclass`` or ``multilabel``; ``None`` infers it
            from the labels: several label columns -> ``multilabel``, 2 classes
            (or 2 ``label_names``) -> ``binary``, more -> ``multiclass``.
        label_names: class names in label-index order (binary: ``[negative,
            positive]``), or the names of the multilabel columns.
        image_size: resize to ``image_size`` per side (e.g. 224 for a ViT); ``None`` keeps 28/64/128/224.
        channels: 1 or 3 (grayscale repeated to 3); ``None`` keeps the data's.
        augment: random flip/rotation/zoom on the train split only.
        flip_prob, rotate_prob, rotate_degrees, zoom_prob, zoom_range: the augmentation.
        cache: MONAI ``CacheDataset`` (scaled/resized images kept in memory).
        batch_size: examples per batch.
        num_workers: DataLoader worker processes.
        seed: seed of batch order and augmentation.
        spatial_dims: 2 (images) or 3 (the 3D MedMNIST volumes ``(N, D, H, W)``).
        group_by_length: off for images.
        predict_split: split that ``predict`` runs on.

    Record ids are ``{split}_{index}``, e.g. ``train_0``. Images are scaled to
    [0, 1] per image (``ScaleIntensity``, min-max), so uint8 and float files
    give the same range.
    """

    def __init__(self, path: str, task_type: str | None = None, label_names: list[str] | None = None,
                 image_size: int | None = None, channels: int | None = None, augment: bool = True,
                 flip_prob: float = 0.5, rotate_prob: float = 0.5, rotate_degrees: float = 15.0,
                 zoom_prob: float = 0.5, zoom_range: tuple[float, float] = (0.9, 1.1), cache: bool = False,
                 batch_size: int = 32, num_workers: int = 0, seed: int = 0, spatial_dims: int = 2,
                 group_by_length: bool = False, predict_split: str = "test"):
        if task_type is None:
            width, top = _npz_label_summary(path)  # labels only: cheap even for large files
            task_type = infer_task_type(len(label_names) if label_names is not None else top, width)
        super().__init__(task_type=task_type, label_names=label_names, image_size=image_size, channels=channels,
                         spatial_dims=spatial_dims, augment=augment, flip_prob=flip_prob, rotate_prob=rotate_prob,
                         rotate_degrees=rotate_degrees, zoom_prob=zoom_prob, zoom_range=zoom_range, cache=cache,
                         batch_size=batch_size, num_workers=num_workers, seed=seed,
                         group_by_length=group_by_length, predict_split=predict_split)
        self.path = path
        self._channel_last = False

    @property
    def source(self) -> str:
        return str(self.path)

    def array_channel_dim(self) -> int | str:
        self.splits  # reading the file tells grayscale (N, H, W) from channel-last RGB
        return -1 if self._channel_last else "no_channel"

    def read_splits(self) -> dict[str, list[ImageRecord]]:
        arrays = read_medmnist(self.path, self.spatial_dims)
        path, task, given = self.path, self.task_type, self.given_label_names
        width = arrays["train"][1].shape[1]
        images = arrays["train"][0]
        self._channel_last = images.ndim == self.spatial_dims + 2
        channels = images.shape[-1] if self._channel_last else 1
        _check_channels(channels, self.channels, path, "train_images")
        if task == "multilabel":
            if given is not None and len(given) != width:
                raise DataError(path, None, f"{width} label columns but label_names has {len(given)}: {given}")
            num_classes = width
        else:
            if width != 1:
                raise DataError(path, None, f"labels have {width} columns, which is a multilabel layout, "
                                            f"but task_type is {task!r}")
            num_classes = len(given) if given is not None else (2 if task == "binary" else max(
                int(labels.max()) + 1 if labels.size else 0 for _, labels in arrays.values()))
            if task == "binary" and num_classes != 2:
                raise DataError(path, None, f"task_type binary needs 2 label_names, got {given}")
        allowed = 2 if task == "multilabel" else num_classes
        splits: dict[str, list[ImageRecord]] = {}
        for split, (imgs, labels) in arrays.items():
            bad = (labels < 0) | (labels >= allowed)
            if bad.any():
                row = int(np.argwhere(bad)[0][0])
                value = labels[row].tolist() if task == "multilabel" else int(labels[row, 0])
                expected = ("0 or 1 in every column" if task == "multilabel"
                            else f"a class index 0..{num_classes - 1}"
                            + (f" (label_names {given})" if given is not None else ""))
                raise DataError(path, f"{split}_{row}", f"label {value} in {split}_labels is outside the classes: "
                                                        f"expected {expected}")
            splits[split] = [
                ImageRecord(id=f"{split}_{i}", image=imgs[i],
                            label=[float(v) for v in labels[i]] if task == "multilabel" else int(labels[i, 0]),
                            split=split)
                for i in range(len(imgs))
            ]
        self._set_classes(given, num_classes)
        return splits


# ---------------------------------------------------------------------------------------
# Class folders
# ---------------------------------------------------------------------------------------

def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not p.name.startswith(".") and image_format(p) is not None)


def scan_image_folder(root: PathLike) -> list[tuple[str | None, str, Path]]:
    """``(split or None, class name, file)`` for every image under a class-folder tree.

    Layouts: ``root/<class>/...`` or ``root/{train,val,test}/<class>/...``
    (``valid``/``validation`` are read as ``val``). Files are found at any depth
    below a class folder; only PNG, JPEG, DICOM and NIfTI files are taken (see
    :data:`IMAGE_SUFFIXES`), hidden files are skipped.

    Raises:
        DataError: the root is missing, no class folders, a class folder without
            images, or split folders mixed with other folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, None, "is a file, not a folder" if root.exists() else "folder not found")
    tops = _visible_dirs(root)
    split_dirs = [d for d in tops if d.name.lower() in SPLIT_NAMES]
    suffixes = ", ".join(IMAGE_SUFFIXES)
    if split_dirs:
        others = [d.name for d in tops if d not in split_dirs]
        if others:
            raise DataError(root, None, f"has split folders {[d.name for d in split_dirs]} and other folders "
                                        f"{others}; put every class folder inside train/ val/ test/")
        if not any(SPLIT_NAMES[d.name.lower()] == "train" for d in split_dirs):
            raise DataError(root, None, f"has split folders {[d.name for d in split_dirs]} but no train/ folder")
        groups = [(SPLIT_NAMES[d.name.lower()], d) for d in split_dirs]
    else:
        groups = [(None, root)]
    found: list[tuple[str | None, str, Path]] = []
    for split, folder in groups:
        classes = _visible_dirs(folder)
        if not classes:
            raise DataError(folder, None, "no class folders: expected one sub-folder per class holding image "
                                          f"files ({suffixes})" + ("" if split else ", or train/ val/ test/ folders"))
        for class_dir in classes:
            files = _image_files(class_dir)
            if not files:
                raise DataError(class_dir, None, f"class folder has no image files ({suffixes})")
            found += [(split, class_dir.name, f) for f in files]
    return found


class ImageFolderDataModule(MedicalImageDataModule):
    """Images in one folder per class (PNG, JPEG, DICOM ``.dcm``, NIfTI ``.nii``/``.nii.gz``).

    Args:
        path: the root folder: ``path/<class>/<files>`` (split with
            ``seeded_split``) or ``path/{train,val,test}/<class>/<files>``
            (a missing ``val``/``test`` folder is carved out of train).
        task_type: ``binary`` or ``multiclass``; ``None`` infers it (2 classes -> binary).
        label_names: the class list and its order (binary: ``[negative,
            positive]``); default: the folder names, sorted. A folder outside
            the list is a DataError.
        image_size, channels, augment, flip_prob, rotate_prob, rotate_degrees,
            zoom_prob, zoom_range, cache: see :class:`MedicalImageDataModule`.
        spatial_dims: 2 (images, 2D DICOM/NIfTI slices) or 3 (NIfTI volumes).
        batch_size, num_workers, seed, group_by_length, val_fraction,
            test_fraction, predict_split: see :class:`peftlab.data.PeftDataModule`.

    Record ids are the file paths relative to ``path`` (``train/NORMAL/a.png``).
    Each file is one image: a DICOM series stored as many files gives many
    2D images.
    """

    def __init__(self, path: str, task_type: str | None = None, label_names: list[str] | None = None,
                 image_size: int | None = None, channels: int | None = None, augment: bool = True,
                 flip_prob: float = 0.5, rotate_prob: float = 0.5, rotate_degrees: float = 15.0,
                 zoom_prob: float = 0.5, zoom_range: tuple[float, float] = (0.9, 1.1), cache: bool = False,
                 batch_size: int = 32, num_workers: int = 0, seed: int = 0, spatial_dims: int = 2,
                 group_by_length: bool = False, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 predict_split: str = "test"):
        scanned = None
        if task_type is None:
            scanned = scan_image_folder(path)
            classes = len(label_names) if label_names is not None else len({c for _, c, _ in scanned})
            task_type = infer_task_type(classes)
        if task_type == "multilabel":
            raise ValueError("class folders hold one label per image: use binary or multiclass "
                             "(ImageCSVDataModule reads multilabel manifests)")
        super().__init__(task_type=task_type, label_names=label_names, image_size=image_size, channels=channels,
                         spatial_dims=spatial_dims, augment=augment, flip_prob=flip_prob, rotate_prob=rotate_prob,
                         rotate_degrees=rotate_degrees, zoom_prob=zoom_prob, zoom_range=zoom_range, cache=cache,
                         batch_size=batch_size, num_workers=num_workers, seed=seed,
                         group_by_length=group_by_length, val_fraction=val_fraction,
                         test_fraction=test_fraction, predict_split=predict_split)
        self.path = path
        self._scanned = scanned

    @property
    def source(self) -> str:
        return str(self.path)

    def read_splits(self) -> dict[str, list[ImageRecord]]:
        scanned = self._scanned if self._scanned is not None else scan_image_folder(self.path)
        self._scanned = None
        root = Path(self.path)
        given = self.given_label_names
        if given is not None:
            for _, name, file in scanned:
                if name not in given:
                    class_dir = next(p for p in file.parents if p.name == name)
                    raise DataError(class_dir, None, f"class folder {name!r} is not one of label_names {given}")
        names = self._class_names({name for _, name, _ in scanned}, root, {})
        index = {name: i for i, name in enumerate(names)}
        records = [ImageRecord(id=f.relative_to(root).as_posix(), image=str(f), label=index[name], split=split)
                   for split, name, f in scanned]
        self._set_classes(names, len(names))
        return assign_splits(records, self.val_fraction, self.test_fraction, self.seed, self.path)


# ---------------------------------------------------------------------------------------
# CSV manifest
# ---------------------------------------------------------------------------------------

@dataclass
class ManifestRow:
    """One checked row of an image manifest (see :func:`read_image_csv`)."""

    row: str  # "row{N}", 1-based data row
    id: str
    image: Path
    labels: list[str]
    split: str | None


def read_image_csv(path: PathLike, *, image_column: str = "path", label_columns: Sequence[str] = ("label",),
                   split_column: str | None = "split", id_column: str | None = None,
                   image_root: str | None = None, image_suffix: str = "") -> list[ManifestRow]:
    """Rows of an image manifest, with resolved and checked image paths.

    Image paths are ``image_root / (cell + image_suffix)``; relative paths (and
    a relative ``image_root``) are relative to the CSV's folder. A split column
    is used when the header has it (values train/val/test, also valid/validation).

    Raises:
        DataError: missing file or columns, an empty cell, an unknown split, an
            image file that does not exist or has an unsupported type, a duplicated id.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "is a directory, not a file" if path.is_dir() else "file not found (no such file)")
    base = path.parent if image_root is None else path.parent / image_root
    with open_text(path, newline="") as f:
        reader = csv_dict_reader(f, path)
        header = list(reader.fieldnames or [])
        if not header:
            raise DataError(path, None, "empty file: no header row")
        required = [image_column, *label_columns] + ([id_column] if id_column else [])
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(path, None, f"missing required column(s) {missing}; found columns {header}")
        has_split = split_column is not None and split_column in header
        rows: list[ManifestRow] = []
        seen: dict[str, str] = {}
        for n, row in enumerate(reader, start=1):
            where = f"row{n}"
            if None in row or any(v is None for v in row.values()):
                raise DataError(path, where, "the row's number of fields differs from the header's")
            cell = row[image_column].strip()
            if not cell:
                raise DataError(path, where, f"empty {image_column!r}")
            labels = [row[c].strip() for c in label_columns]
            for column, value in zip(label_columns, labels):
                if not value:
                    raise DataError(path, where, f"missing label in column {column!r}")
            image = base / (cell + image_suffix)
            if image_format(image) is None:
                raise DataError(path, where, f"image file {image} has an unsupported type; expected one of "
                                             f"{', '.join(IMAGE_SUFFIXES)}")
            if not file_exists(path, where, image, cell, "image"):
                raise DataError(path, where, f"image file {image} does not exist")
            record_id = row[id_column].strip() if id_column else cell
            if not record_id:
                raise DataError(path, where, f"empty {id_column!r}")
            if record_id in seen:
                raise DataError(path, where, f"duplicated id {record_id!r} (also on {seen[record_id]})")
            seen[record_id] = where
            split = _split_name(row[split_column], path, where) if has_split else None  # type: ignore[index]
            rows.append(ManifestRow(where, record_id, image, labels, split))
    if not rows:
        raise DataError(path, None, "no data rows")
    return rows


def _binary_value(text: str, path: PathLike, record: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value not in (0.0, 1.0):
        raise DataError(path, record, f"multilabel column {column!r} must hold 0 or 1, got {text!r}")
    return value


class ImageCSVDataModule(MedicalImageDataModule):
    """Images listed in a CSV manifest (PNG, JPEG, DICOM, NIfTI files).

    Args:
        path: the CSV file, e.g. ``path,label`` / ``img/a.png,pneumonia``.
        image_column: column holding the image path (relative to the CSV's folder,
            or to ``image_root``).
        label_column: column holding the class name (binary, multiclass).
        label_columns: one 0/1 column per label: a multilabel task (the label
            names default to these column names). Replaces ``label_column``.
        split_column: column with train/val/test; used when the header has it,
            else the rows are split with ``seeded_split``. A split with no rows
            (e.g. no val rows) is carved out of train.
        id_column: column holding the record id; default: the image cell.
        image_root: folder the image paths are relative to (relative to the
            CSV's folder); default: the CSV's folder.
        image_suffix: appended to every image cell (``".jpg"`` for HAM10000's
            ``image_id`` column).
        task_type: ``binary``, ``multiclass`` or ``multilabel``; ``None`` infers it
            (``label_columns`` -> multilabel, 2 classes -> binary, else multiclass).
        label_names: the class list and its order (binary: ``[negative,
            positive]``); default: the labels seen, sorted (numerically when all
            are integers). A label outside a given list is a DataError.
        image_size, channels, augment, flip_prob, rotate_prob, rotate_degrees,
            zoom_prob, zoom_range, cache, spatial_dims: see :class:`MedicalImageDataModule`.
        batch_size, num_workers, seed, group_by_length, val_fraction,
            test_fraction, predict_split: see :class:`peftlab.data.PeftDataModule`.
    """

    def __init__(self, path: str, image_column: str = "path", label_column: str = "label",
                 label_columns: list[str] | None = None, split_column: str | None = "split",
                 id_column: str | None = None, image_root: str | None = None, image_suffix: str = "",
                 task_type: str | None = None, label_names: list[str] | None = None,
                 image_size: int | None = None, channels: int | None = None, augment: bool = True,
                 flip_prob: float = 0.5, rotate_prob: float = 0.5, rotate_degrees: float = 15.0,
                 zoom_prob: float = 0.5, zoom_range: tuple[float, float] = (0.9, 1.1), cache: bool = False,
                 batch_size: int = 32, num_workers: int = 0, seed: int = 0, spatial_dims: int = 2,
                 group_by_length: bool = False, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 predict_split: str = "test"):
        if label_columns is not None and not label_columns:
            raise ValueError("label_columns must name at least one column (or be None)")
        if task_type == "multilabel" and label_columns is None:
            raise ValueError("a multilabel manifest needs label_columns (one 0/1 column per label)")
        if label_columns is not None and task_type not in (None, "multilabel"):
            raise ValueError(f"label_columns give a multilabel task, but task_type is {task_type!r}")
        columns = list(label_columns) if label_columns is not None else [label_column]
        options = dict(image_column=image_column, label_columns=columns, split_column=split_column,
                       id_column=id_column, image_root=image_root, image_suffix=image_suffix)
        rows = None
        if task_type is None:
            if label_columns is not None:
                task_type = "multilabel"
            else:
                rows = read_image_csv(path, **options)  # type: ignore[arg-type]
                classes = len(label_names) if label_names is not None else len({r.labels[0] for r in rows})
                task_type = infer_task_type(classes)
        super().__init__(task_type=task_type, label_names=label_names, image_size=image_size, channels=channels,
                         spatial_dims=spatial_dims, augment=augment, flip_prob=flip_prob, rotate_prob=rotate_prob,
                         rotate_degrees=rotate_degrees, zoom_prob=zoom_prob, zoom_range=zoom_range, cache=cache,
                         batch_size=batch_size, num_workers=num_workers, seed=seed,
                         group_by_length=group_by_length, val_fraction=val_fraction,
                         test_fraction=test_fraction, predict_split=predict_split)
        self.path = path
        self.image_column = image_column
        self.label_column = label_column
        self.label_columns = list(label_columns) if label_columns is not None else None
        self.split_column = split_column
        self.id_column = id_column
        self.image_root = image_root
        self.image_suffix = image_suffix
        self._options = options
        self._rows = rows

    @property
    def source(self) -> str:
        return str(self.path)

    def read_splits(self) -> dict[str, list[ImageRecord]]:
        rows = self._rows
        if rows is None:
            rows = read_image_csv(self.path, **self._options)  # type: ignore[arg-type]
        self._rows = None
        path = self.path
        if self.task_type == "multilabel":
            columns = self.label_columns or [self.label_column]
            names = self.given_label_names if self.given_label_names is not None else columns
            if len(names) != len(columns):
                raise DataError(path, None, f"{len(columns)} label columns but label_names has {len(names)}: {names}")
            records = [ImageRecord(r.id, str(r.image), [_binary_value(v, path, r.row, c)
                                                        for c, v in zip(columns, r.labels)], r.split) for r in rows]
            self._set_classes(list(names), len(names))
        else:
            where: dict[str, Any] = {}
            for r in rows:
                where.setdefault(r.labels[0], r.row)
            names = self._class_names(set(where), path, where)
            index = {name: i for i, name in enumerate(names)}
            records = [ImageRecord(r.id, str(r.image), index[r.labels[0]], r.split) for r in rows]
            self._set_classes(names, len(names))
        return assign_splits(records, self.val_fraction, self.test_fraction, self.seed, self.path)
