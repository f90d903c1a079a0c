"""What a record's image becomes as an item: the MONAI loading transform
(:class:`LoadImageRecordd`, files and arrays decoded and checked), the datasets
that reseed the random transforms per (seed, epoch, item) and surface decoding
errors as :class:`~peftlab.data.DataError`, and the grayscale-to-RGB repeat.

Files are decoded with MONAI's ``LoadImage`` (PIL for PNG/JPEG, pydicom for
DICOM, nibabel for NIfTI) inside the Dataset, so decoding runs in DataLoader
workers. Arrays keep numpy's ``(rows, columns)`` order for every format (MONAI's
PIL and pydicom readers are told not to swap the axes), so a PNG and the same
pixels in an ``.npz`` give the same tensor.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, MetaTensor, NibabelReader, PILReader, PydicomReader
from monai.transforms import (
    Compose,
    EnsureChannelFirst,
    LoadImage,
    MapTransform,
    Randomizable,
    RepeatChanneld,
    Transform,
)

from peftlab.data import DataError, item_seed

MIN_IMAGE_SIDE = 2  # pixels per spatial side: RandZoom (and any resize) breaks on 1-pixel sides
# file suffix -> the MONAI reader that decodes it
IMAGE_SUFFIXES: dict[str, str] = {".png": "pil", ".jpg": "pil", ".jpeg": "pil", ".dcm": "dicom",
                                  ".nii": "nifti", ".nii.gz": "nifti"}

PathLike = str | os.PathLike


def image_format(path: PathLike) -> str | None:
    """The reader kind for a file (``pil``, ``dicom`` or ``nifti``) from its suffix, or ``None``."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return IMAGE_SUFFIXES[".nii.gz"]
    return IMAGE_SUFFIXES.get(Path(name).suffix)


def check_channels(found: int, wanted: int | None, path: PathLike, record: Any) -> None:
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
# Loading one record (a MONAI transform)
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
        check_channels(int(image.shape[0]), self.channels, path, record)
        # a plain tensor: later transforms start from fresh metadata whose spatial rank
        # matches the channel-first shape (a MetaTensor made before the channel axis was
        # added, or before squeezing, keeps a wrong rank and breaks RandZoom)
        d["image"] = image.as_tensor() if isinstance(image, MetaTensor) else image
        return d


class RepeatGrayd(RepeatChanneld):
    """``RepeatChanneld`` that repeats only 1-channel images (to 3), leaving RGB as it is."""

    def __init__(self, keys: str):
        super().__init__(keys=keys, repeats=3)

    def __call__(self, data: Any) -> dict[str, Any]:
        if data["image"].shape[0] != 1:
            return dict(data)
        return super().__call__(data)


# ---------------------------------------------------------------------------------------
# The datasets: DataError unwrapped, augmentation seeded per item
# ---------------------------------------------------------------------------------------

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


class ImageDataset(_ItemSeeded, Dataset):
    """MONAI ``Dataset`` whose decoding errors surface as DataError."""


class CachedImageDataset(_ItemSeeded, CacheDataset):
    """MONAI ``CacheDataset`` (deterministic transforms run once) whose decoding errors surface as DataError."""

    def _load_cache_item(self, idx: int) -> Any:
        with _data_errors():
            return super()._load_cache_item(idx)
