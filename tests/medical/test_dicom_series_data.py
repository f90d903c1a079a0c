"""DICOM series folders with NIfTI masks (DicomSeriesDataModule): tiny series written here with pydicom
(12 x 16 slices, PixelSpacing, SliceThickness, ImagePositionPatient, one SeriesInstanceUID) and masks
with nibabel; the volume's voxels and RAS affine as MONAI's PydicomReader reads them, the mask lined up
with it, located errors for broken folders and masks, and one tiny UNETR epoch through it."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from peftlab import PeftModule, build_method
from peftlab.errors import DataError
from peftlab_medical import MonaiUNETRBackbone
from peftlab_medical.data import DicomSeriesDataModule

ROWS, COLUMNS, SLICES = 12, 16, 6
ROW_SPACING, COLUMN_SPACING, SLICE_GAP = 0.8, 0.7, 2.5
ORIGIN = (-20.0, 10.0, 5.0)  # LPS, mm
#: what the series' affine must be in RAS (as NIfTI tools write it): axes (column, row, slice), x and y
#: negated from DICOM's LPS
RAS_AFFINE = np.array([[-COLUMN_SPACING, 0, 0, -ORIGIN[0]], [0, -ROW_SPACING, 0, -ORIGIN[1]],
                       [0, 0, SLICE_GAP, ORIGIN[2]], [0, 0, 0, 1]])


def pixels(seed: int, k: int, rows: int = ROWS) -> np.ndarray:
    return ((np.arange(rows * COLUMNS).reshape(rows, COLUMNS) * 7 + k * 100 + seed * 13) % 2000).astype(np.uint16)


def write_slice(folder: Path, k: int, seed: int, series: str, rows: int = ROWS, z: float | None = None) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(folder / f"slice{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    ds.SeriesInstanceUID, ds.InstanceNumber = series, k + 1
    ds.Rows, ds.Columns = rows, COLUMNS
    ds.PixelSpacing, ds.SliceThickness = [ROW_SPACING, COLUMN_SPACING], SLICE_GAP
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + SLICE_GAP * k if z is None else z]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels(seed, k, rows).tobytes()
    ds.save_as(folder / f"slice{k:03d}.dcm", enforce_file_format=True)


def mask(shape=(COLUMNS, ROWS, SLICES)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[3:9, 2:7, 1:4] = 1  # columns 3-8, rows 2-6, slices 1-3
    return m


def write_case(root: Path, name: str, seed: int, label_affine=RAS_AFFINE, label_shape=None) -> str:
    folder = root / name
    folder.mkdir(parents=True)
    series = generate_uid()
    for k in range(SLICES):
        write_slice(folder, k, seed, series)
    nib.save(nib.Nifti1Image(mask(label_shape or (COLUMNS, ROWS, SLICES)), label_affine), root / f"{name}_mask.nii.gz")
    return f"{name}/,{name}_mask.nii.gz"


def manifest(tmp_path: Path, n: int = 4, **odd) -> Path:
    root = tmp_path / "series"
    lines = ["image,label"] + [write_case(root, f"case{i}", i, **odd.get(str(i), {})) for i in range(n)]
    (root / "cases.csv").write_text("\n".join(lines) + "\n")
    return root / "cases.csv"


def data(path: Path, **kw) -> DicomSeriesDataModule:
    return DicomSeriesDataModule(**{"manifest": str(path), "label_names": ["background", "lesion"],
                                    "crop_size": [16, 16, 8], "val_fraction": 0.0, "test_fraction": 0.0,
                                    "batch_size": 1, "intensity": "minmax", **kw})


def test_series_loads_as_a_volume_with_its_voxels_and_affine_and_the_mask_lines_up(tmp_path):
    module = data(manifest(tmp_path, n=1), intensity="zscore")
    module.setup("fit")
    case = module.load_transforms()[0](dict(module.splits["train"][0]))  # read, before normalising
    image, label = case["image"], case["label"]
    assert tuple(image.shape) == (1, COLUMNS, ROWS, SLICES) and tuple(label.shape) == (1, COLUMNS, ROWS, SLICES)
    for k in range(SLICES):  # voxel (column i, row j, slice k) = pixel [j, i] of the k-th slice
        assert np.array_equal(image[0, :, :, k].numpy(), pixels(0, k).T.astype(np.float32))
    assert np.allclose(image.affine.numpy(), RAS_AFFINE, atol=1e-4)
    assert np.array_equal(label[0].numpy(), mask())
    batch = module.collate([module.dataset("train", module.splits["train"]).__getitem__(0)])
    assert batch["ids"] == ["case0"] and batch["labels"].sum() > 0  # a crop centred on or off the lesion


@pytest.mark.parametrize("odd,message", [
    ({"label_shape": (COLUMNS, ROWS, SLICES - 1)}, r"label shape \[1, 16, 12, 5\] does not fit image shape \[1, 16, 12, 6\]"),
    ({"label_affine": np.diag([0.7, 0.8, 2.5, 1.0])}, "label affine differs from the image's"),
])
def test_a_mask_that_does_not_fit_the_series_names_the_case(tmp_path, odd, message):
    with pytest.raises(DataError, match=message) as info:
        module = data(manifest(tmp_path, n=2, **{"1": odd}))
        module.setup("fit")
        for i in range(2):
            module.dataset("train", module.splits["train"]).__getitem__(i)
    assert info.value.record == "case1"


def break_folder(folder: Path, how: str) -> None:
    if how == "empty":
        for f in folder.iterdir():
            f.unlink()
    elif how == "two series":
        write_slice(folder, SLICES, 0, generate_uid())
    elif how == "slice sizes":
        write_slice(folder, 2, 0, str(pydicom.dcmread(folder / "slice000.dcm").SeriesInstanceUID), rows=10)
    elif how == "uneven":
        series = str(pydicom.dcmread(folder / "slice000.dcm").SeriesInstanceUID)
        write_slice(folder, 3, 0, series, z=ORIGIN[2] + SLICE_GAP * 3.5)


@pytest.mark.parametrize("how,message", [
    ("empty", "the series folder holds no DICOM files"),
    ("two series", "the slices are of 2 different series .*one folder must hold one series"),
    ("slice sizes", "the slices are of 2 different slice heights"),
    ("uneven", "the slices are not evenly spaced"),
])
def test_a_broken_series_folder_is_a_data_error_naming_it_and_the_case(tmp_path, how, message):
    path = manifest(tmp_path, n=2)
    break_folder(path.parent / "case1", how)
    module = data(path)
    module.setup("fit")
    loaded = module.dataset("train", module.splits["train"])
    with pytest.raises(DataError, match=message) as info:
        for i in range(2):
            loaded.__getitem__(i)
    assert info.value.record == "case1" and str(path.parent / "case1") in str(info.value)


def test_manifest_errors_name_the_file_and_case(tmp_path):
    path = manifest(tmp_path, n=1)
    path.write_text("image,label\ncase0/,missing.nii.gz\n")
    with pytest.raises(DataError, match="missing.nii.gz, record case0: the label file of row 2 does not exist"):
        data(path).setup("fit")
    path.write_text("image,label\ncase0_mask.nii.gz,case0_mask.nii.gz\n")
    with pytest.raises(DataError, match="must be a folder of DICOM slices"):
        data(path).setup("fit")
    path.write_text("folder,mask\n")
    with pytest.raises(DataError, match="needs a header with 'image'"):
        data(path).setup("fit")


def test_a_tiny_unetr_fits_one_epoch_on_dicom_series(tmp_path):
    module = data(manifest(tmp_path, n=4), val_fraction=0.25, crop_size=[16, 16, 16], batch_size=2)
    backbone = MonaiUNETRBackbone(img_size=[16, 16, 16], feature_size=4, hidden_size=24, mlp_dim=48, num_heads=2)
    model = PeftModule(backbone, build_method("lora", r=2), task_type="segmentation", num_outputs=module.num_outputs,
                       label_names=module.label_names)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)
    trainer.fit(model, datamodule=module)
    logged = trainer.callback_metrics
    assert {"train/loss", "val/dice", "val/nsd", "val/dice_per_class/lesion"} <= set(logged)
    assert 0.0 <= float(logged["val/dice"]) <= 1.0
