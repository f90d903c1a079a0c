"""One example per loader bug that the hostile-input property tests found
(commit e6ab64e), so that each stays fixed even where a property test's draws
would not meet it again (a re-introduced ``str.upper`` on non-ASCII letters
passed the 150-example FLIP property test).

Each test writes the concrete input that broke a loader and checks what the
loader does now: a ``DataError`` whose message names the file and the record
(``tests.hostile.assert_names``), or, where the input is valid, exactly what was
written. Each one fails on the code before that commit (checked by running this
file against it).

The bugs (reconstructed from the fixes in e6ab64e; a fix that covers several
readers counts once):

==  ========================================================================  ==========================================================
#   bug (before the fix)                                                      regression test
==  ========================================================================  ==========================================================
1   a text file that is not UTF-8 (latin-1 byte, UTF-16) raised a bare         test_regression_non_utf8_text_raised_unicode_decode_error
    ``UnicodeDecodeError`` (every CSV / FASTA / list reader)
2   a CSV field over the csv module's size limit raised a bare ``csv.Error``   test_regression_csv_field_over_the_limit_raised_csv_error
3   a CSV header naming a column twice silently used the later column         test_regression_repeated_header_column_hid_the_first
    (also `` path `` and ``path`` once the speech manifest strips names)
4   a file name the file system cannot look up (a 300-byte component) in a    test_regression_unusable_file_name_raised_os_error
    manifest, image CSV or list file raised a bare ``OSError``
5   non-ASCII whitespace inside a sequence (``str.split``) or around a FASTA  test_regression_non_ascii_whitespace_silently_dropped_from_sequences
    line (``str.strip``) was silently dropped
6   non-ASCII letters were upper-cased into residues (``"ſ".upper()`` is      test_regression_non_ascii_letter_accepted_by_upper
    ``"S"``, ``"ﬀ".upper()`` is ``"FF"``)
7   non-ASCII whitespace in a per-residue label string was silently dropped,  test_regression_token_label_lost_non_ascii_whitespace
    shifting the labels against the residues
8   a multilabel target made only of separators (``","``) became an empty     test_regression_multilabel_target_without_values_accepted
    label vector
9   class names that ``str.isdigit`` accepts but ``int`` refuses (``"²"``)    test_regression_superscript_digit_class_name_crashed_sorting
    crashed the numeric sort with a bare ``ValueError``
10  an image with a 1-pixel side broke RandZoom with a bare ``RuntimeError``  test_regression_one_pixel_image_side_broke_augmentation
11  NaN / infinite pixel values loaded silently (a NaN loss later)            test_regression_nan_pixels_loaded_silently
12  a MedMNIST label far outside any class range (``2**40``) was accepted     test_regression_huge_label_was_taken_as_a_class_count
    and made the inferred task a 2**40-class one
13  a MedMNIST split with no images raised a bare ``ValueError``              test_regression_empty_medmnist_split_raised_value_error
14  a 0-d MedMNIST label array raised a bare ``TypeError`` (``len()``)        test_regression_scalar_label_array_raised_type_error
15  a corrupt WAV header rate (1 Hz, 999 Hz, 2 GHz) was decoded: 1 Hz         test_regression_corrupt_wav_header_rate_was_decoded
    "upsampled" 400 frames to 6.4 million samples, 999 Hz ran out of memory
16  a rate that shares no usable factor with the target rate (44101 Hz)       test_regression_rate_without_common_factor_exhausted_memory
    made torchaudio build a 706M-tap filter (5.6 GB)
17  an FSDD name with a final newline (``0_jackson_0.wav\\n``) matched the     test_regression_fsdd_name_with_final_newline_accepted
    pattern (``re.match`` with ``$``)
==  ========================================================================  ==========================================================
"""

from __future__ import annotations

import codecs
import io
import resource
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from peftlab.data import DataError
from peftlab_medical.data import ImageCSVDataModule, MedMNISTDataModule
from peftlab_protein.data import read_fasta_with_labels, read_flip_csv, read_flip_fasta
from peftlab_speech.data import AudioCSVDataModule, SpeechCommandsDataModule, parse_fsdd_name

from tests.hostile import assert_names, attempt


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def wav(path: Path, header_rate: int = 8000, frames: int = 400) -> Path:
    """A 16-bit mono WAV whose header says ``header_rate`` (the samples are written at 8 kHz)."""
    out = io.BytesIO()
    sf.write(out, np.full((frames, 1), 0.1, np.float32), 8000, format="WAV", subtype="PCM_16")
    data = bytearray(out.getvalue())
    fmt = data.find(b"fmt ") + 8  # the fmt chunk's body: format, channels, rate, byte rate, ...
    struct.pack_into("<II", data, fmt + 4, header_rate, header_rate * 2)
    return write(path, bytes(data))


def png(path: Path, h: int, w: int) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.arange(h * w, dtype=np.uint8).reshape(h, w) * 7).save(path)
    return path


def medmnist(path: Path, **arrays: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    base = {f"{s}_images": rng.integers(0, 256, (n, 28, 28)).astype(np.uint8) for s, n in
            (("train", 4), ("val", 2), ("test", 2))}
    base |= {"train_labels": np.array([[0], [1], [0], [1]], np.uint8), "val_labels": np.array([[0], [1]], np.uint8),
             "test_labels": np.array([[0], [1]], np.uint8)}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **(base | arrays))
    return path


FLIP_HEADER = "sequence,target,set,validation\n"


# ---- 1-4: every text reader ------------------------------------------------------------------------

def test_regression_non_utf8_text_raised_unicode_decode_error(tmp_path):
    csv_path = write(tmp_path / "flip.csv", FLIP_HEADER.encode() + b"MKV,0.5,train,False\nMK\xe9V,0.1,test,False\n")
    _, error = attempt(read_flip_csv, csv_path)
    assert_names(error, csv_path, "line 3", r"not UTF-8 text: byte\(s\) E9 .* at column 3")
    fasta = write(tmp_path / "seqs.fasta", codecs.BOM_UTF16_LE + ">a TARGET=1 SET=train\nMKV\n".encode("utf-16-le"))
    _, error = attempt(read_flip_fasta, fasta)
    assert_names(error, fasta, "line 1", "UTF-16 text")
    manifest = write(tmp_path / "m.csv", b"path,label\naudio/a\xff.wav,yes\n")
    _, error = attempt(AudioCSVDataModule(path=str(manifest)).setup, "fit")
    assert_names(error, manifest, "line 2", "not UTF-8 text")


def test_regression_csv_field_over_the_limit_raised_csv_error(tmp_path):
    csv_path = write(tmp_path / "flip.csv", FLIP_HEADER + "MKV,0.5,train,False\n" + "M" * 131_073 + ",1,test,False\n")
    _, error = attempt(read_flip_csv, csv_path)
    assert_names(error, csv_path, "line 3", "malformed CSV: field larger than field limit")


def test_regression_repeated_header_column_hid_the_first(tmp_path):
    csv_path = write(tmp_path / "flip.csv", "sequence,target,set,target\nMKV,0.5,train,7\nMKL,0.1,test,8\n")
    _, error = attempt(read_flip_csv, csv_path)
    assert_names(error, csv_path, "line 1", r"the header names column\(s\) \['target'\] more than once")
    wav(tmp_path / "audio" / "a.wav")
    manifest = write(tmp_path / "m.csv", " path ,label,path\naudio/a.wav,yes,audio/a.wav\n")
    _, error = attempt(AudioCSVDataModule(path=str(manifest)).setup, "fit")
    assert_names(error, manifest, "line 1", r"column\(s\) \['path'\] more than once")


def test_regression_unusable_file_name_raised_os_error(tmp_path):
    long = "x" * 300  # one path component over the 255 bytes a file system allows
    (tmp_path / "audio").mkdir()  # (in a missing folder the lookup fails on the folder first)
    (tmp_path / "img").mkdir()
    manifest = write(tmp_path / "m.csv", f"path,label\naudio/{long}.wav,yes\n")
    _, error = attempt(AudioCSVDataModule(path=str(manifest)).setup, "fit")
    assert_names(error, manifest, "row1", "is not a usable file name")
    images = write(tmp_path / "images.csv", f"path,label\nimg/{long}.png,0\n")
    _, error = attempt(lambda: ImageCSVDataModule(path=str(images)).setup("fit"))  # (it reads the CSV at once)
    assert_names(error, images, "row1", "is not a usable file name")
    root = tmp_path / "commands"
    wav(root / "yes" / "a.wav")
    write(root / "validation_list.txt", f"yes/{long}.wav\n")
    write(root / "testing_list.txt", "")
    _, error = attempt(SpeechCommandsDataModule(path=str(root)).setup, "fit")
    assert_names(error, root / "validation_list.txt", "line 1", "is not a usable file name")


# ---- 5-8: protein sequences and labels --------------------------------------------------------------

def test_regression_non_ascii_whitespace_silently_dropped_from_sequences(tmp_path):
    csv_path = write(tmp_path / "flip.csv", FLIP_HEADER + "MK\u00a0TAY,0.5,train,False\n")
    _, error = attempt(read_flip_csv, csv_path)
    assert_names(error, csv_path, "row1", r"invalid residue '\\xa0' at position 3")
    fasta = write(tmp_path / "seqs.fasta", ">s1 TARGET=0.5 SET=train\nMKV\u2028\nLLA\n")
    _, error = attempt(read_flip_fasta, fasta)
    assert_names(error, fasta, "s1", r"invalid residue '\\u2028' at position 4")
    # ASCII whitespace is still layout, not residues
    assert [r.sequence for r in read_flip_csv(write(tmp_path / "ok.csv", FLIP_HEADER + "MK T\tAY,0.5,train,\n"))] \
        == ["MKTAY"]


def test_regression_non_ascii_letter_accepted_by_upper(tmp_path):
    csv_path = write(tmp_path / "flip.csv", FLIP_HEADER + "MKV,0.5,train,False\nmkſ,0.1,test,False\n")
    _, error = attempt(read_flip_csv, csv_path)
    assert_names(error, csv_path, "row2", "invalid residue 'ſ' at position 3")
    _, error = attempt(read_flip_csv, write(tmp_path / "x.csv", FLIP_HEADER + "Mﬀ,0.1,test,False\n"),
                       unknown_residues="map_to_x")  # not a letter to map to X either
    assert_names(error, tmp_path / "x.csv", "row1", "invalid residue 'ﬀ' at position 2")
    assert read_flip_csv(write(tmp_path / "ok.csv", FLIP_HEADER + "mkv,0.1,test,False\n"))[0].sequence == "MKV"


def test_regression_token_label_lost_non_ascii_whitespace(tmp_path):
    fasta = write(tmp_path / "seqs.fasta", ">p1\nMKV\n")
    labels = write(tmp_path / "labels.fasta", ">p1 SET=train\nC\u00a0CH\n")  # 4 label characters, 3 residues
    _, error = attempt(read_fasta_with_labels, fasta, labels, task_type="token_classification")
    assert_names(error, labels, "p1", "per-residue label string has 4 characters but the sequence has 3 residues")


def test_regression_multilabel_target_without_values_accepted(tmp_path):
    csv_path = write(tmp_path / "flip.csv", FLIP_HEADER + 'MKV,"0,1",train,False\nMKL,",",test,False\n')
    _, error = attempt(read_flip_csv, csv_path, task_type="multilabel")
    assert_names(error, csv_path, "row2", "multilabel target ',' holds no 0/1 values")


# ---- 9-14: medical images ------------------------------------------------------------------------------

def test_regression_superscript_digit_class_name_crashed_sorting(tmp_path):
    png(tmp_path / "img" / "a.png", 4, 4)
    png(tmp_path / "img" / "b.png", 4, 4)
    manifest = write(tmp_path / "images.csv", "path,label,split\nimg/a.png,1,train\nimg/b.png,²,train\n")
    dm = ImageCSVDataModule(path=str(manifest), val_fraction=0.0, test_fraction=0.0)
    _, error = attempt(dm.setup, "fit")
    assert error is None
    assert dm.label_names == ["1", "²"]  # not all ASCII integers: sorted as text


def test_regression_one_pixel_image_side_broke_augmentation(tmp_path):
    path = medmnist(tmp_path / "thin.npz", train_images=np.zeros((4, 1, 28), np.uint8))
    _, error = attempt(MedMNISTDataModule(path=str(path)).setup, "fit")
    assert_names(error, path, "train_images", r"spatial size \(1, 28\) is too small")
    png(tmp_path / "img" / "line.png", 1, 9)
    manifest = write(tmp_path / "images.csv", "path,label,split\nimg/line.png,0,train\n")
    dm = ImageCSVDataModule(path=str(manifest), val_fraction=0.0, test_fraction=0.0, augment=True)
    _, error = attempt(lambda: dm.dataset("train", dm.splits["train"])[0])
    assert_names(error, tmp_path / "img" / "line.png", "img/line.png", r"image is too small: shape \(1, 9\)")


def test_regression_nan_pixels_loaded_silently(tmp_path):
    images = np.random.default_rng(1).random((2, 28, 28)).astype(np.float32)
    images[1, 3, 4] = np.nan
    path = medmnist(tmp_path / "nan.npz", test_images=images)
    _, error = attempt(MedMNISTDataModule(path=str(path)).setup, "test")
    assert_names(error, path, "test_1", "image 1 of test_images has non-finite pixel values")


def test_regression_huge_label_was_taken_as_a_class_count(tmp_path):
    path = medmnist(tmp_path / "huge.npz", train_labels=np.array([[0], [1], [0], [2**40]], np.int64))
    _, error = attempt(MedMNISTDataModule, path=str(path))  # the task is inferred from the labels
    assert_names(error, path, "train_labels[3]", r"label \[1099511627776\] is not a class index")


def test_regression_empty_medmnist_split_raised_value_error(tmp_path):
    path = medmnist(tmp_path / "empty.npz", val_images=np.zeros((0, 28, 28), np.uint8),
                    val_labels=np.zeros((0, 1), np.uint8))
    _, error = attempt(MedMNISTDataModule(path=str(path)).setup, "fit")
    assert_names(error, path, "val_images", "holds no images .* the 'val' split is empty")


def test_regression_scalar_label_array_raised_type_error(tmp_path):
    path = medmnist(tmp_path / "scalar.npz", test_labels=np.array(1, np.uint8))
    _, error = attempt(MedMNISTDataModule, path=str(path))
    assert_names(error, path, "test_labels", r"labels have shape \(\); expected \(N, 1\) or \(N, K\)")


# ---- 15-17: audio ------------------------------------------------------------------------------------

@pytest.fixture
def memory_cap():
    """A 4 GiB address-space cap while the test runs: the old bugs allocate GBs; let them fail fast."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = 4 * 2**30 if hard == resource.RLIM_INFINITY else min(hard, 4 * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def audio_manifest(tmp_path: Path, header_rate: int) -> tuple[Path, Path]:
    audio = wav(tmp_path / "audio" / f"r{header_rate}.wav", header_rate)
    return write(tmp_path / "m.csv", f"path,label\naudio/{audio.name},yes\n"), audio


@pytest.mark.parametrize("header_rate", [1, 999, 800_000, 2_000_000_000])
def test_regression_corrupt_wav_header_rate_was_decoded(tmp_path, header_rate, memory_cap):
    manifest, audio = audio_manifest(tmp_path, header_rate)
    dm = AudioCSVDataModule(path=str(manifest), sample_rate=16000, max_seconds=None, augment=False,
                            check_files=False)  # not at setup: when the item is read
    _, error = attempt(lambda: dm.dataset("val", dm.splits["train"] + dm.splits["val"] + dm.splits["test"])[0])
    assert_names(error, audio, f"audio/{audio.name}", rf"sample rate {header_rate} Hz in the header is outside "
                                                      r"1000-768000 Hz")


def test_regression_rate_without_common_factor_exhausted_memory(tmp_path, memory_cap):
    manifest, audio = audio_manifest(tmp_path, 44101)
    _, error = attempt(AudioCSVDataModule(path=str(manifest), sample_rate=16000).setup, "fit")  # header check
    assert_names(error, audio, f"audio/{audio.name}", "sample rate 44101 Hz cannot be resampled to 16000 Hz: .*"
                                                      "706M-tap filter")


def test_regression_fsdd_name_with_final_newline_accepted(tmp_path):
    name = tmp_path / "0_jackson_0.wav\n"
    _, error = attempt(parse_fsdd_name, name)
    assert_names(error, name, None, "does not match the FSDD pattern")
    assert parse_fsdd_name(tmp_path / "0_jackson_0.wav") == ("0", "jackson", 0)


def test_the_regression_list_names_every_test_here():
    import sys

    module = sys.modules[__name__]
    tests = {n for n in vars(module) if n.startswith("test_regression_")}
    listed = [line.split()[-1] for line in module.__doc__.splitlines() if "test_regression_" in line]
    assert sorted(listed) == sorted(tests) and len(listed) == 17
    assert isinstance(DataError("f", "r", "p"), ValueError)


@pytest.mark.parametrize("profile,derandomized,count", [(None, True, 150), ("explore", False, 1500)])
def test_the_fuzz_profile_draws_fresh_examples_and_more_of_them(profile, derandomized, count):
    """`make test` draws the fixed examples; `make fuzz` (HYPOTHESIS_PROFILE=explore) fresh ones, 10x as many,
    and neither keeps an example database."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("HYPOTHESIS_PROFILE", "PEFTLAB_FUZZ_SCALE")}
    if profile:
        env["HYPOTHESIS_PROFILE"] = profile
    code = ("import tests.conftest; from hypothesis import settings; from tests.hostile import examples; "
            "s = settings.default; print(s.derandomize, s.database, examples(150))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert out == [str(derandomized), "None", str(count)]
