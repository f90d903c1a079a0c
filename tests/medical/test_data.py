"""Medical image data: MedMNIST npz, class folders, CSV manifests, MONAI transforms and bad input.

Every test writes tiny files in the real formats (npz, PNG, JPEG, NIfTI, DICOM)
into ``tmp_path``; the real PneumoniaMNIST test runs when ``PEFTLAB_DATA`` is set.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import CacheDataset
from PIL import Image
from pydicom.data import get_testdata_file

from peftlab.data import DataError
from peftlab_medical.data import (
    ImageCSVDataModule,
    ImageFolderDataModule,
    LoadImageRecordd,
    MedicalImageDataModule,
    MedMNISTDataModule,
    infer_task_type,
)
from peftlab_medical.synthetic import SyntheticLesionDataModule, make_lesion_images

ALWAYS = dict(flip_prob=1.0, rotate_prob=1.0, zoom_prob=1.0)  # every augmentation on every train item


def raises_data_error(path: Path | str, problem: str):
    """``pytest.raises`` for a DataError whose message starts with ``path`` and mentions ``problem``."""
    return pytest.raises(DataError, match=f"^{re.escape(str(path))}.*{problem}")


def scaled(array: np.ndarray) -> torch.Tensor:
    """What ScaleIntensity makes of an image: min-max scaled to [0, 1], as float32."""
    x = torch.as_tensor(np.asarray(array), dtype=torch.float32)
    return (x - x.min()) / (x.max() - x.min())


def medmnist(tmp_path: Path, name: str = "m.npz", sizes=(8, 4, 4), shape=(28, 28), labels=None,
             dtype=np.uint8, seed: int = 0, **override) -> Path:
    """A MedMNIST-layout npz; ``labels(split, n, rng)`` makes each split's labels (default binary (n, 1))."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, *shape)).astype(dtype)
        arrays[f"{split}_labels"] = (labels(split, n, rng) if labels else (np.arange(n) % 2)[:, None]).astype(np.uint8)
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def gray(h: int = 20, w: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w)).astype(np.uint8)


def item(dm, split: str = "val", i: int = 0) -> dict:
    return dm.dataset(split, dm.splits[split])[i]


# ---- MedMNIST npz -----------------------------------------------------------------------

def test_medmnist_binary_items_batches_and_splits(tmp_path):
    path = medmnist(tmp_path, sizes=(12, 4, 6))
    dm = MedMNISTDataModule(str(path), batch_size=4)
    assert dm.task_type == "binary" and dm.num_outputs == 1 and dm.label_names is None
    assert dm.split_sizes() == {"train": 12, "val": 4, "test": 6}
    assert [r.id for r in dm.splits["val"]] == ["val_0", "val_1", "val_2", "val_3"]
    assert dm.group_by_length is False and dm.record_length(dm.splits["train"][0]) == 1

    raw = np.load(path)
    first = item(dm, "val", 1)
    assert set(first) == {"image", "label", "id"} and first["id"] == "val_1"
    assert type(first["image"]) is torch.Tensor  # a plain tensor, not a MONAI MetaTensor
    assert first["image"].dtype == torch.float32 and first["image"].shape == (1, 28, 28)
    assert first["image"].min() == 0 and first["image"].max() == 1
    assert torch.allclose(first["image"][0], scaled(raw["val_images"][1]), atol=1e-6)

    batch = dm.collate([item(dm, "test", i) for i in range(3)])
    assert batch["images"].shape == (3, 1, 28, 28) and batch["images"].dtype == torch.float32
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [0.0, 1.0, 0.0]
    assert batch["ids"] == ["test_0", "test_1", "test_2"]
    loaded = next(iter(dm.train_dataloader()))
    assert loaded["images"].shape == (4, 1, 28, 28) and loaded["labels"].shape == (4,)


def test_medmnist_multiclass_and_label_names(tmp_path):
    path = medmnist(tmp_path, labels=lambda s, n, rng: (np.arange(n) % 4)[:, None])
    dm = MedMNISTDataModule(str(path))
    assert dm.task_type == "multiclass" and dm.num_outputs == 4
    batch = dm.collate([item(dm, "train", i) for i in range(5)])
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [0, 1, 2, 3, 0]
    named = MedMNISTDataModule(str(path), label_names=["a", "b", "c", "d", "e"])  # a class absent from the data
    assert named.task_type == "multiclass" and named.num_outputs == 5 and named.label_names == ["a", "b", "c", "d", "e"]
    binary = MedMNISTDataModule(str(medmnist(tmp_path, "b.npz")), label_names=["normal", "pneumonia"])
    assert binary.task_type == "binary" and binary.num_outputs == 1 and binary.label_names == ["normal", "pneumonia"]


def test_medmnist_multilabel_chestmnist_layout(tmp_path):
    path = medmnist(tmp_path, labels=lambda s, n, rng: rng.integers(0, 2, size=(n, 14)))
    dm = MedMNISTDataModule(str(path))
    assert dm.task_type == "multilabel" and dm.num_outputs == 14
    batch = dm.collate([item(dm, "val", i) for i in range(4)])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (4, 14)
    assert batch["labels"].tolist() == np.load(path)["val_labels"].astype(float).tolist()
    with raises_data_error(path, "14 label columns but label_names has 2"):
        MedMNISTDataModule(str(path), label_names=["a", "b"]).splits


def test_medmnist_rgb_keeps_channel_order(tmp_path):
    path = medmnist(tmp_path, shape=(28, 28, 3))
    dm = MedMNISTDataModule(str(path), channels=3)
    image = item(dm, "val", 2)["image"]
    assert image.shape == (3, 28, 28)
    expected = scaled(np.load(path)["val_images"][2]).permute(2, 0, 1)  # scaled jointly over all channels
    assert torch.allclose(image, expected, atol=1e-6)
    with raises_data_error(path, "image has 3 channels \\(RGB\\) but channels=1"):
        MedMNISTDataModule(str(path), channels=1).splits


def test_medmnist_3d_volumes(tmp_path):
    path = medmnist(tmp_path, shape=(16, 16, 16), labels=lambda s, n, rng: (np.arange(n) % 3)[:, None])
    dm = MedMNISTDataModule(str(path), spatial_dims=3, batch_size=2)
    assert dm.task_type == "multiclass" and item(dm)["image"].shape == (1, 16, 16, 16)
    small = MedMNISTDataModule(str(path), spatial_dims=3, image_size=8, channels=3, augment=True, **ALWAYS)
    batch = next(iter(small.train_dataloader()))
    assert batch["images"].shape == (8, 3, 8, 8, 8) and batch["labels"].dtype == torch.long
    assert 0 <= batch["images"].min() and batch["images"].max() <= 1
    with raises_data_error(path, r"16 channels on the last axis \(3D volumes\? set spatial_dims=3\)"):
        MedMNISTDataModule(str(path), task_type="multiclass").splits


def test_resize_and_grayscale_to_three_channels(tmp_path):
    dm = MedMNISTDataModule(str(medmnist(tmp_path)), image_size=64, channels=3)
    image = item(dm)["image"]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    assert image.min() >= 0 and image.max() <= 1
    batch = dm.collate([item(dm, "val", i) for i in range(2)])
    assert batch["images"].shape == (2, 3, 64, 64)


def test_augmentation_only_on_train(tmp_path):
    path = str(medmnist(tmp_path))
    augmented = MedMNISTDataModule(path, augment=True, **ALWAYS)
    plain = MedMNISTDataModule(path, augment=False)
    never = MedMNISTDataModule(path, augment=True, flip_prob=0.0, rotate_prob=0.0, zoom_prob=0.0)
    raw = scaled(np.load(path)["train_images"][0])
    assert torch.allclose(item(plain, "train")["image"][0], raw, atol=1e-6)
    assert torch.equal(item(never, "train")["image"], item(plain, "train")["image"])
    changed = item(augmented, "train")["image"]
    assert changed.shape == (1, 28, 28) and not torch.allclose(changed[0], raw, atol=1e-3)
    assert 0 <= changed.min() and changed.max() <= 1 + 1e-6
    for split in ("val", "test"):  # eval splits are never augmented
        assert torch.equal(item(augmented, split)["image"], item(plain, split)["image"])
    # the augmentation is seeded: a fresh module with the same seed draws the same
    assert torch.equal(item(MedMNISTDataModule(path, **ALWAYS), "train")["image"], changed)
    assert not torch.equal(item(MedMNISTDataModule(path, seed=1, **ALWAYS), "train")["image"], changed)


def test_predicting_on_the_train_split_never_augments(tmp_path):
    path = str(medmnist(tmp_path))
    augmented = MedMNISTDataModule(path, augment=True, predict_split="train", batch_size=4, **ALWAYS)
    plain = MedMNISTDataModule(path, augment=False, predict_split="train", batch_size=4)
    for dm in (augmented, plain):
        dm.setup("predict")
    first = next(iter(augmented.predict_dataloader()))
    assert torch.equal(first["images"], next(iter(plain.predict_dataloader()))["images"])
    assert torch.equal(first["images"], next(iter(augmented.predict_dataloader()))["images"])  # and every time


def test_cache_on_and_off_give_identical_eval_items(tmp_path):
    path = str(medmnist(tmp_path))
    cached = MedMNISTDataModule(path, cache=True, image_size=32, channels=3)
    direct = MedMNISTDataModule(path, cache=False, image_size=32, channels=3)
    dataset = cached.dataset("val", cached.splits["val"])
    assert isinstance(dataset, CacheDataset)
    assert cached.dataset("val", cached.splits["val"]) is dataset  # filled once, reused by later loaders
    for split in ("val", "test"):
        for i in range(4):
            a, b = item(cached, split, i), item(direct, split, i)
            assert torch.equal(a["image"], b["image"]) and a["id"] == b["id"] and torch.equal(a["label"], b["label"])
    assert item(MedMNISTDataModule(path, cache=True, **ALWAYS), "train")["image"].shape == (1, 28, 28)


def test_worker_processes_give_the_same_eval_batches(tmp_path):
    path = str(medmnist(tmp_path))
    in_process = next(iter(MedMNISTDataModule(path, batch_size=4).val_dataloader()))
    in_worker = next(iter(MedMNISTDataModule(path, batch_size=4, num_workers=1).val_dataloader()))
    assert torch.equal(in_process["images"], in_worker["images"]) and in_process["ids"] == in_worker["ids"]


BAD_NPZ = [
    (dict(val_labels=None), r"missing key 'val_labels' \(the 'val' split\)"),
    (dict(test_images=None), "missing key 'test_images'"),
    (dict(train_images=np.full((8, 28, 28), "x")), "images have dtype <U1; expected a numeric"),
    (dict(train_images=np.zeros((8, 28), np.uint8)), r"images have shape \(8, 28\)"),
    (dict(train_images=np.zeros((8, 28, 28, 4), np.uint8)), "4 channels on the last axis"),
    (dict(train_labels=np.zeros((7, 1), np.uint8)), "7 labels for 8 images"),
    (dict(train_labels=np.full((8, 1), 0.5)), r"label \[0.5\] is not a whole number"),
]


@pytest.mark.parametrize(("override", "problem"), BAD_NPZ)
def test_bad_medmnist_npz(tmp_path, override, problem):
    path = medmnist(tmp_path, **override)
    with raises_data_error(path, problem):
        MedMNISTDataModule(str(path), task_type="binary").splits


def test_medmnist_labels_out_of_range_and_bad_files(tmp_path):
    labels = np.array([0, 1, 0, 2, 1, 0, 1, 0], np.uint8)[:, None]
    path = medmnist(tmp_path, train_labels=labels)
    with raises_data_error(f"{path}, record train_3", r"label 2 in train_labels is outside the classes: expected "
                                                      r"a class index 0..1"):
        MedMNISTDataModule(str(path), task_type="binary").splits
    with raises_data_error(f"{path}, record train_3", r"expected a class index 0..1 \(label_names \['no', 'yes'\]\)"):
        MedMNISTDataModule(str(path), label_names=["no", "yes"]).splits
    negative = medmnist(tmp_path, "neg.npz", train_labels=np.array([0, 1, -1, 0, 1, 0, 1, 0])[:, None].astype(int))
    with raises_data_error(f"{negative}, record train_2", "label -1"):
        MedMNISTDataModule(str(negative), task_type="multiclass").splits
    multi = medmnist(tmp_path, "ml.npz", labels=lambda s, n, rng: np.full((n, 3), 2))
    with raises_data_error(f"{multi}, record train_0", r"label \[2, 2, 2\].*expected 0 or 1 in every column"):
        MedMNISTDataModule(str(multi)).splits
    missing = tmp_path / "nope.npz"
    with raises_data_error(missing, "file not found"):
        MedMNISTDataModule(str(missing))  # inferring the task reads the labels at once
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    with raises_data_error(junk, "cannot read as a .npz archive"):
        MedMNISTDataModule(str(junk), task_type="binary").splits


# ---- files: PNG, JPEG, NIfTI, DICOM -----------------------------------------------------------

def test_every_file_format_loads_in_numpy_orientation(tmp_path):
    load = LoadImageRecordd()
    pixels = gray(20, 30)
    out = load({"image": str(png(tmp_path / "g.png", pixels)), "id": "g"})["image"]
    assert type(out) is torch.Tensor and out.shape == (1, 20, 30)  # rows, columns: not transposed
    assert torch.equal(out[0], torch.as_tensor(pixels, dtype=torch.float32))

    ramp = np.add.outer(np.arange(20) * 6, np.arange(30) * 4).astype(np.uint8)  # smooth: JPEG keeps it well
    rgb = np.stack([ramp, 255 - ramp, ramp // 2], axis=-1)
    out = load({"image": str(png(tmp_path / "c.jpg", rgb)), "id": "c"})["image"]
    assert out.shape == (3, 20, 30)  # JPEG is lossy: compare loosely, channel by channel
    assert (out - torch.as_tensor(rgb, dtype=torch.float32).permute(2, 0, 1)).abs().mean() < 4

    nib.save(nib.Nifti1Image(pixels.astype(np.float32), np.eye(4)), tmp_path / "g.nii.gz")
    out = load({"image": str(tmp_path / "g.nii.gz"), "id": "n"})["image"]
    assert torch.equal(out[0], torch.as_tensor(pixels, dtype=torch.float32))
    nib.save(nib.Nifti1Image(pixels[..., None].astype(np.int16), np.eye(4)), tmp_path / "slice.nii")
    assert load({"image": str(tmp_path / "slice.nii"), "id": "s"})["image"].shape == (1, 20, 30)  # (H, W, 1)

    volume = np.random.default_rng(1).random((6, 7, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "v.nii.gz")
    out = LoadImageRecordd(spatial_dims=3)({"image": str(tmp_path / "v.nii.gz"), "id": "v"})["image"]
    assert out.shape == (1, 6, 7, 8) and torch.allclose(out[0], torch.as_tensor(volume))
    with raises_data_error(f"{tmp_path / 'v.nii.gz'}, record v", r"3 spatial axes.*set spatial_dims=3"):
        load({"image": str(tmp_path / "v.nii.gz"), "id": "v"})


def test_dicom_ct_slice_loads_in_hounsfield_units(tmp_path):
    path = shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    dicom = pydicom.dcmread(path)
    hounsfield = dicom.pixel_array * float(dicom.RescaleSlope) + float(dicom.RescaleIntercept)
    out = LoadImageRecordd()({"image": str(path), "id": "ct"})["image"]
    assert out.shape == (1, 128, 128) and out.dtype == torch.float32
    assert torch.equal(out[0], torch.as_tensor(hounsfield, dtype=torch.float32))  # slope/intercept applied
    assert out.min() < -500 and out.max() > 1000 and out.std() > 100  # real CT intensities, not blank


def test_image_folder_with_every_format(tmp_path):
    root = tmp_path / "data"
    png(root / "b_normal" / "x1.png", gray(28, 28, 1))
    png(root / "b_normal" / "nested" / "x2.jpg", np.stack([gray(28, 28, 2)] * 3, -1))
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "b_normal" / "ct.dcm")
    (root / "a_lesion").mkdir()
    nib.save(nib.Nifti1Image(gray(28, 28, 3).astype(np.float32), np.eye(4)), root / "a_lesion" / "n.nii.gz")
    png(root / "a_lesion" / "y.png", gray(40, 30, 4))
    (root / "a_lesion" / "notes.txt").write_text("not an image")  # ignored
    (root / ".hidden").mkdir()
    png(root / ".hidden" / "z.png", gray())  # hidden folders are not classes
    dm = ImageFolderDataModule(str(root), image_size=32, channels=3, val_fraction=0, test_fraction=0)
    assert dm.task_type == "binary" and dm.label_names == ["a_lesion", "b_normal"] and dm.num_outputs == 1
    records = sorted(dm.splits["train"], key=lambda r: r.id)
    assert [(r.id, r.label) for r in records] == [("a_lesion/n.nii.gz", 0), ("a_lesion/y.png", 0),
                                                   ("b_normal/ct.dcm", 1), ("b_normal/nested/x2.jpg", 1),
                                                   ("b_normal/x1.png", 1)]
    data = dm.dataset("train", records)
    batch = dm.collate([data[i] for i in range(len(records))])
    assert batch["images"].shape == (5, 3, 32, 32) and batch["labels"].tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    low, high = batch["images"].amin(dim=(1, 2, 3)), batch["images"].amax(dim=(1, 2, 3))
    assert (low >= 0).all() and (high <= 1).all() and (high - low > 0.5).all()  # scaled, then resized (smoothed)
    assert batch["ids"] == [r.id for r in records]


def test_image_folder_split_folders_and_label_names(tmp_path):
    root = tmp_path / "xray"
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        for c, cls in enumerate(("NORMAL", "PNEUMONIA", "COVID")):
            for i in range(n):
                png(root / split / cls / f"{i}.png", gray(16, 16, seed=i + 10 * c))
    dm = ImageFolderDataModule(str(root), batch_size=4)
    assert dm.task_type == "multiclass" and dm.label_names == ["COVID", "NORMAL", "PNEUMONIA"]
    assert dm.split_sizes() == {"train": 18, "val": 6, "test": 9}
    assert all(r.id.startswith(f"{s}/") for s, recs in dm.splits.items() for r in recs)
    batch = next(iter(dm.val_dataloader()))
    assert batch["labels"].dtype == torch.long and batch["images"].shape == (4, 1, 16, 16)
    ordered = ImageFolderDataModule(str(root), label_names=["NORMAL", "PNEUMONIA", "COVID"])
    assert {r.id: r.label for r in ordered.splits["test"]}["test/COVID/0.png"] == 2
    with pytest.raises(DataError, match=f"^{re.escape(str(root))}/(train|val|test)/COVID: class folder 'COVID' "
                                        r"is not one of label_names \['NORMAL', 'PNEUMONIA'\]"):
        ImageFolderDataModule(str(root), task_type="multiclass", label_names=["NORMAL", "PNEUMONIA"]).splits

    shutil.rmtree(root / "test")  # no test/ folder: carved out of train
    carved = ImageFolderDataModule(str(root), test_fraction=0.5, seed=3)
    sizes = carved.split_sizes()
    assert sizes == {"train": 9, "val": 6, "test": 9}
    assert not {r.id for r in carved.splits["train"]} & {r.id for r in carved.splits["test"]}


def test_image_folder_seeded_split(tmp_path):
    root = tmp_path / "d"
    for i in range(20):
        png(root / ("pos" if i % 2 else "neg") / f"{i}.png", gray(8, 8, seed=i))
    ids = lambda dm: {s: [r.id for r in recs] for s, recs in dm.splits.items()}  # noqa: E731
    first = ids(ImageFolderDataModule(str(root), seed=7, val_fraction=0.2, test_fraction=0.1))
    assert first == ids(ImageFolderDataModule(str(root), seed=7, val_fraction=0.2, test_fraction=0.1))
    assert {s: len(v) for s, v in first.items()} == {"train": 14, "val": 4, "test": 2}
    assert sorted(sum(first.values(), [])) == sorted(f"{'pos' if i % 2 else 'neg'}/{i}.png" for i in range(20))
    assert first != ids(ImageFolderDataModule(str(root), seed=8, val_fraction=0.2, test_fraction=0.1))


def test_image_folder_layout_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "stray.png").write_bytes(b"")
    with raises_data_error(empty, "no class folders"):
        ImageFolderDataModule(str(empty))
    root = tmp_path / "one_empty"
    png(root / "a" / "1.png", gray())
    (root / "b").mkdir()
    (root / "b" / "readme.txt").write_text("no images here")
    with raises_data_error(root / "b", "class folder has no image files"):
        ImageFolderDataModule(str(root))
    mixed = tmp_path / "mixed"
    png(mixed / "train" / "a" / "1.png", gray())
    png(mixed / "b" / "1.png", gray())
    with raises_data_error(mixed, r"has split folders \['train'\] and other folders \['b'\]"):
        ImageFolderDataModule(str(mixed))
    no_classes = tmp_path / "no_classes"
    (no_classes / "train").mkdir(parents=True)
    with raises_data_error(no_classes / "train", "no class folders"):
        ImageFolderDataModule(str(no_classes))
    with raises_data_error(tmp_path / "missing", "folder not found"):
        ImageFolderDataModule(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="one label per image"):
        ImageFolderDataModule(str(root), task_type="multilabel")


def test_unreadable_and_wrong_channel_files_name_the_file(tmp_path):
    root = tmp_path / "d"
    good = png(root / "a" / "good.png", gray())
    png(root / "b" / "good.png", gray())
    dm = ImageFolderDataModule(str(root), val_fraction=0, test_fraction=0)
    records = sorted(dm.splits["train"], key=lambda r: r.id)
    data = dm.dataset("train", records)
    data[0]

    truncated = root / "a" / "good.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with raises_data_error(f"{truncated}, record a/good.png", "cannot read the image .*truncated"):
        data[0]
    with raises_data_error(truncated, "cannot read the image"):  # caching decodes while filling the cache
        ImageFolderDataModule(str(root), cache=True).train_dataloader()
    not_png = root / "b" / "good.png"
    not_png.write_text("this is text, not a PNG")
    with raises_data_error(not_png, "cannot read the image .*UnidentifiedImageError"):
        data[1]

    rgba = png(tmp_path / "rgba" / "c" / "four.png", np.zeros((8, 8, 4), np.uint8), mode="RGBA")
    with raises_data_error(f"{rgba}, record x", r"image has 4 channels \(RGBA or CMYK.*expected 1 \(grayscale\) or 3"):
        LoadImageRecordd()({"image": str(rgba), "id": "x"})
    rgb = png(tmp_path / "rgb.png", np.zeros((8, 8, 3), np.uint8))
    with raises_data_error(rgb, "image has 3 channels .RGB. but channels=1"):
        LoadImageRecordd(channels=1)({"image": str(rgb), "id": "x"})
    palette = png(tmp_path / "p.png", gray(8, 8)).with_name("p2.png")
    Image.fromarray(gray(8, 8)).convert("P").save(palette)
    assert LoadImageRecordd()({"image": str(palette), "id": "p"})["image"].shape == (3, 8, 8)  # pixel values

    in_worker = ImageFolderDataModule(str(root), val_fraction=0, test_fraction=0, num_workers=1, batch_size=2)
    with pytest.raises(Exception, match=re.escape(str(truncated)) + "|" + re.escape(str(not_png))):
        next(iter(in_worker.train_dataloader()))  # a worker re-raises it as RuntimeError with the message


def test_mixed_sizes_need_image_size(tmp_path):
    root = tmp_path / "d"
    png(root / "a" / "small.png", gray(16, 16))
    png(root / "a" / "large.png", gray(24, 20))
    dm = ImageFolderDataModule(str(root), val_fraction=0, test_fraction=0)
    data = dm.dataset("train", dm.splits["train"])
    with raises_data_error(str(root), r"image shape \(1, 16, 16\) differs .*set image_size"):
        dm.collate([data[0], data[1]])
    fixed = ImageFolderDataModule(str(root), image_size=12, val_fraction=0, test_fraction=0)
    data = fixed.dataset("train", fixed.splits["train"])
    assert fixed.collate([data[0], data[1]])["images"].shape == (2, 1, 12, 12)


# ---- CSV manifests ----------------------------------------------------------------------------

def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_csv_manifest_single_label_with_split_column(tmp_path):
    for i in range(8):
        png(tmp_path / "img" / f"{i}.png", gray(12, 12, seed=i))
    rows = [["path", "label", "split"]] + [[f"img/{i}.png", "pneumonia" if i % 2 else "normal",
                                            ["train", "train", "train", "train", "val", "valid", "test", "test"][i]]
                                           for i in range(8)]
    path = write_csv(tmp_path / "manifest.csv", rows)
    dm = ImageCSVDataModule(str(path), batch_size=2)
    assert dm.task_type == "binary" and dm.label_names == ["normal", "pneumonia"] and dm.num_outputs == 1
    assert {s: [r.id for r in recs] for s, recs in dm.splits.items()} == {
        "train": ["img/0.png", "img/1.png", "img/2.png", "img/3.png"], "val": ["img/4.png", "img/5.png"],
        "test": ["img/6.png", "img/7.png"]}
    assert dm.splits["val"][0].image == str(tmp_path / "img" / "4.png")  # relative to the CSV's folder
    batch = next(iter(dm.test_dataloader()))
    assert batch["labels"].tolist() == [0.0, 1.0] and batch["images"].shape == (2, 1, 12, 12)

    numeric = write_csv(tmp_path / "numeric.csv", [["path", "label"]] + [[f"img/{i}.png", str([2, 10, 1][i % 3])]
                                                                          for i in range(8)])
    classes = ImageCSVDataModule(str(numeric), val_fraction=0, test_fraction=0)
    assert classes.task_type == "multiclass" and classes.label_names == ["1", "2", "10"]  # numeric order
    assert [r.label for r in sorted(classes.splits["train"], key=lambda r: r.id)] == [1, 2, 0, 1, 2, 0, 1, 2]


def test_csv_manifest_multilabel(tmp_path):
    for i in range(6):
        png(tmp_path / f"{i}.png", gray(10, 10, seed=i))
    rows = [["file", "effusion", "nodule", "mass"]] + [[f"{i}.png", str(i % 2), str(i // 3), "0"] for i in range(6)]
    path = write_csv(tmp_path / "labels.csv", rows)
    dm = ImageCSVDataModule(str(path), image_column="file", label_columns=["effusion", "nodule", "mass"],
                            val_fraction=0, test_fraction=0)
    assert dm.task_type == "multilabel" and dm.num_outputs == 3 and dm.label_names == ["effusion", "nodule", "mass"]
    records = sorted(dm.splits["train"], key=lambda r: r.id)
    data = dm.dataset("train", records)
    batch = dm.collate([data[i] for i in range(6)])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (6, 3)
    assert batch["labels"].tolist() == [[i % 2, i // 3, 0] for i in range(6)]
    bad = write_csv(tmp_path / "bad.csv", rows[:3] + [["3.png", "yes", "0", "0"]])
    with raises_data_error(f"{bad}, record row3", "multilabel column 'effusion' must hold 0 or 1, got 'yes'"):
        ImageCSVDataModule(str(bad), image_column="file", label_columns=["effusion", "nodule", "mass"]).splits


def test_csv_ham10000_style_ids_root_and_suffix(tmp_path):
    for name in ("ISIC_0027419", "ISIC_0025030", "ISIC_0026769"):
        png(tmp_path / "images" / f"{name}.jpg", np.stack([gray(15, 20)] * 3, -1))
    rows = [["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"],
            ["HAM_0000118", "ISIC_0027419", "bkl", "histo", "80.0", "male", "scalp"],
            ["HAM_0000118", "ISIC_0025030", "bkl", "histo", "80.0", "male", "scalp"],
            ["HAM_0002730", "ISIC_0026769", "mel", "histo", "80.0", "male", "scalp"]]
    path = write_csv(tmp_path / "HAM10000_metadata.csv", rows)
    names = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    dm = ImageCSVDataModule(str(path), image_column="image_id", label_column="dx", id_column="image_id",
                            image_root="images", image_suffix=".jpg", label_names=names, channels=3,
                            image_size=16, val_fraction=0, test_fraction=0)
    assert dm.task_type == "multiclass" and dm.num_outputs == 7
    assert {r.id: r.label for r in dm.splits["train"]} == {"ISIC_0027419": 2, "ISIC_0025030": 2, "ISIC_0026769": 4}
    assert item(dm, "train")["image"].shape == (3, 16, 16)


def test_bad_manifests_name_csv_row_and_file(tmp_path):
    png(tmp_path / "a.png", gray())
    cases = [
        ([["path", "label"], ["a.png", "x"], ["gone.png", "y"]], "row2",
         f"image file {tmp_path / 'gone.png'} does not exist"),
        ([["path", "label"], ["a.png", "x"], ["a.bmp", "y"]], "row2", "unsupported type"),
        ([["path", "label"], ["a.png", ""]], "row1", "missing label in column 'label'"),
        ([["path", "label", "split"], ["a.png", "x", "holdout"]], "row1", "unknown split 'holdout'"),
        ([["path", "label"], ["a.png", "x"], ["a.png", "y"]], "row2", "duplicated id 'a.png' \\(also on row1\\)"),
    ]
    for i, (rows, record, problem) in enumerate(cases):
        path = write_csv(tmp_path / f"bad{i}.csv", rows)
        with raises_data_error(f"{path}, record {record}", problem):
            ImageCSVDataModule(str(path))
    path = write_csv(tmp_path / "cols.csv", [["image", "label"], ["a.png", "x"]])
    with raises_data_error(path, r"missing required column\(s\) \['path'\]"):
        ImageCSVDataModule(str(path))
    path = write_csv(tmp_path / "names.csv", [["path", "label"], ["a.png", "cat"]])
    with raises_data_error(f"{path}, record row1", r"label 'cat' is not one of label_names \['normal', 'pneumonia'\]"):
        ImageCSVDataModule(str(path), label_names=["normal", "pneumonia"]).splits
    with pytest.raises(ValueError, match="needs label_columns"):
        ImageCSVDataModule(str(path), task_type="multilabel")


# ---- synthetic task -----------------------------------------------------------------------

def test_synthetic_lesions_are_deterministic_and_learnable():
    images, labels = make_lesion_images(200, seed=5)
    again, _ = make_lesion_images(200, seed=5)
    assert images.shape == (200, 28, 28) and images.dtype == np.float32 and np.array_equal(images, again)
    assert not np.array_equal(images, make_lesion_images(200, seed=6)[0])
    assert labels.tolist() == [i % 2 for i in range(200)] and images.min() == 0 and images.max() == 1
    # the planted disc is the brightest 3x3 patch: a fixed threshold on it nearly separates the classes
    brightest = torch.nn.functional.avg_pool2d(torch.as_tensor(images)[:, None], 3, 1).amax(dim=(1, 2, 3))
    accuracy = ((brightest > 0.88).numpy() == labels.astype(bool)).mean()
    assert accuracy > 0.9


def test_synthetic_datamodule_splits_and_batches():
    dm = SyntheticLesionDataModule(num_images=100, seed=4, batch_size=8, channels=3, image_size=32)
    assert dm.split_sizes() == {"train": 80, "val": 10, "test": 10}
    assert dm.task_type == "binary" and dm.num_outputs == 1 and dm.label_names == ["normal", "lesion"]
    same = SyntheticLesionDataModule(num_images=100, seed=4)
    assert [r.id for r in dm.splits["test"]] == [r.id for r in same.splits["test"]]
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (8, 3, 32, 32) and batch["labels"].dtype == torch.float32
    assert set(batch["labels"].tolist()) <= {0.0, 1.0} and all(i.startswith("synthetic") for i in batch["ids"])


def test_task_inference():
    assert infer_task_type(2) == "binary" and infer_task_type(7) == "multiclass"
    assert infer_task_type(2, num_label_columns=14) == "multilabel"
    with pytest.raises(ValueError, match="image task_type"):
        MedicalImageDataModule(task_type="regression")
    with pytest.raises(ValueError, match="channels must be 1, 3 or None"):
        SyntheticLesionDataModule(channels=4)


# ---- real data ----------------------------------------------------------------------------

PNEUMONIAMNIST = {"train": 3882, "val": 524, "test": 624}


def test_real_pneumoniamnist():
    root = os.environ.get("PEFTLAB_DATA")
    if not root:
        pytest.skip("PEFTLAB_DATA is not set: the real PneumoniaMNIST data lives in ../shared/data")
    dm = MedMNISTDataModule(str(Path(root) / "pneumoniamnist" / "pneumoniamnist.npz"), batch_size=16)
    assert dm.task_type == "binary" and dm.num_outputs == 1
    assert dm.split_sizes() == PNEUMONIAMNIST
    batch = next(iter(dm.val_dataloader()))
    assert batch["images"].shape == (16, 1, 28, 28) and batch["labels"].shape == (16,)
    assert batch["images"].min() >= 0 and batch["images"].max() <= 1
    assert sorted({r.label for r in dm.splits["test"]}) == [0, 1]
