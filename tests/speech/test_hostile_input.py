"""Hostile input for the speech readers (property-based, hypothesis).

Every call either loads what was written (waveforms checked sample by sample
against what the test wrote; ids, labels, segments and splits record by
record) or raises ``peftlab.data.DataError`` whose message names the file,
then the record (the record id, ``row{N}`` or ``line N``), then the problem.
Anything else (libsndfile's ``RuntimeError``, ``UnicodeDecodeError``,
``OSError``, ``struct.error``, ...) fails the test, and so does an example
that runs longer than ``tests.hostile.EXAMPLE_SECONDS`` (a hang, or a corrupt header's
sample rate sending the resampler into a multi-GB filter).

Inputs: WAV files whose header fields (chunk sizes, format tag, channels,
sample rate, byte rate, block align, bits per sample, data size) hold hostile
values, truncated / bit-flipped / random / empty WAV and FLAC files; CSV
manifests with odd characters, non-UTF-8 bytes, bad segment times, empty
cells, huge lines and wrong field counts; FSDD folders with file names that
almost match the pattern; Speech Commands list files with hostile lines. The
hypothesis profile (``tests/conftest.py``) is derandomized, so every run draws
the same examples.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peftlab_speech.data import (
    AudioCSVDataModule,
    FSDDDataModule,
    SpeechCommandsDataModule,
    audio_info,
    load_audio,
)

from tests.hostile import assert_names, attempt, examples, line_of, scratch

pytestmark = pytest.mark.hostile  # the property tests: `make fuzz` runs them with fresh, many more examples


def wav_bytes(data: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    out = io.BytesIO()
    sf.write(out, data, rate, format=fmt, subtype=subtype)
    return out.getvalue()


# ---- WAV / FLAC files ------------------------------------------------------------------------

# subtype -> quantization step of a sample (what the written float can lose)
SUBTYPES = {"PCM_U8": 2**-7, "PCM_16": 2**-15, "PCM_24": 2**-23, "PCM_32": 2**-31, "FLOAT": 0.0, "DOUBLE": 0.0}
FLAC_SUBTYPES = {"PCM_S8": 2**-7, "PCM_16": 2**-15, "PCM_24": 2**-23}
RATES = [8000, 11025, 16000, 22050, 44100, 48000]


@dataclass
class Clip:
    raw: bytes
    data: np.ndarray  # (frames, channels) float32 as written
    rate: int
    step: float  # quantization step
    fmt: str

    @property
    def mono(self) -> np.ndarray:
        return self.data.mean(axis=1)


@st.composite
def clips(draw: Any) -> Clip:
    fmt = draw(st.sampled_from(["WAV", "WAV", "WAV", "FLAC"]))
    subtypes = SUBTYPES if fmt == "WAV" else FLAC_SUBTYPES
    subtype = draw(st.sampled_from(sorted(subtypes)))
    frames, channels = draw(st.integers(1, 400)), draw(st.integers(1, 3))
    rate = draw(st.sampled_from(RATES))
    data = np.random.default_rng(draw(st.integers(0, 2**16))).uniform(-0.9, 0.9, (frames, channels))
    data = data.astype(np.float32)
    return Clip(wav_bytes(data, rate, subtype, fmt), data, rate, subtypes[subtype], fmt)


def wav_fields(raw: bytes) -> dict[str, tuple[int, str]]:
    """Offset and struct format of each WAV header field (the fmt and data chunks found by id)."""
    fmt, data = raw.index(b"fmt "), raw.index(b"data")
    return {"riff_size": (4, "<I"), "fmt_size": (fmt + 4, "<I"), "format_tag": (fmt + 8, "<H"),
            "channels": (fmt + 10, "<H"), "sample_rate": (fmt + 12, "<I"), "byte_rate": (fmt + 16, "<I"),
            "block_align": (fmt + 20, "<H"), "bits": (fmt + 22, "<H"), "data_size": (data + 4, "<I")}


FIELD_VALUES = {"<H": st.one_of(st.sampled_from([0, 1, 2, 3, 7, 8, 16, 24, 32, 64, 255, 1024, 65534, 65535]),
                                st.integers(0, 2**16 - 1)),
                "<I": st.one_of(st.sampled_from([0, 1, 7, 999, 1000, 8000, 11127, 44101, 768000, 768001,
                                                 2**31 - 1, 2**32 - 1]), st.integers(0, 2**32 - 1))}
WAV_EDITS = ["none", "field", "field", "field", "truncate", "flip", "zero", "random", "empty", "append"]


@settings(max_examples=examples(200))
@given(clip=clips(), edit=st.sampled_from(WAV_EDITS), via=st.sampled_from(["load", "manifest"]),
       resample=st.booleans(), max_seconds=st.sampled_from([None, None, 0.004]), data=st.data())
def test_audio_file_hostile_bytes(clip, edit, via, resample, max_seconds, data):
    """A WAV/FLAC file with hostile header values or bytes: it decodes to what was written (exactly,
    where the edit cannot have touched the samples) or its DataError names the file and the record."""
    raw = clip.raw
    if edit == "field" and clip.fmt == "WAV":
        name, (offset, form) = data.draw(st.sampled_from(sorted(wav_fields(raw).items())), label="field")
        value = data.draw(FIELD_VALUES[form], label=name)
        raw = raw[:offset] + struct.pack(form, value) + raw[offset + struct.calcsize(form) :]
    elif edit == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")]
    elif edit in ("flip", "zero", "field"):
        at = data.draw(st.integers(0, len(raw) - 1), label="at")
        bad = bytes([raw[at] ^ 0xFF]) if edit != "zero" else b"\0" * 8
        raw = raw[:at] + bad + raw[at + len(bad) :]
    elif edit == "random":
        raw = np.random.default_rng(len(raw)).bytes(data.draw(st.integers(1, 200), label="size"))
    elif edit == "empty":
        raw = b""
    elif edit == "append":  # junk after the data chunk
        raw = raw + np.random.default_rng(len(raw)).bytes(data.draw(st.integers(1, 64), label="size"))
    target = 16000 if resample else clip.rate
    with scratch() as folder:
        suffix = ".wav" if clip.fmt == "WAV" else ".flac"
        path = folder / f"clip{suffix}"
        path.write_bytes(raw)
        if via == "load":
            record = "clip"
            waveform, error = attempt(load_audio, path, sample_rate=target, max_seconds=max_seconds,
                                      record=record)
            info, info_error = attempt(audio_info, path, record=record)
            if info_error is not None:
                assert_names(info_error, path, record)
        else:  # a manifest row naming it: the header is checked when the splits load
            record = f"clip{suffix}"
            (folder / "good.wav").write_bytes(wav_bytes(np.zeros((80, 1), np.float32), 8000))
            (folder / "m.csv").write_text(f"path,label\n{record},odd\ngood.wav,fine\n")
            dm = AudioCSVDataModule(path=str(folder / "m.csv"), sample_rate=target, max_seconds=max_seconds,
                                    augment=False, val_fraction=0.0, test_fraction=0.0)
            _, error = attempt(dm.setup, "fit")
            waveform = None
            if error is None:
                records = sorted(dm.splits["train"], key=lambda r: r.id)
                assert [r.id for r in records] == [record, "good.wav"]
                length = dm.record_length(records[0])
                waveform, error = attempt(lambda: dm.dataset("val", records)[0]["waveform"])
                if error is None:
                    assert waveform.numel() == length  # the header's promise, after resampling and crop
        if error is not None:
            assert_names(error, path, record)
            assert error.problem
            if edit == "none":
                raise AssertionError(f"a valid file was refused: {error}")
            return
        assert waveform.dtype == torch.float32 and waveform.ndim == 1 and waveform.numel() >= 1
        assert torch.isfinite(waveform).all()
        if max_seconds is not None:
            assert waveform.numel() <= max(1, round(max_seconds * target))
        tolerance = 2 * clip.step + 1e-6
        if edit in ("none", "append"):  # the samples are untouched
            frames = len(clip.data)
            if resample:
                full = math.ceil(frames * target / clip.rate)
                window = None if max_seconds is None else max(1, round(max_seconds * target))
                assert waveform.numel() == (full if window is None else min(full, window))
            else:
                expected = torch.from_numpy(clip.mono)
                if max_seconds is not None:  # the centre window
                    window = max(1, round(max_seconds * target))
                    if frames > window:
                        start = (frames - window) // 2
                        expected = expected[start : start + window]
                torch.testing.assert_close(waveform, expected, atol=tolerance, rtol=0)
        elif edit == "truncate" and not resample and max_seconds is None and clip.fmt == "WAV":
            # what loads from a cut WAV is the start of what was written
            expected = torch.from_numpy(clip.mono)[: waveform.numel()]
            assert waveform.numel() <= len(clip.data)
            torch.testing.assert_close(waveform, expected, atol=tolerance, rtol=0)


def test_audio_file_examples(tmp_path):
    """A few fixed cases of the property above, readable on their own."""
    raw = wav_bytes(np.zeros((800, 1), np.float32), 8000)
    offset = wav_fields(raw)["sample_rate"][0]
    cases = {2**31 - 1: r"sample rate 2147483647 Hz in the header is outside 1000-768000 Hz",
             7: "sample rate 7 Hz in the header is outside",
             44101: r"cannot be resampled to 16000 Hz: .*706M-tap filter",
             11127: "cannot be resampled to 16000 Hz"}
    for rate, problem in cases.items():
        path = tmp_path / f"r{rate}.wav"
        path.write_bytes(raw[:offset] + struct.pack("<I", rate) + raw[offset + 4 :])
        _, error = attempt(load_audio, path, sample_rate=16000, record="x")
        assert_names(error, path, "x", problem)
    fine = tmp_path / "r44100.wav"
    fine.write_bytes(raw[:offset] + struct.pack("<I", 44100) + raw[offset + 4 :])
    assert load_audio(fine, sample_rate=16000).shape == (291,)  # 800 frames at 44.1 kHz -> 16 kHz
    assert load_audio(fine, sample_rate=44100).shape == (800,)  # no resampling: any sane rate goes


# ---- CSV manifests ----------------------------------------------------------------------------

any_char = st.characters(codec="utf-8")  # every code point UTF-8 can write (no lone surrogates)
name_char = any_char.filter(lambda c: c not in "/\0")
file_names = st.text(name_char, min_size=1, max_size=10).filter(
    lambda s: s == s.strip() and s not in (".", "..") and len(s.encode()) < 200)
labels_text = st.text(any_char, min_size=1, max_size=6).filter(lambda s: s.strip() == s)
SPLIT_VALUES = [("train", "train"), ("dev", "val"), ("VALID", "val"), ("validation", "val"), ("Test", "test"),
                ("", None)]
CSV_DIALECTS = [("\r\n", csv.QUOTE_MINIMAL), ("\n", csv.QUOTE_ALL)]  # a lone \r is quoted with \r\n only
FRAMES, RATE = 400, 8000  # every manifest file: 0.05 s


def seconds_of(text: str) -> tuple[float | None, str | None]:
    """``(value, None)`` or ``(None, problem)`` for a start/end cell."""
    if not text.strip():
        return None, None
    try:
        value = float(text.strip())
    except ValueError:
        return None, "is not a number of seconds"
    if not math.isfinite(value) or value < 0:
        return None, "must be a finite number >= 0"
    return value, None


MANIFEST_EDITS = ["none", "none", "odd_char", "empty_cell", "times", "bad_split", "non_utf8", "field_count",
                  "duplicate", "long_name", "huge_line", "truncate"]


@settings(max_examples=examples(150))
@given(names=st.lists(file_names, min_size=1, max_size=4, unique=True),
       labels=st.lists(labels_text, min_size=4, max_size=4), splits=st.lists(st.sampled_from(SPLIT_VALUES),
                                                                            min_size=4, max_size=4),
       edit=st.sampled_from(MANIFEST_EDITS), dialect=st.sampled_from(CSV_DIALECTS), bom=st.booleans(),
       padded_header=st.booleans(), data=st.data())
def test_audio_manifest_hostile_edit(names, labels, splits, edit, dialect, bom, padded_header, data):
    """A manifest with Unicode file names and labels loads exactly (ids, labels, segments, splits,
    samples), or, after one hostile edit, its DataError names the CSV and the row (or, for a segment
    outside its file, the audio file and the record)."""
    n = len(names)
    # either every row is unmarked (an empty split cell: a seeded split) or every row is marked
    if data.draw(st.booleans(), label="unmarked"):
        splits = [("", None)] * n
    else:
        splits = [s if s[1] is not None else ("train", "train") for s in splits[:n]]
    rows = [[f"audio/{name}.wav", labels[k], "", "", splits[k][0]] for k, name in enumerate(names)]
    i = data.draw(st.integers(0, n - 1), label="row")
    extra: dict[int, list[str]] = {}
    want: tuple[Any, str] | None = None
    segment = (None, None)
    if edit == "odd_char":
        c = data.draw(name_char, label="char")
        cell = rows[i][0]
        p = data.draw(st.integers(len("audio/") + 1, len(cell) - len(".wav")), label="position")
        new = cell[:p] + c + cell[p:]
        if new in {r[0] for r in rows}:
            edit = "none"
        else:
            rows[i][0] = new
            want = (f"row{i + 1}", "not found")
    elif edit == "empty_cell":
        column = data.draw(st.sampled_from([0, 1]), label="column")
        rows[i][column] = data.draw(st.sampled_from(["", " ", "\t"]), label="blank")
        want = (f"row{i + 1}", "empty path" if column == 0 else "empty label")
    elif edit == "times":
        text = st.one_of(st.sampled_from(["", "0", "0.01", "0.02", "0.05", "0.06", "-1", "nan", "inf", "1e400"]),
                         st.floats(0, 0.07).map(repr), st.text(any_char, max_size=5))
        start, end = data.draw(text, label="start"), data.draw(text, label="end")
        rows[i][2], rows[i][3] = start, end
        (a, pa), (b, pb) = seconds_of(start), seconds_of(end)
        if pa:
            want = (f"row{i + 1}", f"start .*{pa}")
        elif pb:
            want = (f"row{i + 1}", f"end .*{pb}")
        elif a is not None and b is not None and b <= a:
            want = (f"row{i + 1}", "is not after start")
        else:
            first = 0 if a is None else round(a * RATE)
            stop = FRAMES if b is None else round(b * RATE)
            if first < 0 or stop <= first or first >= FRAMES or stop > FRAMES:
                want = ("audio", "lies outside the file")  # named by the audio file, at setup
            segment = (a, b)
    elif edit == "bad_split":
        text = data.draw(st.text(any_char, min_size=1, max_size=6).filter(str.strip), label="split")
        if text.strip().lower() in ("train", "val", "valid", "validation", "dev", "test"):
            edit = "none"
        else:
            rows[i][4] = text
            want = (f"row{i + 1}", "unknown split value")
    elif edit == "field_count":
        extra[i] = rows[i] + ["x"] if data.draw(st.booleans(), label="more") else rows[i][:3]
        want = (f"row{i + 1}", "number of fields differs")
    elif edit == "duplicate":
        if n < 2:
            edit = "none"
        else:  # the same file and segment twice: its id repeats
            j = (i + 1) % n
            rows[j][0] = rows[i][0]
            rows[i][2] = rows[j][2] = "0.01"
            want = (f"row{max(i, j) + 1}", "duplicated id")
    elif edit == "long_name":
        rows[i][0] = "audio/" + "x" * 300 + ".wav"
        want = (f"row{i + 1}", "not a usable file name")
    elif edit == "huge_line":
        rows[i][1] = "y" * 131_073
    with scratch() as folder:
        audio = {}
        for k, name in enumerate(names):
            audio[name] = np.random.default_rng(k).uniform(-0.5, 0.5, (FRAMES, 1)).astype(np.float32)
            target = folder / "audio" / f"{name}.wav"
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(wav_bytes(audio[name], RATE, "FLOAT"))
        out = io.StringIO(newline="")
        writer = csv.writer(out, lineterminator=dialect[0], quoting=dialect[1])
        header = ["path", "label", "start", "end", "split"]
        writer.writerow([f" {c} " for c in header] if padded_header else header)  # names are stripped
        starts = []
        for k, row in enumerate(rows):
            starts.append(len(out.getvalue().encode()))
            writer.writerow(extra.get(k, row))
        encoded = (codecs.BOM_UTF8 if bom else b"") + out.getvalue().encode()
        starts = [s + (3 if bom else 0) for s in starts]
        if edit == "non_utf8":
            encoded = encoded[: starts[i]] + b"\xe9" + encoded[starts[i] :]
            want = (f"line {line_of(encoded, starts[i])}", "not UTF-8 text")
        if edit == "truncate":
            encoded = encoded[: data.draw(st.integers(0, len(encoded) - 1), label="cut")]
        path = folder / "m.csv"
        path.write_bytes(encoded)
        dm = AudioCSVDataModule(path=str(path), sample_rate=RATE, max_seconds=None, augment=False,
                                val_fraction=0.0, test_fraction=0.0)
        _, error = attempt(dm.setup, "fit")
        if edit == "truncate":
            if error is not None:
                assert_names(error, Path(error.path), record=error.record)
                assert error.path in (str(path), *(str(folder / r[0]) for r in rows))
            return
        if edit == "huge_line":
            assert_names(error, path, problem="field larger than field limit")
            assert re.fullmatch(r"line \d+", error.record), str(error)
            return
        if want is not None:
            record, problem = want
            if record == "audio":
                assert_names(error, folder / rows[i][0], rows[i][0], problem)
            else:
                assert_names(error, path, record, problem)
            return
        assert error is None, error
        names_sorted = sorted(set(labels[:n]))
        assert dm.label_names == names_sorted
        got = {r.id: r for recs in dm.splits.values() for r in recs}
        split_of = {r.id: split for split, recs in dm.splits.items() for r in recs}
        assert set(got) == {r[0] for r in rows}
        for k, name in enumerate(names):
            record = got[rows[k][0]]
            assert names_sorted[record.label] == labels[k]
            assert record.split == splits[k][1]  # as written (None: unmarked)
            # the split it is in: the marked one, or for unmarked rows the seeded split, which with val
            # and test fractions of 0 puts every row in train
            assert split_of[record.id] == (splits[k][1] or "train")
            if k == i:
                assert (record.start, record.end) == segment
            samples = audio[name][:, 0]
            first = 0 if record.start is None else round(record.start * RATE)
            stop = FRAMES if record.end is None else round(record.end * RATE)
            waveform = dm.dataset("val", [record])[0]["waveform"]
            torch.testing.assert_close(waveform, torch.from_numpy(samples[first:stop]), atol=0, rtol=0)


# ---- FSDD ----------------------------------------------------------------------------------------

def fsdd_parts(name: str) -> tuple[str, str, int] | None:
    """``(digit, speaker, take)`` of a valid FSDD name, written independently of the loader's regex."""
    if not name.endswith(".wav"):
        return None
    parts = name[: -len(".wav")].split("_")
    if len(parts) != 3:
        return None
    digit, speaker, take = parts
    ascii_digits, letters = "0123456789", "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    if len(digit) != 1 or digit not in ascii_digits:
        return None
    if not speaker or speaker[0] not in letters or any(c not in letters + ascii_digits + "-" for c in speaker):
        return None
    if not take or any(c not in ascii_digits for c in take):
        return None
    return digit, speaker, int(take)


valid_fsdd = st.builds(lambda d, s, t: f"{d}_{s}_{t}.wav", st.sampled_from("0123456789"),
                       st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,6}", fullmatch=True),
                       st.sampled_from(["0", "3", "4", "5", "07", "12", "49"]))
# names that almost match: Unicode digits, a final newline, wrong case or suffix, extra or missing parts
near_fsdd = st.one_of(
    valid_fsdd.map(lambda s: s + "\n"), valid_fsdd.map(lambda s: s.upper()), valid_fsdd.map(lambda s: s[:-4] + ".flac"),
    valid_fsdd.map(lambda s: "٣" + s[1:]), valid_fsdd.map(lambda s: s.replace("_", "__", 1)),
    valid_fsdd.map(lambda s: s.replace("_", "", 1)), valid_fsdd.map(lambda s: s[:-4] + "²" + ".wav"),
    st.text(name_char, min_size=1, max_size=10).filter(lambda s: not s.startswith(".")).map(lambda s: s + ".wav"))


@settings(max_examples=examples(60))
@given(valid=st.lists(valid_fsdd, min_size=1, max_size=5, unique=True), odd=st.lists(near_fsdd, max_size=1),
       task=st.sampled_from(["digit", "speaker"]), corrupt=st.booleans(), data=st.data())
def test_fsdd_file_names(valid, odd, task, corrupt, data):
    """FSDD recordings with names that almost match {digit}_{speaker}_{take}.wav: the valid ones load
    (ids, labels and the take split exactly), an odd name or a corrupt file is named in the DataError."""
    names = list(dict.fromkeys(valid + odd))
    with scratch() as folder:
        recordings = folder / "recordings"
        recordings.mkdir()
        (recordings / ".DS_Store").write_bytes(b"\0\1")  # hidden: skipped
        for name in names:
            (recordings / name).write_bytes(wav_bytes(np.zeros((40, 1), np.float32), 8000))
        broken = None
        if corrupt:
            broken = data.draw(st.sampled_from(names), label="corrupt")
            (recordings / broken).write_bytes(b"RIFF\x00\x00")
        dm = FSDDDataModule(path=str(folder), task=task, val_fraction=0.0)
        _, error = attempt(dm.setup, "fit")
        bad = [n for n in names if fsdd_parts(n) is None]
        if bad:
            assert_names(error, Path(error.path) if error else recordings, None, "does not match the FSDD pattern")
            assert Path(error.path).name in bad
            return
        if broken is not None:
            assert_names(error, recordings / broken, broken[: -len(".wav")], "unreadable audio")
            return
        assert error is None, error
        parts = {n[: -len(".wav")]: fsdd_parts(n) for n in names}
        got = {r.id: (dm.label_names[r.label], r.split) for recs in dm.splits.values() for r in recs}
        assert got == {stem: (digit if task == "digit" else speaker, "test" if take < 5 else "train")
                       for stem, (digit, speaker, take) in parts.items()}


# ---- Speech Commands list files -----------------------------------------------------------------

word_names = st.text(name_char.filter(lambda c: c not in "\\\r\n"), min_size=1, max_size=6).filter(
    lambda s: s == s.strip() and not s.startswith(("_", ".")) and len(s.encode()) < 100)
clip_names = st.text(name_char.filter(lambda c: c not in "\\\r\n"), min_size=1, max_size=6).filter(
    lambda s: s == s.strip() and not s.startswith(".") and len(s.encode()) < 100)
LIST_EDITS = ["none", "none", "odd_char", "non_utf8", "missing_file", "both_lists", "long_line", "whitespace"]


@settings(max_examples=examples(60))
@given(words=st.lists(word_names, min_size=1, max_size=3, unique=True),
       clips_per_word=st.lists(st.lists(clip_names, min_size=1, max_size=3, unique=True), min_size=3, max_size=3),
       edit=st.sampled_from(LIST_EDITS), data=st.data())
def test_speech_commands_list_files(words, clips_per_word, edit, data):
    """Word folders and clips with Unicode names, listed in validation/testing lists with hostile lines:
    the splits follow the lists exactly, or the DataError names the list file and the line."""
    with scratch() as folder:
        root = folder / "sc"
        ids = []
        for word, clip_list in zip(words, clips_per_word):
            for stem in clip_list:
                path = root / word / f"{stem}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(wav_bytes(np.full((160, 1), 0.1, np.float32), 16000))
                ids.append(f"{word}/{stem}.wav")
        listed = {"val": [], "test": []}
        for k, rel in enumerate(ids):
            split = data.draw(st.sampled_from(["train", "val", "test"]), label=f"split of {k}")
            if split != "train":
                listed[split].append(rel)
        lines = {s: [f"./{rel}" if k % 2 else rel for k, rel in enumerate(v)] for s, v in listed.items()}
        target = data.draw(st.sampled_from(["val", "test"]), label="list")
        want: tuple[Any, str] | None = None
        if edit == "odd_char" and lines[target]:
            k = data.draw(st.integers(0, len(lines[target]) - 1), label="line")
            c = data.draw(any_char.filter(lambda c: c not in "\r\n"), label="char")
            line = lines[target][k]
            p = data.draw(st.integers(line.index("/") + 2, len(line) - len(".wav")), label="position")
            new = line[:p] + c + line[p:]
            if new.strip().replace("\\", "/").removeprefix("./") not in ids:
                lines[target][k] = new
                want = (f"line {k + 1}", "listed file .* (not found|is not an audio file)")
        elif edit == "missing_file":
            lines[target].append(f"{words[0]}/no such clip.wav")
            want = (f"line {len(lines[target])}", "not found")
        elif edit == "both_lists" and listed["val"]:
            lines["test"].append(listed["val"][0])
            target = "test"
            want = (listed["val"][0], "also listed in")
        elif edit == "long_line":
            lines[target].append(f"{words[0]}/" + "x" * 300 + ".wav")
            want = (f"line {len(lines[target])}", "not a usable file name")
        elif edit == "whitespace":  # blank lines and padding are fine
            lines[target] = [f"  {line}\t" for line in lines[target]] + ["", "   "]
        files = {"val": root / "validation_list.txt", "test": root / "testing_list.txt"}
        encoded = {s: "".join(line + "\n" for line in v).encode() for s, v in lines.items()}
        if edit == "non_utf8" and lines[target]:
            k = data.draw(st.integers(0, len(lines[target]) - 1), label="line")
            at = sum(len(line.encode()) + 1 for line in lines[target][:k])
            encoded[target] = encoded[target][:at] + b"\xff" + encoded[target][at:]
            want = (f"line {k + 1}", "not UTF-8 text")
        for split, path in files.items():
            path.write_bytes(encoded[split])
        dm = SpeechCommandsDataModule(path=str(root), augment=False)
        _, error = attempt(dm.setup, "fit")
        if want is not None:
            assert_names(error, files[target], *want)
            return
        assert error is None, error
        got = {r.id: r.split for recs in dm.splits.values() for r in recs}
        expected = {rel: "train" for rel in ids}
        expected.update({rel: "val" for rel in listed["val"]})
        expected.update({rel: "test" for rel in listed["test"]})
        assert got == expected
        assert dm.label_names == sorted(words)
