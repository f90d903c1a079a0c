"""MedMNIST v2 ``.npz`` files: the keys ``{train,val,test}_images`` /
``{train,val,test}_labels``, with their official splits.

Images are ``(N, H, W)`` (grayscale) or ``(N, H, W, 3)`` (RGB) for 2D sets and
``(N, D, H, W)`` for the 3D sets (``spatial_dims=3``); labels are ``(N, 1)``
class indices (binary/multiclass) or ``(N, K)`` 0/1 columns (multi-label,
e.g. ChestMNIST's 14 findings).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from peftlab.data import SPLITS, DataError, LabelVocabulary, existing_file
from peftlab_medical.data.base import ImageRecord, MedicalImageDataModule, infer_task_type
from peftlab_medical.data.transforms import MIN_IMAGE_SIDE, PathLike, check_channels

_LABEL_LIMIT = 2**31  # a label at or beyond this is not a class index (and would wrap in int64 casts)


def _open_npz(path: PathLike) -> Any:
    p = existing_file(path)
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


def _checked_images(images: np.ndarray, split: str, spatial_dims: int, path: PathLike) -> tuple[int, int | None]:
    """Check one split's image array (dtype, layout, count, sides, finite values); returns its layout
    ``(axes, channels on the last axis or None)``."""
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
    return images.ndim, images.shape[-1] if channel_last else None


def _checked_content(images: np.ndarray, split: str, spatial_dims: int, path: PathLike) -> None:
    """At least one image, sides of at least :data:`MIN_IMAGE_SIDE`, finite pixel values."""
    key = f"{split}_images"
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
            raise DataError(path, f"{split}_{i}", f"image {i} of {key} has non-finite pixel values (NaN or inf)")


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
        for split in SPLITS:
            images = _npz_array(archive, f"{split}_images", path)
            labels = _npz_array(archive, f"{split}_labels", path)
            image_layout = _checked_images(images, split, spatial_dims, path)
            if split == "train":
                train_shape, train_layout = images.shape, image_layout
            elif image_layout != train_layout:  # items take their channel axis from the train split's layout
                raise DataError(path, f"{split}_images", f"images have shape {images.shape} but train_images have "
                                                         f"shape {train_shape}: every split needs the same layout "
                                                         "(channel axis or not, same channel count)")
            _checked_content(images, split, spatial_dims, path)
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
        for split in SPLITS:
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

    The other options (``label_names`` in label-index order or the names of
    the multilabel columns, ``image_size``, ``channels``, the augmentation,
    ``cache``, ``spatial_dims`` 3 for the 3D volumes, batches): see
    :class:`MedicalImageDataModule`. The splits are the file's own, so there is
    no ``val_fraction`` / ``test_fraction``.

    Record ids are ``{split}_{index}``, e.g. ``train_0``. Images are scaled to
    [0, 1] per image (``ScaleIntensity``, min-max), so uint8 and float files
    give the same range.
    """

    def __init__(self, path: str, task_type: str | None = None, **kwargs: Any):
        if task_type is None:
            width, top = _npz_label_summary(path)  # labels only: cheap even for large files
            label_names = kwargs.get("label_names")
            task_type = infer_task_type(len(label_names) if label_names is not None else top, width)
        # the official splits: nothing is carved out of train
        super().__init__(task_type=task_type, val_fraction=0.0, test_fraction=0.0, **kwargs)
        self.path = path
        self._channel_last = False

    @property
    def source(self) -> str:
        return str(self.path)

    def array_channel_dim(self) -> int | str:
        self.splits  # reading the file tells grayscale (N, H, W) from channel-last RGB
        return -1 if self._channel_last else "no_channel"

    def read_records(self) -> tuple[list[ImageRecord], LabelVocabulary]:
        arrays = read_medmnist(self.path, self.spatial_dims)
        images = arrays["train"][0]
        self._channel_last = images.ndim == self.spatial_dims + 2
        check_channels(images.shape[-1] if self._channel_last else 1, self.channels, self.path, "train_images")
        num_classes = self._num_classes(arrays)
        multilabel = self.task_type == "multilabel"
        records: list[ImageRecord] = []
        for split, (imgs, labels) in arrays.items():
            self._check_label_range(split, labels, num_classes)
            records += [ImageRecord(id=f"{split}_{i}", image=imgs[i],
                                    label=[float(v) for v in labels[i]] if multilabel else int(labels[i, 0]),
                                    split=split)
                        for i in range(len(imgs))]
        return records, self.class_index_vocabulary(self.given_label_names, num_classes)

    def _num_classes(self, arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> int:
        """The classes (multilabel: labels) of the task: given, or read from the labels' width / values."""
        path, task, given = self.path, self.task_type, self.given_label_names
        width = arrays["train"][1].shape[1]
        if task == "multilabel":
            if given is not None and len(given) != width:
                raise DataError(path, None, f"{width} label columns but label_names has {len(given)}: {given}")
            return width
        if width != 1:
            raise DataError(path, None, f"labels have {width} columns, which is a multilabel layout, "
                                        f"but task_type is {task!r}")
        num_classes = len(given) if given is not None else (2 if task == "binary" else max(
            int(labels.max()) + 1 if labels.size else 0 for _, labels in arrays.values()))
        if task == "binary" and num_classes != 2:
            raise DataError(path, None, f"task_type binary needs 2 label_names, got {given}")
        return num_classes

    def _check_label_range(self, split: str, labels: np.ndarray, num_classes: int) -> None:
        """Every label a class index (multilabel: 0 or 1), else a DataError naming the record."""
        task, given = self.task_type, self.given_label_names
        allowed = 2 if task == "multilabel" else num_classes
        bad = (labels < 0) | (labels >= allowed)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            value = labels[row].tolist() if task == "multilabel" else int(labels[row, 0])
            expected = ("0 or 1 in every column" if task == "multilabel"
                        else f"a class index 0..{num_classes - 1}"
                        + (f" (label_names {given})" if given is not None else ""))
            raise DataError(self.path, f"{split}_{row}", f"label {value} in {split}_labels is outside the classes: "
                                                          f"expected {expected}")
