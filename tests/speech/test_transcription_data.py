"""Speech recognition data: Kaldi directories, LibriSpeech folders, CSV manifests with a
transcript column and FSDD read as recognition, on tiny files written here; every bad
input gets a DataError naming the utterance (or file and line)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from peftlab.data import IGNORE_INDEX, DataError
from peftlab.data.transcripts import BLANK, WORD_BOUNDARY
from peftlab_speech.data import (FSDDTranscriptionDataModule, KaldiDataModule, LibriSpeechDataModule,
                                 TranscriptCSVDataModule)

SR = 16000


def wav(path: Path, seconds: float, sr: int = SR, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, format=fmt)
    return path


def kaldi_dir(folder: Path, utts: dict[str, tuple[float, str]], scp_relative_to_parent: bool = False) -> Path:
    """A Kaldi data directory: ``{utt: (seconds, transcript)}``; audio in ``folder/wav``."""
    scp, text, spk = [], [], []
    for utt, (seconds, transcript) in utts.items():
        wav(folder / "wav" / f"{utt}.wav", seconds)
        rel = f"{folder.name}/wav/{utt}.wav" if scp_relative_to_parent else f"wav/{utt}.wav"
        scp.append(f"{utt} {rel}")
        text.append(f"{utt}\t{transcript}")
        spk.append(f"{utt} spk{utt[-1]}")
    (folder / "wav.scp").write_text("\n".join(scp) + "\n")
    (folder / "text").write_text("\n".join(text) + "\n")
    (folder / "utt2spk").write_text("\n".join(spk) + "\n")
    return folder


@pytest.fixture
def corpus(tmp_path) -> Path:
    kaldi_dir(tmp_path / "train", {f"tr{i}": (0.5, t) for i, t in enumerate(
        ["The cat.", "a bad cat", "Tab, cab!", "bat", "ACT"])}, scp_relative_to_parent=True)
    kaldi_dir(tmp_path / "test", {"te0": (0.5, "cab bat"), "te1": (0.4, "tad")})
    return tmp_path


def test_kaldi_directories_normalise_build_the_vocabulary_from_train_and_batch(corpus):
    data = KaldiDataModule(path=str(corpus), val_fraction=0.2, batch_size=2, seed=0)
    assert data.task_type == "transcription"
    assert data.split_sizes() == {"train": 4, "val": 1, "test": 2}
    assert data.label_names[:2] == [BLANK, WORD_BOUNDARY]
    # the train split's characters (val carved from it shares its vocabulary read from train alone)
    train_chars = set("".join(r.label for r in data.splits["train"]).replace(" ", ""))
    assert set(data.label_names[2:]) == train_chars
    test = {r.id: r for r in data.splits["test"]}
    assert test["te0"].label == "CAB BAT"
    assert [data.label_names[i] for i in test["te0"].targets] == list("CAB|BAT")
    labels = {r.id: r.label for r in data.splits["train"] + data.splits["val"]}
    assert labels["tr0"] == "THE CAT" and labels["tr2"] == "TAB CAB"
    batch = next(iter(data.test_dataloader()))
    assert batch["waveforms"].shape == (2, 8000) and sorted(batch["lengths"].tolist()) == [6400, 8000]
    row = batch["ids"].index("te1")
    assert [data.label_names[i] for i in batch["labels"][row].tolist() if i != IGNORE_INDEX] == list("TAD")
    assert batch["labels"][row].tolist()[3:] == [IGNORE_INDEX] * 4


def test_kaldi_segments_cut_recordings_into_utterances(tmp_path):
    folder = kaldi_dir(tmp_path / "train", {"rec1": (1.0, "unused")})
    (folder / "segments").write_text("u1 rec1 0.0 0.5\nu2 rec1 0.5 -1\n")
    (folder / "text").write_text("u1 AB\nu2 BA\n")
    (folder / "utt2spk").write_text("u1 s\nu2 s\n")
    data = KaldiDataModule(path=str(tmp_path), test=None, val_fraction=0.0, test_fraction=0.5, seed=0)
    records = {r.id: r for split in data.splits.values() for r in split}
    assert (records["u1"].start, records["u1"].end, records["u2"].start, records["u2"].end) == (0.0, 0.5, 0.5, None)


@pytest.mark.parametrize("damage, match", [
    (lambda d: (d / "wav" / "tr1.wav").unlink(), r"wav.scp, record line 2: audio file 'train/wav/tr1.wav' not found"),
    (lambda d: (d / "wav.scp").write_text("tr0 sox x.wav -t wav - |\n"), "Kaldi command, which peftlab does not run"),
    (lambda d: (d / "text").write_text((d / "text").read_text().replace("tr3\tbat", "tr3\t ")),
     r"text, record line 4: utterance 'tr3' has an empty transcript"),
    (lambda d: (d / "text").write_text((d / "text").read_text() + "ghost BOO\n"),
     "record ghost: utterance has a transcript but no audio"),
    (lambda d: (d / "text").write_text((d / "text").read_text().replace("tr4\tACT\n", "")),
     "record tr4: utterance has audio but no transcript"),
    (lambda d: (d / "text").write_text((d / "text").read_text().replace("tr3\tbat", "tr3\t...")),
     r"record tr3: empty transcript \(after normalisation\)"),
])
def test_kaldi_input_errors_name_the_file_and_utterance(corpus, damage, match):
    damage(corpus / "train")
    with pytest.raises(DataError, match=match):
        KaldiDataModule(path=str(corpus)).split_sizes()


def test_characters_outside_the_training_vocabulary_are_an_error_or_dropped(corpus):
    kaldi_dir(corpus / "test", {"te0": (0.5, "cab bat"), "te1": (0.4, "zap")})
    with pytest.raises(DataError, match="record te1: character 'Z' of transcript 'ZAP' is not in the vocabulary"):
        KaldiDataModule(path=str(corpus)).split_sizes()
    data = KaldiDataModule(path=str(corpus), unknown_chars="drop")
    te1 = next(r for r in data.splits["test"] if r.id == "te1")
    assert [data.label_names[i] for i in te1.targets] == ["A"]  # Z and P are not in train's transcripts
    mapped = KaldiDataModule(path=str(corpus), char_map={"z": "c", "p": "b"})
    te1 = next(r for r in mapped.splits["test"] if r.id == "te1")
    assert te1.label == "CAB"


def test_audio_too_short_for_its_transcript_or_too_long_is_refused(corpus):
    kaldi_dir(corpus / "test", {"te0": (0.05, "a cab at a bat")})  # 0.05 s: 2 frames of 20 ms for 14 symbols
    with pytest.raises(DataError, match="record te0: 0.05 s of audio gives about 2 encoder frame.* fewer than the 14"):
        KaldiDataModule(path=str(corpus)).split_sizes()
    kaldi_dir(corpus / "test", {"te0": (0.5, "cab")})
    with pytest.raises(DataError, match=r"record tr\d: 0.50 s of audio, longer than max_seconds 0.3"):
        KaldiDataModule(path=str(corpus), max_seconds=0.3).split_sizes()


def test_max_batch_seconds_caps_the_padded_audio_of_a_batch(corpus):
    data = KaldiDataModule(path=str(corpus), batch_size=8, val_fraction=0.0, max_batch_seconds=1.0)
    sizes = sorted(len(b["ids"]) for b in data.train_dataloader())
    assert sizes == [1, 2, 2]  # 5 utterances of 0.5 s: at most 2 per 1 s of audio
    uncapped = KaldiDataModule(path=str(corpus), batch_size=8, val_fraction=0.0)
    assert [len(b["ids"]) for b in uncapped.train_dataloader()] == [5]


def test_csv_manifest_with_a_transcript_column_and_its_errors(tmp_path):
    for name in ("a", "b", "c"):
        wav(tmp_path / "audio" / f"{name}.wav", 0.3)
    (tmp_path / "m.csv").write_text("utt_id,audio,transcript,split\nu1,audio/a.wav,Hello there,train\n"
                                    "u2,audio/b.wav,hello,train\nu3,audio/c.wav,there,test\n")
    data = TranscriptCSVDataModule(path=str(tmp_path / "m.csv"), path_column="audio", id_column="utt_id",
                                   val_fraction=0.0)
    assert {s: sorted(r.id for r in rs) for s, rs in data.splits.items()} == {
        "train": ["u1", "u2"], "val": [], "test": ["u3"]}
    assert data.splits["test"][0].label == "THERE"
    (tmp_path / "m.csv").write_text("utt_id,audio,transcript\nu1,audio/a.wav,hi\nu2,audio/gone.wav,ho\n")
    with pytest.raises(DataError, match=r"m.csv, record row2 \(u2\): audio file 'audio/gone.wav' not found"):
        TranscriptCSVDataModule(path=str(tmp_path / "m.csv"), path_column="audio", id_column="utt_id").split_sizes()
    (tmp_path / "m.csv").write_text("path,words\naudio/a.wav,hi\n")
    with pytest.raises(DataError, match=r"missing required column\(s\) \['transcript'\]"):
        TranscriptCSVDataModule(path=str(tmp_path / "m.csv")).split_sizes()


def test_librispeech_layout(tmp_path):
    for subset, utts in {"train-clean-100": ["19-198-0000", "19-198-0001"], "dev-clean": ["84-121-0000"],
                         "test-clean": ["61-70-0000"]}.items():
        chapter = tmp_path / subset / utts[0].split("-")[0] / utts[0].split("-")[1]
        for u in utts:
            wav(chapter / f"{u}.flac", 0.4, fmt="FLAC")
        (chapter / f"{utts[0].rsplit('-', 1)[0]}.trans.txt").write_text(
            "".join(f"{u} A CAB AT {i}\n".replace(f" {i}", "") for i, u in enumerate(utts)))
    data = LibriSpeechDataModule(path=str(tmp_path))
    assert data.split_sizes() == {"train": 2, "val": 1, "test": 1}
    assert data.splits["test"][0].label == "A CAB AT" and data.splits["test"][0].path.endswith("61-70-0000.flac")
    (tmp_path / "test-clean" / "61" / "70" / "61-70-0000.flac").unlink()
    with pytest.raises(DataError, match=r"61-70.trans.txt, record line 1: audio file 61-70-0000.flac"):
        LibriSpeechDataModule(path=str(tmp_path)).split_sizes()


def test_fsdd_read_as_recognition(tmp_path):
    for name in ("7_jackson_0", "7_jackson_5", "3_theo_7", "0_theo_9"):
        wav(tmp_path / "recordings" / f"{name}.wav", 0.4, sr=8000)
    data = FSDDTranscriptionDataModule(path=str(tmp_path), val_fraction=0.0)
    assert {r.id: r.label for r in data.splits["train"]} == {"7_jackson_5": "SEVEN", "3_theo_7": "THREE",
                                                             "0_theo_9": "ZERO"}
    assert [r.id for r in data.splits["test"]] == ["7_jackson_0"]
    assert data.label_names == [BLANK, WORD_BOUNDARY] + sorted(set("SEVENTHREEZERO"))


def test_predict_path_reads_audio_with_or_without_transcripts(corpus, tmp_path):
    """``predict_path``: a Kaldi directory without ``text``, a CSV manifest without a transcript column,
    a folder of audio files, or any of them with transcripts (then normalised and encoded as references)."""
    untranscribed = kaldi_dir(tmp_path / "new", {"n0": (0.5, "x"), "n1": (0.3, "y")})
    (untranscribed / "text").unlink()
    folder = tmp_path / "recordings"
    wav(folder / "a.wav", 0.4), wav(folder / "sub" / "b.flac", 0.3, fmt="FLAC"), wav(folder / ".hidden" / "c.wav", 0.3)
    manifest = tmp_path / "to_transcribe.csv"
    manifest.write_text("path,id\nrecordings/a.wav,first\nrecordings/sub/b.flac,\n")
    cases = {str(untranscribed): (["n0", "n1"], None), str(folder): (["a", "sub/b"], None),
             str(manifest): (["first", "recordings/sub/b.flac"], None),
             str(corpus / "test"): (["te0", "te1"], ["CAB BAT", "TAD"])}
    for path, (ids, references) in cases.items():
        data = KaldiDataModule(path=str(corpus), val_fraction=0.2, batch_size=4, seed=0, predict_path=path)
        records = data.predict_records
        assert [r.id for r in records] == ids, path
        assert [r.label for r in records] == (references or [None] * len(ids)), path
        batch = next(iter(data.predict_dataloader()))
        assert sorted(batch["ids"]) == sorted(ids) and ("labels" in batch) == (references is not None), path
        if references:
            row = batch["ids"].index("te1")
            assert [data.label_names[i] for i in batch["labels"][row].tolist() if i != IGNORE_INDEX] == list("TAD")
    # the splits are untouched: predict_path is only what predict reads
    assert data.split_sizes() == {"train": 4, "val": 1, "test": 2}


@pytest.mark.parametrize("damage, match", [
    ("some_text", r"m.csv, record .*n1.wav: no transcript, while 1 of the 2 utterances have one"),
    ("empty_after_normalising", r"new, record n0: empty transcript \(after normalisation\)"),
    ("missing_audio", r"audio file 'wav/n1.wav' not found"),
    ("no_audio", r"no audio files \(.wav, .flac\) found"),
])
def test_predict_path_errors_name_the_utterance(corpus, tmp_path, damage, match):
    folder = kaldi_dir(tmp_path / "new", {"n0": (0.5, "cab"), "n1": (0.3, "bat")})
    if damage == "some_text":
        csv_path = tmp_path / "m.csv"
        csv_path.write_text(f"path,transcript\n{folder}/wav/n0.wav,cab\n{folder}/wav/n1.wav,\n")
        folder = csv_path
    elif damage == "empty_after_normalising":
        (folder / "text").write_text("n0 ?!\nn1 bat\n")
    elif damage == "missing_audio":
        (folder / "wav" / "n1.wav").unlink()
    else:
        folder = tmp_path / "empty"
        folder.mkdir()
    data = KaldiDataModule(path=str(corpus), val_fraction=0.2, seed=0, predict_path=str(folder))
    with pytest.raises(DataError, match=match):
        data.predict_records
