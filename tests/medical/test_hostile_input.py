"""Hostile input for the medical image readers (property-based, hypothesis).

Every call either loads what was written (split sizes, labels and pixels
checked against what the test wrote) or raises ``peftlab.data.DataError`` whose
message names the file, then the record (the npz key, ``{split}_{i}``, the
record id, ``row{N}`` or ``line N``), then the problem. Anything else (a bare
``KeyError``, ``IndexError``, MONAI's ``RuntimeError``, PIL / pydicom / nibabel
errors, ...) fails the test, and so does an example that runs longer than
``tests.hostile.EXAMPLE_SECONDS`` (a hang).

Inputs: MedMNIST npz files with missing or misspelt keys, wrong dtypes and
shapes, NaN pixels and out-of-range labels; PNG / JPEG / DICOM / NIfTI files
that are truncated, have flipped or zeroed bytes, are random bytes or empty, or
have unusable channel counts; CSV manifests with odd characters, non-UTF-8
bytes, empty cells, huge lines and wrong field counts; class folders with
Unicode names. The hypothesis profile (``tests/conftest.py``) is derandomized,
so every run draws the same examples.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from peftlab_medical.data import ImageCSVDataModule, ImageFolderDataModule, MedMNISTDataModule

from tests.hostile import SOME, assert_names, attempt, examples, line_of, scratch

pytestmark = pytest.mark.hostile  # the property tests: `make fuzz` runs them with fresh, many more examples


def scaled(array: np.ndarray) -> torch.Tensor:
    """What ScaleIntensity makes of an image: min-max scaled to [0, 1] (a constant image: zeros)."""
    x = torch.as_tensor(np.asarray(array, dtype=np.float64))
    span = x.max() - x.min()
    return ((x - x.min()) / span if span > 0 else torch.zeros_like(x)).float()


def items(dm: Any, split: str) -> list[dict]:
    data = dm.dataset(split, dm.splits[split])
    return [data[i] for i in range(len(data))]


# ---- MedMNIST npz ----------------------------------------------------------------------------

SPLITS = ("train", "val", "test")
KEYS = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]


@st.composite
def medmnist_arrays(draw: Any) -> tuple[dict[str, np.ndarray], str]:
    """A valid MedMNIST layout (tiny) and its task kind."""
    kind = draw(st.sampled_from(["binary", "multiclass", "multilabel"]))
    h, w = draw(st.integers(2, 7)), draw(st.integers(2, 7))
    rgb = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in SPLITS:
        n = draw(st.integers(1, 3), label=f"{split} size")
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, h, w, 3) if rgb else (n, h, w)).astype(np.uint8)
        shape, high = {"binary": ((n, 1), 2), "multiclass": ((n, 1), 4), "multilabel": ((n, 3), 2)}[kind]
        arrays[f"{split}_labels"] = rng.integers(0, high, shape).astype(np.uint8)
    return arrays, kind


NPZ_EDITS = ["none", "drop_key", "rename_key", "image_dtype", "label_dtype", "image_shape", "label_shape",
             "nan_pixel", "label_value", "junk_file"]
NUMERIC = ["int16", "int64", "float16", "float32", "float64", "bool"]
NOT_NUMERIC = ["complex64", "<U3", "object"]


@settings(max_examples=examples(150))
@given(case=medmnist_arrays(), edit=st.sampled_from(NPZ_EDITS), key=st.sampled_from(KEYS),
       explicit_task=st.booleans(), data=st.data())
def test_medmnist_npz_one_hostile_array(case, edit, key, explicit_task, data):
    """One array is missing, misnamed, or of a wrong dtype / shape / value: the file loads exactly
    what the arrays say, or the DataError names the file and that key (or its record)."""
    arrays, kind = case
    split = key.split("_")[0]
    want: tuple[Any, str] | None = None  # (record, problem): a DataError; None: must load
    array = arrays[key]
    if edit == "drop_key":
        del arrays[key]
        want = (None, f"missing key '{key}'")
    elif edit == "rename_key":
        typo = data.draw(st.sampled_from([key.upper(), key[:-1], key + " ", "x_" + key, key.replace("_", "-")]))
        arrays[typo] = arrays.pop(key)
        want = (None, f"missing key '{key}'")
    elif edit == "image_dtype" and key.endswith("images") or edit == "label_dtype" and key.endswith("labels"):
        dtype = data.draw(st.sampled_from(NUMERIC + NOT_NUMERIC), label="dtype")
        arrays[key] = array.astype(dtype)
        if dtype == "object":
            want = (key, "cannot read the array")
        elif dtype in NOT_NUMERIC:
            want = (key, f"have dtype {re.escape(str(np.dtype(dtype)))}")
    elif edit == "image_shape" and key.endswith("images"):
        rgb = array.ndim == 4
        n, h = array.shape[0], array.shape[1]
        change = data.draw(st.sampled_from(["one_image", "add_axis", "side", "no_images", "five_axes", "rgba"]))
        if change == "one_image":  # the N axis is gone
            arrays[key] = array[0]
            want = ((key if not rgb else SOME), "")  # an RGB (H, W, 3) reads as H images of (W, 3): still an error
        elif change == "add_axis":  # (N, H, W) -> (N, H, W, 1): fine alone, but not beside other layouts
            arrays[key] = array[..., None] if not rgb else array[..., None]
            if rgb:
                want = (key, "images have shape")
            else:
                want = (SOME, "every split needs the same layout")
        elif change == "side":
            side = data.draw(st.sampled_from([0, 1]), label="side")
            arrays[key] = array[:, :side] if data.draw(st.booleans(), label="rows") else array[:, :, :side]
            want = (key, "too small")
        elif change == "no_images":
            arrays[key] = array[:0]
            want = (key, "holds no images")
        elif change == "five_axes":
            arrays[key] = array.reshape(array.shape + (1,) * (5 - array.ndim))
            want = (key, "images have shape")
        else:
            arrays[key] = np.zeros((n, h, array.shape[2], 4), np.uint8)
            want = (key, "4 channels on the last axis")
    elif edit == "label_shape" and key.endswith("labels"):
        change = data.draw(st.sampled_from(["flat", "three_axes", "scalar", "one_more_row", "one_more_column"]))
        if change == "flat" and array.shape[1] == 1:
            arrays[key] = array[:, 0]
        elif change in ("flat", "three_axes"):
            arrays[key] = array[..., None]
            want = (key, "labels have shape")
        elif change == "scalar":
            arrays[key] = np.array(1, np.uint8)
            want = (key, r"labels have shape \(\)")
        elif change == "one_more_row":
            arrays[key] = np.concatenate([array, array[:1]])
            want = (key, "labels for")
        else:
            arrays[key] = np.concatenate([array, array[:, :1]], axis=1)
            want = (None, f"label columns differ between splits: .*'{split}': {array.shape[1] + 1}")
    elif edit == "nan_pixel" and key.endswith("images"):
        j = data.draw(st.integers(0, len(array) - 1), label="image")
        arrays[key] = array.astype(np.float32)
        arrays[key].reshape(len(array), -1)[j, 0] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        want = (f"{split}_{j}", "non-finite pixel values")
    elif edit == "label_value" and key.endswith("labels"):
        j = data.draw(st.integers(0, len(array) - 1), label="row")
        value = data.draw(st.sampled_from([-1, 0.5, 1e12, 2, 7]), label="value")
        arrays[key] = array.astype(np.float64 if value in (0.5, 1e12) else np.int64)
        arrays[key][j, 0] = value
        if value == 0.5:
            want = (f"{key}[{j}]", "not a whole number")
        elif value == 1e12:
            want = (f"{key}[{j}]", "not a class index")
        elif value == -1 or kind == "multilabel" or (kind == "binary" and explicit_task):
            want = (f"{split}_{j}", f"label .*{value}.* in {key} is outside the classes")
    with scratch() as folder:
        path = folder / "m.npz"
        np.savez(path, **arrays)
        if edit == "junk_file":
            raw = path.read_bytes()
            junk = data.draw(st.sampled_from(["empty", "cut", "random", "npy"]), label="junk")
            if junk == "npy":
                path.write_bytes(b"")
                with open(path, "wb") as f:
                    np.save(f, arrays["train_images"])
            else:
                cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
                path.write_bytes({"empty": b"", "cut": raw[:cut],
                                  "random": np.random.default_rng(cut).bytes(cut + 1)}[junk])
            want = (SOME if junk == "cut" else None, "")
        task = kind if explicit_task else None
        dm, error = attempt(lambda: MedMNISTDataModule(str(path), task_type=task, augment=False).splits)
        if error is None and want is None:
            dm = MedMNISTDataModule(str(path), task_type=task, augment=False)
            check_medmnist(dm, arrays, kind, explicit_task)
            return
        if want is None:
            raise AssertionError(f"expected {path} to load, got: {error}")
        record, problem = want
        if edit == "junk_file" and junk == "cut" and error is not None and error.record is None:
            record = None  # a cut zip fails as a whole (BadZipFile) or in one member (its key)
        assert_names(error, path, record, problem)
        if record is SOME and edit not in ("junk_file",):
            assert split in str(error), f"{error} does not name the {split!r} split of {key}"


def check_medmnist(dm: MedMNISTDataModule, arrays: dict[str, np.ndarray], kind: str, explicit_task: bool) -> None:
    """The DataModule holds exactly the arrays: sizes, task, labels and (scaled) pixels."""
    labels = {s: np.asarray(arrays[f"{s}_labels"]).reshape(len(arrays[f"{s}_images"]), -1).astype(np.int64)
              for s in SPLITS}
    width = labels["train"].shape[1]
    top = max(int(v.max()) for v in labels.values()) + 1
    task = kind if explicit_task else ("multilabel" if width > 1 else "binary" if top <= 2 else "multiclass")
    assert dm.task_type == task
    assert dm.num_outputs == (1 if task == "binary" else width if task == "multilabel" else top)
    assert dm.split_sizes() == {s: len(arrays[f"{s}_images"]) for s in SPLITS}
    for split in SPLITS:
        got = items(dm, split)
        batch = dm.collate(got)
        want_labels = labels[split] if task == "multilabel" else labels[split][:, 0]
        assert batch["labels"].tolist() == want_labels.tolist()
        assert batch["ids"] == [f"{split}_{i}" for i in range(len(got))]
        for item, image in zip(got, arrays[f"{split}_images"]):
            image = np.asarray(image)
            expected = scaled(image)  # jointly over all channels, like ScaleIntensity
            if image.ndim == 3:  # channel-last -> channel-first
                expected = expected.permute(2, 0, 1)
            else:
                expected = expected[None]
            assert item["image"].dtype == torch.float32 and item["image"].shape == expected.shape
            assert torch.allclose(item["image"], expected, atol=1e-6)


# ---- image files: PNG, JPEG, DICOM, NIfTI ----------------------------------------------------

def encode_png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def encode_jpeg(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def encode_nifti(pixels: np.ndarray, folder: Path, gz: bool) -> bytes:
    path = folder / ("tmp.nii.gz" if gz else "tmp.nii")
    nib.save(nib.Nifti1Image(pixels, np.eye(4)), path)
    data = path.read_bytes()
    path.unlink()
    return data


def encode_dicom(pixels: np.ndarray, folder: Path) -> bytes:
    """A tiny CT slice (16-bit, rescale intercept -1024), as pydicom writes it."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / "tmp.dcm"
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    path.unlink()
    return data


FORMATS = ["png-gray", "png-16bit", "png-rgb", "png-palette", "png-gray-alpha", "png-rgba", "jpg-gray", "jpg-rgb",
           "dcm", "nii", "nii.gz"]


def image_file(fmt: str, h: int, w: int, seed: int, folder: Path) -> tuple[str, bytes, torch.Tensor | None, str]:
    """``(suffix, file bytes, the channel-first float image a reader must return or None, problem)``;
    ``None``: the file is valid but unusable (its channel count), ``problem`` says why."""
    rng = np.random.default_rng(seed)
    gray = rng.integers(0, 256, (h, w)).astype(np.uint8)
    rgb = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    if fmt == "png-gray":
        return ".png", encode_png(gray), torch.as_tensor(gray, dtype=torch.float32)[None], ""
    if fmt == "png-16bit":
        deep = rng.integers(0, 65536, (h, w)).astype(np.uint16)
        return ".png", encode_png(deep), torch.as_tensor(deep.astype(np.float32))[None], ""
    if fmt == "png-rgb":
        return ".png", encode_png(rgb), torch.as_tensor(rgb, dtype=torch.float32).permute(2, 0, 1), ""
    if fmt == "png-palette":  # loads as the palette's colours, not as palette indices
        image = Image.fromarray(rgb).convert("P")
        out = io.BytesIO()
        image.save(out, format="PNG")
        colours = np.asarray(image.convert("RGB"))
        return ".png", out.getvalue(), torch.as_tensor(colours, dtype=torch.float32).permute(2, 0, 1), ""
    if fmt == "png-gray-alpha":
        return ".png", encode_png(np.stack([gray, gray], -1)), None, "image has 2 channels"
    if fmt == "png-rgba":
        return ".png", encode_png(np.concatenate([rgb, rgb[..., :1]], -1)), None, "image has 4 channels"
    if fmt.startswith("jpg"):
        data = encode_jpeg(gray if fmt == "jpg-gray" else rgb)
        decoded = torch.as_tensor(np.array(Image.open(io.BytesIO(data))), dtype=torch.float32)
        return ".jpg", data, decoded[None] if decoded.ndim == 2 else decoded.permute(2, 0, 1), ""
    if fmt == "dcm":
        raw = rng.integers(0, 4096, (h, w)).astype(np.uint16)
        return ".dcm", encode_dicom(raw, folder), torch.as_tensor(raw.astype(np.float32) - 1024)[None], ""
    volume = rng.normal(size=(h, w)).astype(np.float32)
    gz = fmt == "nii.gz"
    return ".nii.gz" if gz else ".nii", encode_nifti(volume, folder, gz), torch.as_tensor(volume)[None], ""


FILE_EDITS = ["none", "truncate", "flip_byte", "zero_bytes", "random_bytes", "empty", "text"]


@settings(max_examples=examples(120))
@given(fmt=st.sampled_from(FORMATS), edit=st.sampled_from(FILE_EDITS), h=st.integers(2, 9), w=st.integers(2, 9),
       seed=st.integers(0, 2**16), via=st.sampled_from(["folder", "manifest"]), resize=st.booleans(),
       data=st.data())
def test_image_file_corrupt_or_odd(fmt, edit, h, w, seed, via, resize, data):
    """A (possibly corrupt) file beside a good one: the good one loads exactly; the other loads
    (exactly, where the edit cannot have touched the pixels) or its DataError names the file and
    the record. With ``resize`` the whole train chain runs (resize, flip, rotation, zoom)."""
    with scratch() as folder:
        suffix, raw, expected, problem = image_file(fmt, h, w, seed, folder)
        cut = None
        if edit == "truncate":
            cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
            raw = raw[:cut]
        elif edit in ("flip_byte", "zero_bytes"):
            at = data.draw(st.integers(0, len(raw) - 1), label="at")
            bad = bytes(b ^ 0xFF for b in raw[at : at + 1]) if edit == "flip_byte" else b"\0" * 16
            raw = raw[:at] + bad + raw[at + len(bad) :]
        elif edit == "random_bytes":
            raw = np.random.default_rng(seed).bytes(data.draw(st.integers(1, 600), label="size"))
        elif edit == "empty":
            raw = b""
        elif edit == "text":
            raw = "this is a text file, not an image ü\n".encode()
        good_pixels = np.random.default_rng(seed + 1).integers(0, 256, (h, w)).astype(np.uint8)
        root = folder / "data"
        (root / "a").mkdir(parents=True)
        (root / "b").mkdir()
        odd = root / "a" / f"scan{suffix}"
        odd.write_bytes(raw)
        (root / "b" / "good.png").write_bytes(encode_png(good_pixels))
        options = dict(val_fraction=0.0, test_fraction=0.0, augment=resize, image_size=5 if resize else None,
                       flip_prob=1.0, rotate_prob=1.0, zoom_prob=1.0)
        if via == "folder":
            dm = ImageFolderDataModule(str(root), **options)
        else:
            (root / "m.csv").write_text(f"path,label\na/scan{suffix},a\nb/good.png,b\n")
            dm = ImageCSVDataModule(str(root / "m.csv"), **options)
        odd_id, good_id = f"a/scan{suffix}", "b/good.png"
        records = sorted(dm.splits["train"], key=lambda r: r.id)
        assert [r.id for r in records] == [odd_id, good_id] and [r.label for r in records] == [0, 1]
        dataset = dm.dataset("train", records)
        good = dataset[1]["image"]
        if resize:
            assert good.shape == (1, 5, 5) and torch.isfinite(good).all()
        else:
            assert torch.allclose(good, scaled(good_pixels)[None], atol=1e-6)
        item, error = attempt(lambda: dataset[0])
        if error is not None:
            assert_names(error, odd, odd_id)
            if edit == "none":
                assert expected is None and re.search(problem, error.problem), str(error)
            return
        image = item["image"]
        assert image.dtype == torch.float32 and image.ndim == 3 and image.shape[0] in (1, 3)
        assert min(image.shape[1:]) >= 2 and torch.isfinite(image).all()
        assert -1e-5 <= image.min() and image.max() <= 1 + 1e-5
        if resize:
            assert image.shape[1:] == (5, 5)
        elif edit == "none" or edit == "truncate":  # what loads from a cut file is the whole image
            assert expected is not None, f"{fmt} should have been refused: {problem}"
            assert image.shape == expected.shape
            assert torch.allclose(image, scaled(expected.numpy()), atol=1e-6)


def test_image_file_examples(tmp_path):
    """A few fixed cases of the property above, readable on their own."""
    root = tmp_path / "d"
    (root / "a").mkdir(parents=True)
    (root / "a" / "cut.png").write_bytes(encode_png(np.zeros((8, 8), np.uint8))[:40])
    (root / "a" / "thin.png").write_bytes(encode_png(np.zeros((1, 8), np.uint8)))
    nan = np.ones((4, 4), np.float32)
    nan[1, 2] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), root / "a" / "nan.nii.gz")
    header = encode_png(np.zeros((8, 8), np.uint8))  # a PNG that claims 100,000 x 100,000 pixels
    bomb = bytearray(header[:33])
    bomb[16:24] = (100_000).to_bytes(4, "big") * 2
    (root / "a" / "bomb.png").write_bytes(bytes(bomb) + header[33:])
    dm = ImageFolderDataModule(str(root), augment=False, val_fraction=0.0, test_fraction=0.0)
    records = sorted(dm.splits["train"], key=lambda r: r.id)
    data = dm.dataset("train", records)
    problems = {"a/bomb.png": "cannot read the image", "a/cut.png": "cannot read the image",
                "a/nan.nii.gz": r"non-finite pixel values \(NaN or inf\)",
                "a/thin.png": r"too small: shape \(1, 8\); every side needs at least 2 pixels"}
    for i, record in enumerate(records):
        _, error = attempt(lambda: data[i])
        assert_names(error, Path(record.image), record.id, problems[record.id])


# ---- CSV manifests ----------------------------------------------------------------------------

any_char = st.characters(codec="utf-8")  # every code point UTF-8 can write (no lone surrogates)
# file names: no "/" (a folder) or NUL (not in names), no surrounding whitespace (cells are stripped)
name_char = any_char.filter(lambda c: c not in "/\0")
file_names = st.text(name_char, min_size=1, max_size=12).filter(
    lambda s: s == s.strip() and s not in (".", "..") and len(s.encode()) < 200)
# class names sort numerically when all are integers: digit-like names ("²", "١", "-3") probe that
digit_like = st.text(st.sampled_from("0123456789-²³١٣"), min_size=1, max_size=3)
labels_text = st.one_of(st.text(any_char, min_size=1, max_size=6), digit_like).filter(lambda s: s.strip() == s and s)
SPLIT_VALUES = [("train", "train"), ("VAL", "val"), ("valid", "val"), ("validation", "val"), ("Test", "test")]
CSV_DIALECTS = [("\r\n", csv.QUOTE_MINIMAL), ("\n", csv.QUOTE_ALL)]  # a lone \r is quoted with \r\n only


@dataclass
class Manifest:
    rows: list[list[str]]  # path, label, split cells
    expected: list[tuple[str, str, str]]  # id, label name, split

    def encode(self, *, dialect: tuple[str, int], bom: bool, extra: dict[int, list[str]] | None = None
               ) -> tuple[bytes, list[int]]:
        out = io.StringIO(newline="")
        writer = csv.writer(out, lineterminator=dialect[0], quoting=dialect[1])
        writer.writerow(["path", "label", "split"])
        starts = []
        for i, row in enumerate(self.rows):
            starts.append(len(out.getvalue().encode()))
            writer.writerow((extra or {}).get(i, row))
        head = codecs.BOM_UTF8 if bom else b""
        return head + out.getvalue().encode(), [s + len(head) for s in starts]


@st.composite
def manifests(draw: Any) -> Manifest:
    n = draw(st.integers(1, 4))
    names = draw(st.lists(file_names, min_size=n, max_size=n, unique_by=str.casefold))
    suffixes = draw(st.lists(st.sampled_from([".png", ".PNG", ".Png"]), min_size=n, max_size=n))
    labels = draw(st.lists(labels_text, min_size=n, max_size=n))
    splits = draw(st.lists(st.sampled_from(SPLIT_VALUES), min_size=n, max_size=n))
    rows = [[f"img/{name}{suffix}", label, split[0]]
            for name, suffix, label, split in zip(names, suffixes, labels, splits)]
    return Manifest(rows, [(row[0], row[1], split[1]) for row, split in zip(rows, splits)])


def sorted_names(names: set[str]) -> list[str]:
    """Class order: numeric when every name is an ASCII integer, else by code point."""
    if all(re.fullmatch(r"-?[0-9]+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


MANIFEST_EDITS = ["none", "odd_char", "empty_cell", "bad_split", "non_utf8", "field_count", "duplicate",
                  "long_name", "huge_line", "truncate"]


@settings(max_examples=examples(120))
@given(manifest=manifests(), edit=st.sampled_from(MANIFEST_EDITS), dialect=st.sampled_from(CSV_DIALECTS),
       bom=st.booleans(), data=st.data())
def test_image_manifest_hostile_edit(manifest, edit, dialect, bom, data):
    """A manifest with Unicode file names and labels loads exactly (ids, labels, splits, pixels),
    or, after one hostile edit, its DataError names the CSV and the row."""
    i = data.draw(st.integers(0, len(manifest.rows) - 1), label="row")
    row = manifest.rows[i]
    extra: dict[int, list[str]] = {}
    want: tuple[Any, str] | None = None
    if edit == "odd_char":  # inside the path cell: names another (missing) file, or an unsupported type
        c = data.draw(any_char.filter(lambda c: c not in "\0/"), label="char")
        p = data.draw(st.integers(len("img/") + 1, len(row[0]) - len(".png")), label="position")
        row[0] = row[0][:p] + c + row[0][p:]
        want = (f"row{i + 1}", "does not exist")
    elif edit == "empty_cell":
        column = data.draw(st.sampled_from([0, 1]), label="column")
        row[column] = data.draw(st.sampled_from(["", " ", "\t"]), label="blank")
        want = (f"row{i + 1}", "empty 'path'" if column == 0 else "missing label in column 'label'")
    elif edit == "bad_split":
        text = data.draw(st.text(any_char, min_size=1, max_size=6), label="split")
        if text.strip().lower() in ("train", "val", "valid", "validation", "test"):
            edit = "none"
        else:
            row[2] = text
            want = (f"row{i + 1}", "unknown split")
    elif edit == "field_count":
        extra[i] = row + ["x"] if data.draw(st.booleans(), label="more") else row[:2]
        want = (f"row{i + 1}", "number of fields differs")
    elif edit == "duplicate":
        if len(manifest.rows) < 2:
            edit = "none"
        else:
            j = (i + 1) % len(manifest.rows)
            manifest.rows[j][0] = row[0]
            want = (f"row{j + 1}" if j > i else f"row{i + 1}", "duplicated id")
    elif edit == "long_name":  # one path component longer than the file system allows
        row[0] = "img/" + "x" * 300 + ".png"
        want = (f"row{i + 1}", "not a usable file name")
    elif edit == "huge_line":  # over the csv module's field size limit
        row[1] = "y" * 131_073
    with scratch() as folder:
        pixels = {}
        for k, (cell, _, _) in enumerate(manifest.expected):
            pixels[cell] = np.random.default_rng(k).integers(0, 256, (3, 4)).astype(np.uint8)
            target = folder / cell
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(encode_png(pixels[cell]))
        encoded, starts = manifest.encode(dialect=dialect, bom=bom, extra=extra)
        if edit == "non_utf8":
            encoded = encoded[: starts[i]] + b"\xe9" + encoded[starts[i] :]
            want = (f"line {line_of(encoded, starts[i])}", "not UTF-8 text")
        if edit == "truncate":
            encoded = encoded[: data.draw(st.integers(0, len(encoded) - 1), label="cut")]
        path = folder / "manifest.csv"
        path.write_bytes(encoded)
        dm, error = attempt(lambda: ImageCSVDataModule(str(path), augment=False, val_fraction=0.0,
                                                       test_fraction=0.0, split_column="split"))
        if edit == "truncate":
            if error is not None:
                assert_names(error, path, record=error.record)
            return
        if edit == "huge_line":
            assert_names(error, path, problem="field larger than field limit")
            assert re.fullmatch(r"line \d+", error.record), str(error)
            return
        if want is not None:
            assert_names(error, path, *want)
            return
        assert error is None, error
        names = sorted_names({label for _, label, _ in manifest.expected})
        if len(names) <= 2:
            assert dm.task_type == "binary"
        assert dm.label_names == names
        got = {r.id: (names[r.label], r.split) for recs in dm.splits.values() for r in recs}
        assert got == {cell: (label, split) for cell, label, split in manifest.expected}
        for split, recs in dm.splits.items():
            for record, item in zip(recs, items(dm, split)):
                assert torch.allclose(item["image"], scaled(pixels[record.id])[None], atol=1e-6)


# ---- class folders --------------------------------------------------------------------------

folder_names = st.one_of(st.text(name_char, min_size=1, max_size=8), digit_like).filter(
    lambda s: s not in (".", "..") and not s.startswith(".") and s.lower() not in (
        "train", "val", "valid", "validation", "test") and len(s.encode()) < 200)


@settings(max_examples=examples(40))
@given(classes=st.lists(folder_names, min_size=1, max_size=3, unique=True),
       files=st.lists(st.tuples(file_names, st.sampled_from([".png", ".jpg", ".txt", ".PNG"])), min_size=1,
                      max_size=4, unique_by=lambda t: (t[0] + t[1]).casefold()),
       nested=st.booleans())
def test_image_folder_with_unicode_names(classes, files, nested):
    """Class folders and files with any names: every image file (and no other file) is a record whose
    id is its path, whose label is its folder (sorted names); hidden and non-image files are skipped."""
    with scratch() as folder:
        root = folder / "data"
        expected = {}
        for c, name in enumerate(classes):
            target = root / name / ("deeper" if nested else "")
            target.mkdir(parents=True, exist_ok=True)
            (target / ".hidden.png").write_bytes(b"not looked at")
            kept = 0
            for stem, suffix in files:
                if stem.startswith("."):
                    continue
                path = target / f"{stem}{suffix}"
                if suffix == ".txt":
                    path.write_text("not an image")
                    continue
                path.write_bytes(encode_png(np.full((2, 2), c, np.uint8)))
                expected[path.relative_to(root).as_posix()] = name
                kept += 1
            if not kept:  # a class folder without images is an error naming the folder
                dm, error = attempt(ImageFolderDataModule, str(root))
                assert_names(error, root / name, None, "class folder has no image files")
                return
        dm, error = attempt(ImageFolderDataModule, str(root), val_fraction=0.0, test_fraction=0.0)
        assert error is None, error
        names = sorted_names(set(classes))
        assert dm.label_names == names
        assert {r.id: names[r.label] for r in dm.splits["train"]} == expected
