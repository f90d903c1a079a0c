"""Medical Segmentation Decathlon task folders (``task_type: segmentation``).

The layout (http://medicaldecathlon.com): ``<root>/dataset.json`` with ``labels``
(``{"0": "background", "1": ...}``), ``modality`` and ``training`` (a list of
``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}``), and
the NIfTI volumes. MSD publishes no labels for ``imagesTs``, so the labelled
training cases are split into train / val / test by
:func:`peftlab.data.splits.seeded_split` (``seed``, ``val_fraction``,
``test_fraction``); ``split_file`` writes that split to a JSON file (or reads
one written before, so a run can keep a recorded split whatever the seed).

Transforms (MONAI dictionary transforms): ``LoadImaged`` -> ``EnsureChannelFirstd``
-> the case checks (:class:`CheckCased`) -> ``Orientationd`` (when
``orientation``) -> ``Spacingd`` (when ``spacing``) -> ``NormalizeIntensityd``
(z-score over non-zero voxels, per channel) or ``ScaleIntensityd`` (min-max)
-> on the train split only: ``SpatialPadd`` to ``crop_size``,
``RandCropByPosNegLabeld`` (``samples_per_volume`` crops of ``crop_size``,
centred on a labelled voxel with probability ``pos_fraction``), and when
``augment``, ``RandFlipd`` on every axis and ``RandScaleIntensityd`` /
``RandShiftIntensityd``. Validation, test and predict get whole volumes,
padded in the batch to one size (``shapes`` keeps each case's own size; the
segmentation task scores each case on its own voxels in sliding windows).
Random transforms are seeded per (seed, epoch, item) like every medical
DataModule's.

Located errors (:class:`peftlab.errors.DataError`, naming the file and the case):
a missing or unreadable ``dataset.json`` or volume, an image and label of
different shapes or affines, label values outside ``labels``, an empty
(constant) or non-finite image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from monai.transforms import (Compose, EnsureChannelFirstd, LoadImaged, MapTransform, NormalizeIntensityd,
                              Orientationd, RandCropByPosNegLabeld, RandFlipd, RandScaleIntensityd,
                              RandShiftIntensityd, ScaleIntensityd, Spacingd, SpatialPadd)

from peftlab.data import DataError, LabelVocabulary, LoadedData, PeftDataModule
from peftlab.data.splits import seeded_split
from peftlab_medical.data.transforms import CachedImageDataset, ImageDataset


def case_id(path: str) -> str:
    """``hippocampus_367`` for ``./imagesTr/hippocampus_367.nii.gz``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_msd_task(root: str | Path) -> tuple[list[dict[str, str]], list[str], dict[str, Any]]:
    """``(cases, class names, dataset.json)`` of an MSD task folder; each case is
    ``{"id", "image", "label"}`` with absolute paths. Problems are DataErrors naming the file and case."""
    root = Path(root)
    path = root / "dataset.json"
    if not path.is_file():
        raise DataError(path, None, "no dataset.json: not a Medical Segmentation Decathlon task folder")
    try:
        meta = json.loads(path.read_text())
        labels = {int(k): str(v) for k, v in meta["labels"].items()}
        training = list(meta["training"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(path, None, f"not a valid MSD dataset.json (needs 'labels' and 'training'): "
                                    f"{type(e).__name__}: {e}") from None
    if sorted(labels) != list(range(len(labels))) or len(labels) < 2:
        raise DataError(path, None, f"'labels' must number the classes 0..K-1 (0 the background), got {sorted(labels)}")
    cases, seen = [], set()
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DataError(path, f"training[{i}]", "each training case needs 'image' and 'label'")
        cid = case_id(entry["image"])
        if cid in seen:
            raise DataError(path, cid, "this case is listed twice in 'training'")
        seen.add(cid)
        case = {"id": cid, "image": str(root / entry["image"]), "label": str(root / entry["label"])}
        for key in ("image", "label"):
            if not Path(case[key]).is_file():
                raise DataError(case[key], cid, f"the {key} file listed in {path} does not exist")
        cases.append(case)
    if not cases:
        raise DataError(path, None, "'training' lists no cases")
    return cases, [labels[k] for k in range(len(labels))], meta


class LoadCased(MapTransform):
    """MONAI's ``LoadImaged`` + ``EnsureChannelFirstd`` on ``image`` (``image_reader``: NIfTI by default)
    and ``label`` (NIfTI), a file that cannot be read being a DataError naming it and the case."""

    def __init__(self, image_reader: Any = "NibabelReader") -> None:
        super().__init__(keys=("image", "label"))
        readers = {"image": image_reader, "label": "NibabelReader"}
        self.loaders = {key: LoadImaged(keys=key, reader=readers[key], image_only=True) for key in self.keys}
        self.channel_first = EnsureChannelFirstd(keys=self.keys)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        for key in self.keys:
            try:
                d = self.loaders[key](d)
            except Exception as e:  # nibabel / MONAI raise many types for a damaged file
                cause = e.__cause__ or e
                raise DataError(data[key], data["id"], f"cannot read the {key} volume "
                                                       f"({type(cause).__name__}: {cause})") from None
        return self.channel_first(d)


class CheckCased(MapTransform):
    """Located checks of one loaded case: image and label of one shape and affine, label values in the
    declared classes, an image that is finite and not constant (empty)."""

    def __init__(self, num_classes: int, atol: float = 1e-3) -> None:
        super().__init__(keys=("image", "label"))
        self.num_classes, self.atol = num_classes, atol

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        image, label, cid = data["image"], data["label"], data["id"]
        image_file, label_file = (_file_of(data, key) for key in ("image", "label"))
        if tuple(image.shape[1:]) != tuple(label.shape[1:]) or label.shape[0] != 1:
            raise DataError(label_file, cid,
                            f"label shape {list(label.shape)} does not fit image shape {list(image.shape)} "
                            f"(channel first; the label needs one channel and the image's voxels)")
        if hasattr(image, "affine") and hasattr(label, "affine") and not torch.allclose(
                image.affine.double(), label.affine.double(), atol=self.atol):
            raise DataError(label_file, cid,
                            f"label affine differs from the image's:\n{label.affine.numpy()}\n"
                            f"vs\n{image.affine.numpy()}")
        values = torch.unique(label.as_tensor() if hasattr(label, "as_tensor") else label)
        bad = [int(v) if v == int(v) else v for v in values.tolist() if v != int(v) or not 0 <= v < self.num_classes]
        if bad:
            raise DataError(label_file, cid,
                            f"label values {bad[:5]} are outside the declared classes 0..{self.num_classes - 1}")
        if not torch.isfinite(image).all():
            raise DataError(image_file, cid, "the image holds NaN or infinite values")
        if image.numel() == 0 or float(image.max()) == float(image.min()):
            raise DataError(image_file, cid, "the image is empty (every voxel equal)")
        return data


def _file_of(data: dict[str, Any], key: str) -> Any:
    """The file a loaded ``key`` came from: its MONAI metadata, else the ``<key>_file`` the loader kept,
    else the case id."""
    meta = getattr(data[key], "meta", None) or {}
    return meta.get("filename_or_obj") or data.get(f"{key}_file") or data["id"]


class MSDDataModule(PeftDataModule):
    """A Medical Segmentation Decathlon task folder for ``task_type: segmentation`` (see the module docstring).

    Args:
        root: the task folder (``Task04_Hippocampus``: ``dataset.json``, ``imagesTr/``, ``labelsTr/``).
        crop_size: size of the training crops (the network's input size, e.g. UNETR's ``img_size``).
        samples_per_volume: training crops drawn from each case per epoch.
        pos_fraction: share of crops centred on a labelled (foreground) voxel.
        orientation: reorient every volume (e.g. ``RAS``); ``None`` keeps the files' axes, so the
            predicted masks line up voxel for voxel with the input files.
        spacing: resample to this voxel spacing (mm); ``None`` keeps the files' spacing.
        intensity: ``zscore`` (non-zero voxels, per channel) or ``minmax`` (to [0, 1]).
        augment: random flips and intensity scale / shift on the train split (never on val / test).
        max_cases: use only the first ``max_cases`` cases of ``dataset.json`` (quick runs, tests).
        split_file: a JSON file with the ``train`` / ``val`` / ``test`` case ids: read when it exists,
            else the seeded split is written there.
        cache: keep loaded, checked and normalised volumes in memory (MONAI ``CacheDataset``).
        batch_size: cases per batch (each gives ``samples_per_volume`` crops in training).

    The options every DataModule shares (``num_workers``, ``seed``, ``val_fraction``,
    ``test_fraction``, ``predict_split``) go on to :class:`peftlab.data.PeftDataModule`.
    """

    input_keys = ("images",)
    tags_epochs = True

    def __init__(self, root: str, crop_size: list[int] = (32, 32, 32), samples_per_volume: int = 1,
                 pos_fraction: float = 0.5, orientation: str | None = None, spacing: list[float] | None = None,
                 intensity: str = "zscore", augment: bool = True, max_cases: int | None = None,
                 split_file: str | None = None, cache: bool = True, batch_size: int = 2,
                 group_by_length: bool = False, **kwargs: Any) -> None:
        super().__init__(task_type="segmentation", batch_size=batch_size, group_by_length=group_by_length, **kwargs)
        if intensity not in ("zscore", "minmax"):
            raise ValueError(f"intensity must be 'zscore' or 'minmax', got {intensity!r}")
        if not 0.0 <= pos_fraction <= 1.0:
            raise ValueError(f"pos_fraction must be in [0, 1], got {pos_fraction}")
        self.root, self.crop_size = Path(root), [int(s) for s in crop_size]
        self.samples_per_volume, self.pos_fraction = samples_per_volume, pos_fraction
        self.orientation, self.spacing, self.intensity = orientation, spacing, intensity
        self.augment, self.max_cases, self.split_file, self.cache = augment, max_cases, split_file, cache
        self._datasets: dict[str, tuple[list, Any]] = {}
        self.dataset_json: dict[str, Any] = {}

    # ---- records and splits ------------------------------------------------------------
    def load_data(self) -> LoadedData:
        cases, names, self.dataset_json = read_msd_task(self.root)
        if self.max_cases is not None:
            cases = cases[: self.max_cases]
        ids = self._split_ids([c["id"] for c in cases])
        by_id = {c["id"]: c for c in cases}
        splits = {s: [by_id[i] for i in ids[s]] for s in ("train", "val", "test")}
        return LoadedData(splits, LabelVocabulary(len(names), names, {n: i for i, n in enumerate(names)}))

    def data_source(self) -> str:
        return str(self.root)  # the task folder, the pairs' folder or manifest, the DICOM manifest

    def _split_ids(self, ids: list[str]) -> dict[str, list[str]]:
        """The recorded split (``split_file``) or the seeded one (written to ``split_file`` when given)."""
        path = Path(self.split_file) if self.split_file else None
        if path is not None and path.is_file():
            try:
                recorded = {s: [str(i) for i in json.loads(path.read_text())[s]] for s in ("train", "val", "test")}
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(path, None, f"not a split file (train / val / test lists of case ids): {e}") from None
            unknown = sorted(set(sum(recorded.values(), [])) - set(ids))
            if unknown:
                raise DataError(path, unknown[0], f"{len(unknown)} case id(s) of the split are not in {self.root}")
            return recorded
        index = seeded_split(len(ids), self.val_fraction, self.test_fraction, self.seed)
        split = {s: [ids[i] for i in sorted(index[s])] for s in ("train", "val", "test")}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"seed": self.seed, "val_fraction": self.val_fraction,
                                        "test_fraction": self.test_fraction, **split}, indent=1))
        return split

    # ---- transforms, datasets, batches ---------------------------------------------------
    def load_transforms(self) -> list[Any]:
        """The start of every split's chain: read a case's image and label, and check them."""
        return [LoadCased(), CheckCased(self.num_outputs)]

    def transform(self, split: str) -> Compose:
        """The MONAI chain of one split (see the module docstring)."""
        keys = ("image", "label")
        chain: list[Any] = self.load_transforms()
        if self.orientation:
            chain.append(Orientationd(keys=keys, axcodes=self.orientation))
        if self.spacing:
            chain.append(Spacingd(keys=keys, pixdim=list(self.spacing), mode=("bilinear", "nearest")))
        chain.append(NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)
                     if self.intensity == "zscore" else ScaleIntensityd(keys="image"))
        if split == "train":
            chain += [SpatialPadd(keys=keys, spatial_size=self.crop_size),
                      RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=self.crop_size,
                                             pos=self.pos_fraction, neg=1.0 - self.pos_fraction,
                                             num_samples=self.samples_per_volume, image_key="image")]
            if self.augment:
                chain += [RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(len(self.crop_size))]
                chain += [RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
                          RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5)]
        return Compose(chain)

    def dataset(self, split: str, records: list[dict[str, str]]) -> Any:
        kept = self._datasets.get(split)
        if kept is not None and kept[0] is records:
            return kept[1]
        augmenting = split == "train" and not getattr(self, "_predicting", False)
        chain = self.transform("train" if augmenting else "eval")
        data = (CachedImageDataset(records, chain, num_workers=max(1, self.num_workers), progress=False)
                if self.cache else ImageDataset(records, chain))
        data.seed = self.seed
        self._datasets[split] = (records, data)
        return data

    def collate(self, items: list[Any]) -> dict[str, Any]:
        """Training crops are stacked; whole volumes are zero-padded to the batch's largest and
        ``shapes`` keeps each one's size. ``affines`` hold each case's voxel-to-world matrix."""
        flat = [c for item in items for c in (item if isinstance(item, list) else [item])]
        images = [torch.as_tensor(c["image"].as_tensor() if hasattr(c["image"], "as_tensor") else c["image"]).float()
                  for c in flat]
        labels = [torch.as_tensor(c["label"].as_tensor() if hasattr(c["label"], "as_tensor") else c["label"]).long()
                  for c in flat]
        batch: dict[str, Any] = {"ids": [c["id"] for c in flat]}
        affines = [getattr(c["image"], "affine", None) for c in flat]
        if all(a is not None for a in affines):
            batch["affines"] = torch.stack([torch.as_tensor(a).double() for a in affines])
        shapes = [tuple(i.shape[1:]) for i in images]
        if len(set(shapes)) == 1:
            batch["images"], batch["labels"] = torch.stack(images), torch.stack(labels)
            return batch
        size = [max(s[d] for s in shapes) for d in range(len(shapes[0]))]
        batch["images"] = torch.stack([_pad(i, size) for i in images])
        batch["labels"] = torch.stack([_pad(y, size) for y in labels])
        batch["shapes"] = torch.tensor(shapes)
        return batch

    def predict_dataloader(self) -> Any:
        """Whole volumes, never augmented crops, whichever split is predicted."""
        self._predicting = True
        self._datasets.pop("train", None)
        return super().predict_dataloader()


def _pad(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Zero-pad ``[C, *spatial]`` at the end of every spatial axis to ``size``."""
    pad: list[int] = []
    for have, want in zip(reversed(x.shape[1:]), reversed(size)):
        pad += [0, want - have]
    return torch.nn.functional.pad(x, pad)

