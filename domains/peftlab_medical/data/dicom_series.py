"""3D segmentation cases whose image is a DICOM series (a folder of slices) and whose label is a NIfTI
mask (``task_type: segmentation``) — the common clinical layout: scanner DICOM, masks drawn in 3D
Slicer / ITK-SNAP and saved as NIfTI.

Cases come from a CSV manifest with ``image`` (the series folder) and ``label`` (the NIfTI mask)
columns, and an optional ``id`` (default: the folder's name); relative paths are relative to the
CSV. Classes are declared by ``label_names`` (background first).

Everything after reading is :class:`~peftlab_medical.data.msd.MSDDataModule`'s: the seeded split
(``split_file``), orientation / spacing / intensity transforms, training crops, whole volumes for
evaluation and ``affines`` for the predicted masks. Reading: MONAI's ``PydicomReader`` stacks the
slices in ``InstanceNumber`` order into a ``[columns, rows, slices]`` volume with its RAS affine (as
NIfTI tools write it); ITK is not installed here, so not ``ITKReader``.

Located errors (:class:`peftlab.errors.DataError`, naming the folder or file and the case), checked
on the slice headers before MONAI stacks them (MONAI only warns, or drops slices silently): an
empty folder or one without DICOM files, unreadable slices, slices of more than one series, slices
of different sizes or pixel spacings, missing or repeated ``InstanceNumber``, unevenly spaced
slices, fewer than two slices; then, as for MSD, a mask whose shape or affine differs from the
volume's, label values outside the classes, an empty or non-finite image.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import PydicomReader
from monai.transforms import MapTransform

from peftlab.data import DataError, LabelVocabulary, LoadedData
from peftlab_medical.data.msd import CheckCased, LoadCased, MSDDataModule


def read_dicom_series_manifest(path: str | Path) -> list[dict[str, str]]:
    """The cases of a manifest CSV (``image`` series folder, ``label`` NIfTI mask, optional ``id``):
    ``{"id", "image", "label"}`` with absolute paths; problems are DataErrors naming the CSV and case."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "the DICOM series manifest does not exist")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise DataError(path, None, "the manifest needs a header with 'image' (a DICOM series folder) and "
                                    "'label' (a NIfTI mask) columns, and at least one case")
    cases, seen = [], set()
    for i, row in enumerate(rows):
        image, label = (path.parent / (row.get(k) or "").strip() for k in ("image", "label"))
        cid = (row.get("id") or "").strip() or image.name
        if cid in seen:
            raise DataError(path, cid, f"case id {cid!r} is listed twice (row {i + 2})")
        seen.add(cid)
        if not image.is_dir():
            raise DataError(image, cid, f"the image of row {i + 2} must be a folder of DICOM slices (one series)")
        if not label.is_file():
            raise DataError(label, cid, f"the label file of row {i + 2} does not exist")
        cases.append({"id": cid, "image": str(image), "label": str(label)})
    return cases


def check_dicom_series(folder: str | Path, case: str) -> None:
    """The slices of ``folder`` form one volume (see the module docstring), else a DataError naming it."""
    import pydicom

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and pydicom.misc.is_dicom(str(p)))
    if not files:
        raise DataError(folder, case, "the series folder holds no DICOM files")
    headers = []
    for f in files:
        try:
            headers.append(pydicom.dcmread(f, stop_before_pixels=True))
        except Exception as e:  # pydicom raises many types for a damaged header
            raise DataError(f, case, f"cannot read the DICOM slice ({type(e).__name__}: {e})") from None

    def distinct(tag: str) -> set:
        return {str(getattr(h, tag, None)) for h in headers}

    for tag, what in (("SeriesInstanceUID", "series"), ("Rows", "slice heights"), ("Columns", "slice widths"),
                      ("PixelSpacing", "pixel spacings")):
        if len(distinct(tag)) > 1:
            raise DataError(folder, case, f"the slices are of {len(distinct(tag))} different {what} "
                                          f"({tag} {sorted(distinct(tag))[:3]}): one folder must hold one series")
    numbers = [getattr(h, "InstanceNumber", None) for h in headers]
    if None in numbers or len(set(numbers)) != len(numbers):
        raise DataError(folder, case, "every slice needs its own InstanceNumber (the stacking order)")
    if len(files) < 2:
        raise DataError(folder, case, "a 3D series needs at least two slices, found one")
    ordered = [h for _, h in sorted(zip(numbers, headers), key=lambda pair: int(pair[0]))]
    z = np.array([float(getattr(h, "ImagePositionPatient", (0, 0, i))[2]) for i, h in enumerate(ordered)])
    gaps = np.abs(np.diff(z))
    if not np.allclose(gaps, gaps.mean(), rtol=1e-3, atol=1e-4) or gaps.mean() == 0:
        raise DataError(folder, case, f"the slices are not evenly spaced (gaps {np.round(gaps, 3).tolist()[:6]} "
                                      f"along ImagePositionPatient z): the volume's spacing would be wrong")


class LoadDicomSeriesCased(MapTransform):
    """Checks the series' headers (:func:`check_dicom_series`), then reads it with MONAI's
    ``PydicomReader`` and the NIfTI mask with nibabel (:class:`~peftlab_medical.data.msd.LoadCased`)."""

    def __init__(self) -> None:
        super().__init__(keys=("image", "label"))
        with warnings.catch_warnings():  # LoadImage builds every MONAI reader; the GPU one warns when unusable
            warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
            self.load = LoadCased(image_reader=PydicomReader())

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        check_dicom_series(data["image"], data["id"])
        return self.load(data)


class DicomSeriesDataModule(MSDDataModule):
    """DICOM series images with NIfTI masks, listed in a CSV (see the module docstring).

    Why a subclass of :class:`MSDDataModule`: only where the cases come from and how an image is read
    differ; the split, transforms, crops, padding and ``affines`` are the same, so they are not copied.

    Args:
        manifest: the CSV (``image``, ``label``, optional ``id``).
        label_names: the classes, background first (at least two).
        The other arguments are :class:`MSDDataModule`'s (``crop_size``, ``orientation``, ``spacing``,
        ``intensity``, ``augment``, ``split_file``, ``cache``, ``batch_size``, ...).
    """

    def __init__(self, manifest: str, label_names: list[str], crop_size: list[int] = (32, 32, 32),
                 samples_per_volume: int = 1, pos_fraction: float = 0.5, orientation: str | None = None,
                 spacing: list[float] | None = None, intensity: str = "zscore", augment: bool = True,
                 split_file: str | None = None, cache: bool = False, batch_size: int = 2, **kwargs: Any) -> None:
        if len(label_names) < 2:
            raise ValueError(f"label_names needs the background and at least one class, got {label_names}")
        super().__init__(root=str(Path(manifest).parent), crop_size=crop_size, samples_per_volume=samples_per_volume,
                         pos_fraction=pos_fraction, orientation=orientation, spacing=spacing, intensity=intensity,
                         augment=augment, split_file=split_file, cache=cache, batch_size=batch_size, **kwargs)
        self.manifest, self.class_names = Path(manifest), [str(n) for n in label_names]

    def load_data(self) -> LoadedData:
        cases = read_dicom_series_manifest(self.manifest)
        ids = self._split_ids([c["id"] for c in cases])
        by_id = {c["id"]: c for c in cases}
        splits = {s: [by_id[i] for i in ids[s]] for s in ("train", "val", "test")}
        names = self.class_names
        return LoadedData(splits, LabelVocabulary(len(names), names, {n: i for i, n in enumerate(names)}))

    def load_transforms(self) -> list[Any]:
        return [LoadDicomSeriesCased(), CheckCased(self.num_outputs)]
