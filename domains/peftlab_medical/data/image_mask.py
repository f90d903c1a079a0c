"""Image + mask pairs for ``task_type: segmentation`` (2D by default; 3D NIfTI pairs with a 3-size ``crop_size``).

Three layouts:

* a folder with ``images/`` and ``masks/``, a mask having its image's name (any supported suffix:
  ``images/case1.png`` <-> ``masks/case1.png`` or ``masks/case1.nii.gz``);
* a folder of ``.npz`` files, each one 2D slice holding an ``image`` and a ``label`` array (the layout
  TransUNet's preprocessed Synapse ``train_npz/`` ships in, which SAMed trains on: ``case0005_slice060.npz``);
* a CSV manifest with ``image`` and ``mask`` columns (paths relative to the CSV's folder), optionally
  ``split`` (train / val / test; else the seeded split) and an id column.

Files are PNG, JPEG, DICOM or NIfTI, decoded by :class:`peftlab_medical.data.transforms.LoadImageRecordd`
(the readers of the classification modules). A mask holds one class index per pixel (0 = background)
in one channel (an RGB mask with three equal channels is taken as gray); ``mask_values`` maps other
codings (``[0, 255]``: a binary mask saved white on black). The classes are declared by ``label_names``
or ``num_classes``.

The rest of the chain is :class:`peftlab_medical.data.msd.MSDDataModule`'s (MONAI dictionary transforms):
intensity normalisation, and on the train split only padding to ``crop_size``, crops centred on a
labelled pixel with probability ``pos_fraction``, and when ``augment`` flips and intensity jitter;
validation, test and predict see whole images (sliding windows in the segmentation task). Located
errors (:class:`peftlab.data.DataError`, naming the file and the case): an image without its mask (or a
mask without its image), an unreadable file, image and mask of different sizes, mask values outside
the declared classes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

from peftlab.data import DataError, LabelVocabulary, LoadedData, UniqueIds
from peftlab_medical.data.image_csv import _image_file, read_image_csv
from peftlab_medical.data.msd import CheckCased, MSDDataModule, case_id
from peftlab_medical.data.transforms import IMAGE_SUFFIXES, LoadImageRecordd, image_format


def pair_id(name: str) -> str:
    """``case1`` for ``case1.png``, ``case1.dcm`` or ``case1.nii.gz``: what pairs an image with its mask."""
    name = case_id(name)
    return Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name


def _stems(folder: Path) -> dict[str, Path]:
    """Case id -> file for the supported image files of a folder (a repeated id is a DataError)."""
    ids, found = UniqueIds(folder), {}
    for file in sorted(folder.iterdir()):
        if file.is_file() and not file.name.startswith(".") and image_format(file) is not None:
            found[ids.add(pair_id(file.name), file.name)] = file
    return found


def read_image_mask_folder(root: str | Path) -> list[dict[str, Any]]:
    """``{"id", "image", "label", "split": None}`` for every image of ``root/images`` and its mask in
    ``root/masks``; a missing folder, an image without a mask or a mask without an image is a DataError."""
    root = Path(root)
    for name in ("images", "masks"):
        if not (root / name).is_dir():
            raise DataError(root, None, f"no {name}/ folder: expected images/ and masks/ with matching file names")
    images, masks = _stems(root / "images"), _stems(root / "masks")
    if not images:
        raise DataError(root / "images", None, "no image files (PNG, JPEG, DICOM or NIfTI)")
    for cid, file in images.items():
        if cid not in masks:
            raise DataError(file, cid, f"no mask of the same name in {root / 'masks'}")
    for cid, file in masks.items():
        if cid not in images:
            raise DataError(file, cid, f"a mask without an image of the same name in {root / 'images'}")
    return [{"id": cid, "image": str(images[cid]), "label": str(masks[cid]), "split": None} for cid in images]


def read_npz_slices(root: str | Path) -> list[dict[str, Any]]:
    """``{"id", "image", "label", "split": None}`` for every ``.npz`` slice of ``root`` (image and label are
    the same file; :class:`LoadImageMaskd` reads its ``image`` and ``label`` arrays)."""
    root, ids = Path(root), UniqueIds(root)
    files = [f for f in sorted(root.iterdir()) if f.is_file() and f.suffix.lower() == ".npz"]
    return [{"id": ids.add(f.stem, f.name), "image": str(f), "label": str(f), "split": None} for f in files]


def read_npz_pair(file: str, cid: str) -> tuple[Any, Any]:
    """The ``image`` and ``label`` arrays of one ``.npz`` slice (our own reader: MONAI's ``NumpyReader``
    reads one array per file, not a pair)."""
    try:
        with np.load(file, allow_pickle=False) as arrays:
            missing = [k for k in ("image", "label") if k not in arrays.files]
            if missing:
                raise DataError(file, cid, f"an .npz slice needs 'image' and 'label' arrays (TransUNet's train_npz "
                                           f"layout); it has {sorted(arrays.files)}, not {missing}")
            return arrays["image"], arrays["label"]
    except DataError:
        raise
    except Exception as e:  # a truncated or non-zip file, a pickled object array
        raise DataError(file, cid, f"unreadable .npz slice: {type(e).__name__}: {e}") from None


def read_image_mask_csv(path: str | Path, image_column: str = "image", mask_column: str = "mask",
                        id_column: str | None = None) -> list[dict[str, Any]]:
    """The pairs a CSV manifest lists (the row checks of :func:`read_image_csv`, the mask file checked as
    the image is); ids are the id column's or the image names'."""
    path = Path(path)
    rows = read_image_csv(path, image_column=image_column, label_columns=(mask_column,), id_column=id_column)
    pairs = []
    for row in rows:
        mask = _image_file(path, row.row, path.parent, row.labels[0], "")
        cid = row.id if id_column else pair_id(row.image.name)
        pairs.append({"id": cid, "image": str(row.image), "label": str(mask), "split": row.split})
    ids = UniqueIds(path)
    for pair in pairs:
        ids.add(pair["id"])
    return pairs


class LoadImageMaskd(MapTransform):
    """Read a pair's image and mask (any supported format, checked as classification images are) into
    ``image`` ``[C, *spatial]`` float and ``label`` ``[1, *spatial]`` class indices."""

    def __init__(self, spatial_dims: int, channels: int | None, mask_values: list[float] | None) -> None:
        super().__init__(keys=("image", "label"))
        self.images = LoadImageRecordd(spatial_dims=spatial_dims, channels=channels)
        self.masks = LoadImageRecordd(spatial_dims=spatial_dims)
        self.mask_values = None if mask_values is None else [float(v) for v in mask_values]

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d, cid = dict(data), data["id"]
        d["image_file"], d["label_file"] = data["image"], data["label"]
        image, mask = data["image"], data["label"]
        if str(image).lower().endswith(".npz"):  # one file holds both arrays
            image, mask = read_npz_pair(image, cid)
        try:
            d["image"] = self.images({"image": image, "id": cid})["image"]
        except DataError as e:
            raise DataError(data["image"], e.record, e.problem) from None
        try:
            mask = self.masks({"image": mask, "id": cid})["image"]
        except DataError as e:
            raise DataError(data["label"], e.record, f"mask: {e.problem}") from None
        if mask.shape[0] == 3 and torch.equal(mask[0], mask[1]) and torch.equal(mask[0], mask[2]):
            mask = mask[:1]  # a gray mask saved as RGB
        if mask.shape[0] != 1:
            raise DataError(data["label"], cid, f"the mask has {mask.shape[0]} channels; a mask holds one class "
                                                f"index per pixel in one channel (a grayscale PNG)")
        d["label"] = self._map_values(mask, data["label"], cid)
        return d

    def _map_values(self, mask: torch.Tensor, file: str, cid: str) -> torch.Tensor:
        """``mask_values[i]`` -> class ``i``; without ``mask_values`` the mask already holds class indices."""
        if self.mask_values is None:
            return mask
        unknown = sorted(set(torch.unique(mask).tolist()) - set(self.mask_values))
        if unknown:
            raise DataError(file, cid, f"mask values {unknown[:5]} are not among mask_values {self.mask_values}")
        out = torch.zeros_like(mask)
        for index, value in enumerate(self.mask_values):
            out[mask == value] = index
        return out


class ImageMaskDataModule(MSDDataModule):
    """Image + mask pairs from a folder (``images/``, ``masks/``) or a CSV manifest (see the module docstring).

    Args:
        path: the folder holding ``images/`` and ``masks/``, a folder of ``.npz`` slices, or the CSV manifest.
        image_column, mask_column, id_column: the manifest's columns (ids default to the image names).
        label_names: the class names, background first; or give ``num_classes`` (names
            ``background``, ``class1``, ...). A mask value outside them is a located error.
        num_classes: the number of classes, background included (when ``label_names`` is not given).
        mask_values: the pixel value of each class in the mask files, when they are not ``0..K-1``
            (``[0, 255]`` for white-on-black binary masks).
        channels: ``None`` keeps the images' channels; 1 refuses RGB images; 3 repeats gray ones.
        crop_size: the training crops (the network's ``img_size``: 2 sizes, or 3 for NIfTI volumes).
        samples_per_image: training crops drawn per image and epoch.
        split_by: a regular expression whose first group is the case an image belongs to, for 2D slices
            of 3D scans (``"(.+)_slice\\d+"`` for ``case0005_slice060``): the seeded split then splits cases,
            never putting slices of one scan into two splits (``split_file`` records case ids). ``None``:
            every image is its own case.
        pos_fraction, intensity, augment, split_file, cache, batch_size: as :class:`MSDDataModule`'s.

    Splits: a manifest's ``split`` column, else the seeded split (``seed``, ``val_fraction``,
    ``test_fraction``; ``split_file`` records it).
    """

    def __init__(self, path: str, image_column: str = "image", mask_column: str = "mask",
                 id_column: str | None = None, label_names: list[str] | None = None, num_classes: int | None = None,
                 mask_values: list[float] | None = None, channels: int | None = None,
                 crop_size: list[int] = (64, 64), samples_per_image: int = 1, pos_fraction: float = 0.5,
                 intensity: str = "minmax", augment: bool = True, split_file: str | None = None,
                 split_by: str | None = None, cache: bool = True, batch_size: int = 8, **kwargs: Any) -> None:
        super().__init__(root=path, crop_size=crop_size, samples_per_volume=samples_per_image,
                         pos_fraction=pos_fraction, intensity=intensity, augment=augment, split_file=split_file,
                         cache=cache, batch_size=batch_size, **kwargs)
        self.classes = _declared_classes(label_names, num_classes, mask_values)
        self.columns = (image_column, mask_column, id_column)
        self.mask_values, self.channels = mask_values, channels
        self.split_by = re.compile(split_by) if split_by else None
        if self.split_by is not None and self.split_by.groups < 1:
            raise ValueError(f"split_by {split_by!r} has no group: its first group must capture the case name")

    def load_data(self) -> LoadedData:
        if self.root.is_file():
            pairs = read_image_mask_csv(self.root, *self.columns)
        elif self.root.is_dir() and not (self.root / "images").is_dir() and any(self.root.glob("*.npz")):
            pairs = read_npz_slices(self.root)
        else:
            pairs = read_image_mask_folder(self.root)
        if any(p["split"] is not None for p in pairs):
            splits = {s: [p for p in pairs if p["split"] == s] for s in ("train", "val", "test")}
        else:
            by_id = {p["id"]: p for p in pairs}
            cases = self._cases(by_id)
            splits = {s: [by_id[i] for case in split for i in cases[case]]
                      for s, split in self._split_ids(list(cases)).items()}
        names = self.classes
        return LoadedData(splits, LabelVocabulary(len(names), names, {n: i for i, n in enumerate(names)}))

    def _cases(self, by_id: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
        """Case -> its image ids (each image its own case without ``split_by``)."""
        if self.split_by is None:
            return {i: [i] for i in by_id}
        cases: dict[str, list[str]] = {}
        for i, pair in by_id.items():
            match = self.split_by.fullmatch(i)
            if match is None:
                raise DataError(pair["image"], i, f"the image id does not match split_by {self.split_by.pattern!r}, "
                                                  f"which names the case each image belongs to")
            cases.setdefault(match.group(1), []).append(i)
        return cases

    def load_transforms(self) -> list[Any]:
        return [LoadImageMaskd(len(self.crop_size), self.channels, self.mask_values), CheckCased(self.num_outputs)]


def _declared_classes(label_names: list[str] | None, num_classes: int | None,
                      mask_values: list[float] | None) -> list[str]:
    """The class names from ``label_names`` or ``num_classes`` (one of them is needed; they must agree,
    and with ``mask_values``)."""
    if label_names is None and num_classes is None:
        raise ValueError("declare the classes of the masks: label_names (background first) or num_classes")
    names = ([str(n) for n in label_names] if label_names is not None
             else ["background"] + [f"class{i}" for i in range(1, int(num_classes))])
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(f"label_names has {len(names)} names but num_classes is {num_classes}")
    if len(names) < 2:
        raise ValueError(f"segmentation needs at least 2 classes (background and one more), got {names}")
    if mask_values is not None and len(mask_values) != len(names):
        raise ValueError(f"mask_values gives {len(mask_values)} values for {len(names)} classes: one per class")
    return names
