"""Speech data: decoding, resampling, crops, layouts, splits, augmentation, errors and FSDD."""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from peftlab.data import DataError
from peftlab_speech.data import (
    KWS12_LABELS,
    AudioAugmentation,
    AudioCSVDataModule,
    AudioRecord,
    FSDDDataModule,
    SpeechCommandsDataModule,
    collate_audio,
    load_audio,
)
from peftlab_speech.synthetic import SyntheticToneDataModule, make_tone_clip

SR = 16000


def sine(freq: float, seconds: float, sr: int, amplitude: float = 0.5, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def write_wav(path: Path, data: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def peak_hz(waveform: torch.Tensor, sr: int) -> float:
    spectrum = torch.fft.rfft(waveform.double()).abs()
    return float(spectrum.argmax()) * sr / waveform.numel()


def names_file(path: object, problem: str):
    """``pytest.raises`` for a DataError whose message starts with the file's path and states the problem."""
    return pytest.raises(DataError, match=f"^{re.escape(str(path))}.*: .*{problem}")


def ids(dm) -> dict[str, list[str]]:
    return {s: sorted(r.id for r in recs) for s, recs in dm.splits.items()}


# ---- decoding -------------------------------------------------------------------------

def test_8khz_int16_is_resampled_to_16khz_and_keeps_its_frequency(tmp_path):
    path = write_wav(tmp_path / "tone8k.wav", sine(1000, 0.5, 8000), sr=8000, subtype="PCM_16")
    waveform = load_audio(path, sample_rate=16000)
    assert waveform.dtype == torch.float32 and waveform.shape == (8000,)  # 4000 frames at 8 kHz -> 8000
    assert peak_hz(waveform, 16000) == pytest.approx(1000, abs=2)
    assert waveform.abs().max() == pytest.approx(0.5, abs=0.02)  # int16 scaled to [-1, 1), level kept
    assert load_audio(path, sample_rate=8000).shape == (4000,)  # no resampling at the native rate


def test_stereo_float_is_down_mixed_to_the_mean_of_channels(tmp_path):
    left, right = sine(440, 0.25, SR, 0.6), sine(1500, 0.25, SR, 0.3, phase=1.0)
    stereo = np.stack([left, right], axis=1)
    for name, subtype in (("s.wav", "FLOAT"), ("s.flac", "PCM_24")):
        path = write_wav(tmp_path / name, stereo, subtype=subtype)
        waveform = load_audio(path)
        assert waveform.shape == (4000,)
        atol = 1e-6 if subtype == "FLOAT" else 1e-5
        torch.testing.assert_close(waveform, torch.from_numpy((left + right) / 2), atol=atol, rtol=0)


def test_segment_and_crops(tmp_path):
    data = np.linspace(-0.9, 0.9, 2 * SR, dtype=np.float32)  # a ramp: the position of each sample is visible
    path = write_wav(tmp_path / "ramp.wav", data, subtype="FLOAT")
    full = torch.from_numpy(data)
    torch.testing.assert_close(load_audio(path, start=0.5, end=1.25), full[8000:20000])
    torch.testing.assert_close(load_audio(path, start=1.5), full[24000:])
    torch.testing.assert_close(load_audio(path, max_seconds=0.5, crop="center"), full[12000:20000])
    torch.testing.assert_close(load_audio(path, max_seconds=0.5, crop="start"), full[:8000])
    torch.testing.assert_close(load_audio(path, start=1.0, max_seconds=0.5, crop="center"), full[20000:28000])
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(5):
        window = load_audio(path, max_seconds=0.5, crop="random", generator=g)
        start = int(torch.argmin((full - window[0]).abs()))
        torch.testing.assert_close(window, full[start : start + 8000])
        starts.add(start)
    assert len(starts) > 1
    assert load_audio(path, max_seconds=5.0).shape == (2 * SR,)  # shorter than max_seconds: kept whole


def test_collate_pads_with_zeros_and_reports_lengths():
    items = [{"waveform": torch.ones(5), "label": 2, "id": "a"},
             {"waveform": torch.full((3,), -0.5), "label": 0, "id": "b"}]
    batch = collate_audio(items)
    assert batch["waveforms"].dtype == torch.float32 and batch["waveforms"].shape == (2, 5)
    assert batch["waveforms"][1].tolist() == [-0.5, -0.5, -0.5, 0.0, 0.0]
    assert batch["lengths"].dtype == torch.long and batch["lengths"].tolist() == [5, 3]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [2, 0]
    assert batch["ids"] == ["a", "b"]


# ---- Speech Commands ------------------------------------------------------------------

WORDS = {"yes": 4, "no": 4, "up": 3, "marvin": 3}  # word -> files (marvin is not a KWS-12 command)
VAL = ["yes/s1_nohash_0.wav", "no/s1_nohash_0.wav", "marvin/s1_nohash_0.wav"]
TEST = ["yes/s2_nohash_0.wav", "no/s2_nohash_0.wav", "up/s2_nohash_0.wav"]


@pytest.fixture
def speech_commands(tmp_path) -> Path:
    root = tmp_path / "speech_commands"
    rng = np.random.default_rng(0)
    for w, (word, count) in enumerate(WORDS.items()):
        for k in range(count):
            seconds = 1.0 if k % 2 == 0 else 0.75  # some clips shorter than 1 s
            write_wav(root / word / f"s{k}_nohash_0.wav", sine(300 + 100 * w, seconds, SR, 0.3))
    for name in ("white_noise", "pink_noise"):  # 10 s: the 10 % val/test stretches hold a 1 s crop
        write_wav(root / "_background_noise_" / f"{name}.wav", (rng.standard_normal(10 * SR) * 0.1).astype(np.float32))
    (root / "_background_noise_" / "README.md").write_text("not audio")
    (root / "validation_list.txt").write_text("\n".join(VAL) + "\n")
    (root / "testing_list.txt").write_text("\n".join(TEST) + "\n\n")
    (root / "LICENSE").write_text("CC BY 4.0")
    return root


def test_speech_commands_splits_from_list_files(speech_commands):
    dm = SpeechCommandsDataModule(path=str(speech_commands))
    assert dm.task_type == "multiclass"
    assert dm.label_names == ["marvin", "no", "up", "yes"] and dm.num_outputs == 4  # no _background_noise_
    split_ids = ids(dm)
    assert split_ids["val"] == sorted(VAL) and split_ids["test"] == sorted(TEST)
    everything = {f"{w}/s{k}_nohash_0.wav" for w, n in WORDS.items() for k in range(n)}
    assert set(split_ids["train"]) == everything - set(VAL) - set(TEST)
    record = next(r for r in dm.splits["val"] if r.id == "marvin/s1_nohash_0.wav")
    assert record.label == 0 and Path(record.path) == speech_commands / "marvin" / "s1_nohash_0.wav"


def test_speech_commands_keyword_spotting_12(speech_commands):
    dm = SpeechCommandsDataModule(path=str(speech_commands), keyword_spotting_12=True, seed=1)
    names = dm.label_names
    assert names == list(KWS12_LABELS) and len(names) == 12
    assert names[:10] == ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
    by_id = {r.id: names[r.label] for recs in dm.splits.values() for r in recs}
    assert {by_id[f"marvin/s{k}_nohash_0.wav"] for k in range(3)} == {"_unknown_"}
    assert by_id["yes/s0_nohash_0.wav"] == "yes"
    # _silence_: as many per split as the average command-word class of that split
    # (mean over the 3 command words present: yes, no, up)
    commands = {"train": 4 + 4 + 3 - 5, "val": 2, "test": 3}  # 11 command files minus val/test ones
    for split, n_commands in commands.items():
        silence = [r for r in dm.splits[split] if names[r.label] == "_silence_"]
        assert len(silence) == max(1, round(n_commands / 3)), split
        for r in silence:
            assert Path(r.path).parent.name == "_background_noise_"
            assert r.end - r.start == pytest.approx(1.0)
            lo, hi = {"train": (0, 8), "val": (8, 9), "test": (9, 10)}[split]  # time stretch of a 10 s file
            assert lo <= r.start and r.end <= hi + 1e-9
    # noise augmentation draws from the train stretch (first 80 %) of each noise file only
    assert [(Path(r.path).name, r.start, r.end) for r in dm.noise_records] == [
        ("pink_noise.wav", 0.0, 8.0), ("white_noise.wav", 0.0, 8.0)]
    silence = next(r for r in dm.splits["train"] if names[r.label] == "_silence_")
    item = dm.dataset("val", [silence])[0]
    assert item["waveform"].shape == (SR,) and item["label"] == 11
    again = SpeechCommandsDataModule(path=str(speech_commands), keyword_spotting_12=True, seed=1)
    assert [(r.id, r.start) for r in again.splits["train"]] == [(r.id, r.start) for r in dm.splits["train"]]


def test_speech_commands_items_lengths_and_batches(speech_commands):
    dm = SpeechCommandsDataModule(path=str(speech_commands), batch_size=3, augment=False)
    test = sorted(dm.splits["test"], key=lambda r: r.id)
    assert [dm.record_length(r) for r in test] == [SR, SR, SR]
    short = next(r for r in dm.splits["train"] if r.id == "yes/s3_nohash_0.wav")
    assert dm.record_length(short) == 12000  # 0.75 s
    batch = dm.collate([dm.dataset("train", [short])[0], dm.dataset("test", test[:1])[0]])
    assert batch["waveforms"].shape == (2, SR) and batch["lengths"].tolist() == [12000, SR]
    assert batch["waveforms"][0, 12000:].abs().sum() == 0
    batches = list(dm.test_dataloader())
    assert sum(len(b["ids"]) for b in batches) == 3 and batches[0]["waveforms"].shape[1] == SR


def test_speech_commands_list_naming_a_missing_file(speech_commands):
    lst = speech_commands / "testing_list.txt"
    lst.write_text("yes/s2_nohash_0.wav\nyes/ghost_nohash_0.wav\n")
    with names_file(lst, "listed file 'yes/ghost_nohash_0.wav' not found"):
        SpeechCommandsDataModule(path=str(speech_commands)).setup("fit")


def test_speech_commands_without_list_files_splits_by_seed(speech_commands):
    (speech_commands / "validation_list.txt").unlink()
    (speech_commands / "testing_list.txt").unlink()
    dm = SpeechCommandsDataModule(path=str(speech_commands), val_fraction=0.2, test_fraction=0.2, seed=5)
    sizes = dm.split_sizes()
    assert sizes == {"train": 8, "val": 3, "test": 3}  # 14 files
    assert ids(dm) == ids(SpeechCommandsDataModule(path=str(speech_commands), val_fraction=0.2,
                                                   test_fraction=0.2, seed=5))


# ---- augmentation ---------------------------------------------------------------------

def test_augmentation_only_on_train_and_reproducible(speech_commands):
    dm = SpeechCommandsDataModule(path=str(speech_commands), seed=3, noise_prob=1.0, shift_prob=1.0,
                                  gain_prob=1.0, noise_snr_db=[10.0])
    train = sorted(dm.splits["train"], key=lambda r: r.id)
    clean = load_audio(train[0].path)
    # eval items: centre crop, no augmentation, identical on every read
    for split in ("val", "test"):
        ds = dm.dataset(split, sorted(dm.splits[split], key=lambda r: r.id))
        first = [ds[i]["waveform"] for i in range(len(ds))]
        assert all(torch.equal(a, ds[i]["waveform"]) for i, a in enumerate(first))
        assert all(torch.equal(a, load_audio(r.path)) for a, r in zip(first, ds.records))
    # train items: augmented; the same (epoch, index) gives the same waveform, another epoch another one
    ds = dm.dataset("train", train)
    a, b, c = ds[(0, 0)]["waveform"], ds[(0, 0)]["waveform"], ds[(1, 0)]["waveform"]
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, clean)
    assert a.shape == clean.shape
    other_seed = SpeechCommandsDataModule(path=str(speech_commands), seed=4, noise_prob=1.0, shift_prob=1.0,
                                          gain_prob=1.0, noise_snr_db=[10.0])
    assert not torch.equal(a, other_seed.dataset("train", train)[(0, 0)]["waveform"])
    plain = SpeechCommandsDataModule(path=str(speech_commands), augment=False)
    assert torch.equal(plain.dataset("train", train)[(0, 0)]["waveform"], clean)  # 1 s clip: nothing to crop


def test_training_loader_is_reproducible_per_seed_and_epoch(speech_commands):
    def epochs(seed: int, num_workers: int = 0) -> list[list[torch.Tensor]]:
        dm = SpeechCommandsDataModule(path=str(speech_commands), seed=seed, batch_size=4, num_workers=num_workers)
        loader = dm.train_dataloader()
        return [[b["waveforms"] for b in loader] for _ in range(2)]

    first, second = epochs(0), epochs(0, num_workers=1)  # a worker process draws the same items
    assert all(torch.equal(x, y) for e1, e2 in zip(first, second) for x, y in zip(e1, e2))
    flat = lambda e: torch.cat([w.flatten() for w in e])  # noqa: E731
    assert not torch.equal(flat(first[0]), flat(first[1]))  # epoch 1 is augmented differently


def test_noise_is_mixed_at_the_requested_snr(tmp_path):
    rng = np.random.default_rng(1)
    noise = write_wav(tmp_path / "noise.wav", (rng.standard_normal(3 * SR) * 0.2).astype(np.float32),
                      subtype="FLOAT")
    clean = torch.from_numpy(sine(700, 1.0, SR, 0.4))
    for snr in (0.0, 10.0, 20.0):
        aug = AudioAugmentation([AudioRecord("n", str(noise), "_noise_")], noise_snr_db=[snr], noise_prob=1.0,
                                shift_prob=0.0, gain_prob=0.0)
        noisy = aug(clean.clone(), torch.Generator().manual_seed(0))
        added = noisy - clean
        measured = 10 * math.log10(float(clean.pow(2).sum() / added.pow(2).sum()))
        assert measured == pytest.approx(snr, abs=0.1)
    quiet = AudioAugmentation([AudioRecord("n", str(noise), "_noise_")], noise_prob=0.0, shift_prob=0.0,
                              gain_prob=0.0)
    assert torch.equal(quiet(clean.clone(), torch.Generator()), clean)


def test_shift_and_gain():
    aug = AudioAugmentation(shift_prob=1.0, gain_prob=0.0, max_shift_seconds=0.01)
    x = torch.arange(1.0, 11.0)
    assert aug.shift(x, 3).tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    assert aug.shift(x, -2).tolist() == [3, 4, 5, 6, 7, 8, 9, 10, 0, 0]
    gain = AudioAugmentation(shift_prob=0.0, gain_prob=1.0, max_gain_db=6.0)
    y = torch.ones(100)
    out = gain(y, torch.Generator().manual_seed(2))
    db = 20 * math.log10(float(out[0]))
    assert 0 < abs(db) <= 6.0 and torch.allclose(out, out[0].expand(100))


# ---- FSDD -----------------------------------------------------------------------------

FSDD_SPEAKERS = ("theo", "george", "lucas")
FSDD_TAKES = (0, 1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13)  # takes 0-4 are test: 3 of 12


@pytest.fixture
def fsdd(tmp_path) -> Path:
    for digit in (0, 1):
        for speaker in FSDD_SPEAKERS:
            for take in FSDD_TAKES:
                seconds = 0.3 + 0.01 * take
                write_wav(tmp_path / "fsdd" / "recordings" / f"{digit}_{speaker}_{take}.wav",
                          sine(400 + 300 * digit, seconds, 8000), sr=8000)
    (tmp_path / "fsdd" / "recordings" / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored
    return tmp_path / "fsdd"


def test_fsdd_splits_by_take_and_tasks(fsdd):
    dm = FSDDDataModule(path=str(fsdd), val_fraction=0.2, seed=0)
    assert dm.label_names == ["0", "1"] and dm.num_outputs == 2 and dm.task_type == "multiclass"
    sizes = dm.split_sizes()
    total_train = 2 * 3 * 9  # takes 5-13
    assert sizes == {"train": total_train - round(0.2 * total_train), "val": round(0.2 * total_train), "test": 18}
    take = lambda i: int(i.rsplit("_", 1)[1])  # noqa: E731
    assert all(take(r.id) < 5 for r in dm.splits["test"])
    assert all(take(r.id) >= 5 for s in ("train", "val") for r in dm.splits[s])
    assert {r.id for r in dm.splits["test"]} == {f"{d}_{s}_{t}" for d in (0, 1) for s in FSDD_SPEAKERS
                                                  for t in (0, 1, 4)}
    # the recordings folder itself works too and gives the same split
    assert ids(FSDDDataModule(path=str(fsdd / "recordings"), val_fraction=0.2, seed=0)) == ids(dm)
    speaker = FSDDDataModule(path=str(fsdd), task="speaker")
    assert speaker.label_names == ["george", "lucas", "theo"] and speaker.num_outputs == 3
    record = next(r for r in speaker.splits["test"] if r.id == "1_theo_4")
    assert record.label == 2
    item = speaker.dataset("test", [record])[0]
    assert item["waveform"].shape == (round(0.34 * 16000),) and item["label"] == 2
    assert peak_hz(item["waveform"], 16000) == pytest.approx(700, abs=5)
    assert speaker.record_length(record) == round(0.34 * 16000)
    with pytest.raises(ValueError, match="task must be one of"):
        FSDDDataModule(path=str(fsdd), task="gender")


def test_fsdd_loader_batches(fsdd):
    dm = FSDDDataModule(path=str(fsdd), batch_size=5, max_seconds=0.35)
    batch = next(iter(dm.train_dataloader()))
    assert batch["waveforms"].shape[0] == 5 and batch["waveforms"].shape[1] <= 5600
    assert batch["lengths"].max() == batch["waveforms"].shape[1] and (batch["lengths"] <= 5600).all()
    assert batch["labels"].dtype == torch.long and len(batch["ids"]) == 5


def test_fsdd_bad_file_name(fsdd):
    bad = write_wav(fsdd / "recordings" / "seven_theo_3.wav", sine(400, 0.2, 8000), sr=8000)
    with names_file(bad, r"does not match the FSDD pattern \{digit\}_\{speaker\}_\{take\}\.wav"):
        FSDDDataModule(path=str(fsdd)).setup("fit")


# ---- CSV manifest ---------------------------------------------------------------------

def test_csv_manifest_with_segments_and_splits(tmp_path):
    audio = tmp_path / "audio"
    write_wav(audio / "a.wav", sine(500, 2.0, SR))
    write_wav(audio / "b.wav", np.stack([sine(500, 1.0, 8000)] * 2, axis=1), sr=8000)
    absolute = write_wav(tmp_path / "elsewhere" / "c.flac", sine(500, 0.5, SR))
    manifest = tmp_path / "meta" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,label,start,end,split\n"
                        "../audio/a.wav,happy,0.0,0.5,train\n"
                        "../audio/a.wav,sad,0.5,1.75,test\n"
                        f"../audio/b.wav,angry,,,validation\n"
                        f"{absolute},happy,,,train\n")
    dm = AudioCSVDataModule(path=str(manifest), augment=False)
    assert dm.label_names == ["angry", "happy", "sad"]
    assert ids(dm) == {"train": sorted(["../audio/a.wav@0.0-0.5", str(absolute)]),
                       "val": ["../audio/b.wav"], "test": ["../audio/a.wav@0.5-1.75"]}
    segment = dm.splits["test"][0]
    assert (segment.start, segment.end, segment.label) == (0.5, 1.75, 2)
    assert dm.record_length(segment) == 20000
    assert dm.dataset("test", [segment])[0]["waveform"].shape == (20000,)
    stereo = dm.dataset("val", dm.splits["val"])[0]["waveform"]
    assert stereo.shape == (SR,)  # 8 kHz stereo -> 16 kHz mono


def test_csv_manifest_seeded_split_and_ids(tmp_path):
    for i in range(20):
        write_wav(tmp_path / f"clip{i}.wav", sine(300, 0.1, SR))
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path,label\n" + "".join(f"u{i},clip{i}.wav,{'ab'[i % 2]}\n" for i in range(20)))
    dm = AudioCSVDataModule(path=str(manifest), val_fraction=0.2, test_fraction=0.1, seed=2)
    assert dm.split_sizes() == {"train": 14, "val": 4, "test": 2}
    assert sorted(sum(ids(dm).values(), [])) == sorted(f"u{i}" for i in range(20))
    assert ids(dm) == ids(AudioCSVDataModule(path=str(manifest), val_fraction=0.2, test_fraction=0.1, seed=2))


def test_csv_manifest_missing_audio_file(tmp_path):
    write_wav(tmp_path / "here.wav", sine(300, 0.1, SR))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nhere.wav,a\nnot_here.wav,b\n")
    with pytest.raises(DataError, match=re.escape(f"{manifest}, record row2: audio file 'not_here.wav' not found")):
        AudioCSVDataModule(path=str(manifest)).setup("fit")


# ---- bad audio --------------------------------------------------------------------------

def test_corrupt_file(tmp_path):
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with names_file(bad, "unreadable audio .*WAV or FLAC"):
        load_audio(bad)
    write_wav(tmp_path / "fine.wav", sine(300, 0.1, SR))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nfine.wav,a\ncorrupt.wav,b\n")
    with names_file(bad, "unreadable audio"):
        AudioCSVDataModule(path=str(manifest)).setup("fit")  # found when the splits load, not mid-training


def test_empty_file(tmp_path):
    empty = write_wav(tmp_path / "empty.wav", np.zeros((0, 1), dtype=np.float32))
    with names_file(empty, r"empty audio file \(0 frames\)"):
        load_audio(empty)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nempty.wav,a\n")
    with names_file(empty, "empty audio file"):
        AudioCSVDataModule(path=str(manifest)).setup("fit")


def test_unexpected_sample_rate_and_channels(tmp_path):
    narrow = write_wav(tmp_path / "narrow.wav", sine(300, 0.1, 8000), sr=8000)
    stereo = write_wav(tmp_path / "stereo.wav", np.zeros((800, 2), dtype=np.float32))
    with names_file(narrow, "sample rate 8000 Hz, expected 16000 Hz"):
        load_audio(narrow, expected_sample_rate=16000)
    with names_file(stereo, "2 channels, at most 1 allowed"):
        load_audio(stereo, max_channels=1)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nnarrow.wav,a\nstereo.wav,b\n")
    with names_file(narrow, "sample rate 8000 Hz"):
        AudioCSVDataModule(path=str(manifest), expected_sample_rate=16000).setup("fit")
    with names_file(stereo, "2 channels"):
        AudioCSVDataModule(path=str(manifest), max_channels=1).setup("fit")
    assert AudioCSVDataModule(path=str(manifest), max_channels=2, test_fraction=0, val_fraction=0).split_sizes()[
        "train"] == 2


def test_segment_outside_the_file_and_missing_file(tmp_path):
    short = write_wav(tmp_path / "short.wav", sine(300, 1.0, SR))
    with names_file(short, "segment .* lies outside the file"):
        load_audio(short, start=0.5, end=1.5)
    with names_file(short, "segment .* lies outside the file"):
        load_audio(short, start=2.0)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,start,end\nshort.wav,a,0.2,3.0\n")
    with names_file(short, "lies outside the file"):
        AudioCSVDataModule(path=str(manifest)).setup("fit")
    manifest.write_text("path,label,start,end\nshort.wav,a,0.8,0.3\n")
    with names_file(manifest, "end 0.3 is not after start 0.8"):
        AudioCSVDataModule(path=str(manifest)).setup("fit")
    gone = tmp_path / "gone.wav"
    with names_file(gone, "audio file not found"):
        load_audio(gone)


# ---- synthetic task -------------------------------------------------------------------

def test_synthetic_tones_are_deterministic_and_in_band():
    dm = SyntheticToneDataModule(num_clips=40, seed=1, batch_size=8)
    assert dm.split_sizes() == {"train": 32, "val": 4, "test": 4}
    assert dm.num_outputs == 4 and dm.label_names == ["200-400 Hz", "400-800 Hz", "800-1600 Hz", "1600-3200 Hz"]
    ds = dm.dataset("test", dm.splits["test"])
    for i, record in enumerate(ds.records):
        item = ds[i]
        assert item["waveform"].shape == (8000,) and torch.equal(item["waveform"], ds[i]["waveform"])
        low, high = dm.bands[item["label"]]
        assert low <= peak_hz(item["waveform"], SR) <= high
    bands = dm.bands
    assert torch.equal(make_tone_clip(3, 1, bands=bands, seed=1), make_tone_clip(3, 1, bands=bands, seed=1))
    assert not torch.equal(make_tone_clip(3, 1, bands=bands, seed=1), make_tone_clip(3, 1, bands=bands, seed=2))
    batch = next(iter(dm.train_dataloader()))
    assert batch["waveforms"].shape == (8, 8000) and batch["lengths"].tolist() == [8000] * 8
    assert Counter(r.label for recs in dm.splits.values() for r in recs) == {0: 10, 1: 10, 2: 10, 3: 10}


# ---- real data ------------------------------------------------------------------------

def test_real_fsdd_digit_and_speaker():
    root = os.environ.get("PEFTLAB_DATA")
    if not root:
        pytest.skip("PEFTLAB_DATA is not set: the real FSDD data lives in ../shared/data")
    path = Path(root) / "fsdd"
    assert len(list((path / "recordings").glob("*.wav"))) == 3000
    for task, classes in (("digit", 10), ("speaker", 6)):
        dm = FSDDDataModule(path=str(path), task=task, val_fraction=0.1)
        assert dm.split_sizes() == {"train": 2430, "val": 270, "test": 300}  # 2,700 takes 5-49, 300 takes 0-4
        assert dm.num_outputs == classes
    assert dm.label_names == ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
    record = next(r for r in dm.splits["test"] if r.id == "0_george_0")
    info = sf.info(record.path)
    assert info.samplerate == 8000 and info.channels == 1
    waveform = dm.dataset("test", [record])[0]["waveform"]
    assert waveform.shape == (min(2 * info.frames, round(1.5 * 16000)),)
    assert dm.record_length(record) == waveform.numel()
