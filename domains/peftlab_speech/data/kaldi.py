"""Kaldi data directories and the LibriSpeech folder layout, for speech recognition.

**Kaldi** (:func:`read_kaldi_dir`, :class:`KaldiDataModule`): a data directory holds

* ``wav.scp``: ``<recording id> <audio path>`` per line (WAV / FLAC ...;
  Kaldi's piped commands ``... |`` are not run: a DataError names the line);
* ``text``: ``<utterance id> <transcript>`` per line;
* ``segments`` (optional): ``<utterance id> <recording id> <start> <end>``
  (seconds; ``end`` -1 = the end of the recording); without it each
  recording is one utterance with the recording's id;
* ``utt2spk`` (optional): read for its check only (every utterance has a
  speaker line, no speaker line names an unknown utterance).

Relative audio paths are taken from ``audio_root`` when given, else from the
data directory, else its parent (recipes often write paths relative to the
corpus root, as speechocean762's ``train/wav.scp`` does).

**LibriSpeech** (:func:`read_librispeech`, :class:`LibriSpeechDataModule`):
``<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` lines
``<utterance id> <TRANSCRIPT>`` beside ``<utterance id>.flac``.

Every problem names the file and line, or the utterance: a line without a
transcript, an utterance in ``text`` without audio (or the other way round),
duplicated ids, a missing audio file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftlab.data import DataError, open_text
from peftlab_speech.data.base import AudioRecord, data_folder
from peftlab_speech.data.transcribed import TranscriptionDataModule


def _table(path: Path, min_fields: int, what: str) -> dict[str, tuple[str, list[str]]]:
    """``{first field: ("line N", rest split on whitespace)}`` of a Kaldi table file."""
    table: dict[str, tuple[str, list[str]]] = {}
    with open_text(path) as f:
        for n, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"line {n}"
            if len(fields) < min_fields:
                raise DataError(path, where, f"expected {what}, got {line.strip()!r}")
            if fields[0] in table:
                raise DataError(path, where, f"duplicated id {fields[0]!r} (also on {table[fields[0]][0]})")
            table[fields[0]] = (where, fields[1:])
    return table


def _audio_path(scp: Path, where: str, written: str, roots: list[Path]) -> Path:
    if written.endswith("|") or written.startswith("-"):
        raise DataError(scp, where, f"{written!r} is a Kaldi command, which peftlab does not run; "
                                    f"list audio files (make them with the command first)")
    candidates = [Path(written)] if Path(written).is_absolute() else [root / written for root in roots]
    for file in candidates:
        if file.is_file():
            return file
    raise DataError(scp, where, f"audio file {written!r} not found (looked in {', '.join(map(str, candidates))})")


def _transcripts(folder: Path, required: bool = True) -> dict[str, str] | None:
    """``{utterance: transcript}`` of ``text``; ``None`` when there is none and it is not ``required``."""
    text_path = folder / "text"
    if not text_path.is_file():
        if not required:
            return None
        raise DataError(folder, None, "no 'text' file: a Kaldi data directory for recognition needs transcripts")
    with open_text(text_path) as f:
        lines = [(n, line.strip()) for n, line in enumerate(f, start=1) if line.strip()]
    texts: dict[str, str] = {}
    for n, line in lines:
        utt, transcript = (line.split(None, 1) + [""])[:2]
        transcript = transcript.strip()
        if not transcript:
            raise DataError(text_path, f"line {n}", f"utterance {utt!r} has an empty transcript")
        if utt in texts:
            raise DataError(text_path, f"line {n}", f"duplicated utterance id {utt!r}")
        texts[utt] = transcript
    return texts


def _segments(folder: Path, recordings: dict[str, Path]) -> dict[str, tuple[Path, float | None, float | None]]:
    """``{utterance: (audio, start, end)}`` from ``segments``, or one utterance per recording."""
    path = folder / "segments"
    if not path.is_file():
        return {rec: (audio, None, None) for rec, audio in recordings.items()}
    out = {}
    for utt, (where, (rec, start, end, *_)) in _table(path, 4, "<utterance> <recording> <start> <end>").items():
        if rec not in recordings:
            raise DataError(path, where, f"recording {rec!r} of utterance {utt!r} is not in wav.scp")
        try:
            first, last = float(start), float(end)
        except ValueError:
            raise DataError(path, where, f"start {start!r} / end {end!r} are not numbers of seconds") from None
        if first < 0 or (last != -1 and last <= first):
            raise DataError(path, where, f"bad segment [{start}, {end}) of utterance {utt!r}")
        out[utt] = (recordings[rec], first, None if last == -1 else last)
    return out


def read_kaldi_dir(folder: str | Path, audio_root: str | Path | None = None, split: str | None = None,
                   transcripts_required: bool = True) -> list[AudioRecord]:
    """The utterances of a Kaldi data directory, transcripts as their labels (see the module doc).
    Without ``transcripts_required`` a directory may lack ``text`` (audio to transcribe): labels ``None``."""
    folder = data_folder(str(folder), "a Kaldi data directory")
    scp = folder / "wav.scp"
    if not scp.is_file():
        raise DataError(folder, None, "no 'wav.scp' file: not a Kaldi data directory")
    roots = [Path(audio_root)] if audio_root else [folder, folder.parent]
    recordings = {rec: _audio_path(scp, where, " ".join(rest), roots)
                  for rec, (where, rest) in _table(scp, 2, "<recording id> <audio path>").items()}
    utterances = _segments(folder, recordings)
    texts = _transcripts(folder, transcripts_required)
    if texts is None:
        return [AudioRecord(id=utt, path=str(audio), label=None, start=start, end=end, split=split)
                for utt, (audio, start, end) in sorted(utterances.items())]
    missing_text = sorted(set(utterances) - set(texts))
    if missing_text:
        raise DataError(folder / "text", missing_text[0], f"utterance has audio but no transcript "
                                                          f"({len(missing_text)} such)")
    missing_audio = sorted(set(texts) - set(utterances))
    if missing_audio:
        raise DataError(folder / "text", missing_audio[0], f"utterance has a transcript but no audio in "
                                                           f"{'segments' if (folder / 'segments').is_file() else 'wav.scp'}")
    if (folder / "utt2spk").is_file():
        speakers = _table(folder / "utt2spk", 2, "<utterance> <speaker>")
        odd = sorted(set(speakers) ^ set(utterances))
        if odd:
            raise DataError(folder / "utt2spk", odd[0], "utterance is in utt2spk or the transcripts but not both")
    return [AudioRecord(id=utt, path=str(audio), label=texts[utt], start=start, end=end, split=split)
            for utt, (audio, start, end) in sorted(utterances.items())]


def read_librispeech(folder: str | Path, split: str | None = None) -> list[AudioRecord]:
    """The utterances of a LibriSpeech subset folder (``train-clean-100`` ...)."""
    folder = data_folder(str(folder), "a LibriSpeech subset folder")
    records = []
    for trans in sorted(folder.rglob("*.trans.txt")):
        with open_text(trans) as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                utt, transcript = (line.split(None, 1) + [""])[:2]
                if not transcript.strip():
                    raise DataError(trans, f"line {n}", f"utterance {utt!r} has an empty transcript")
                audio = trans.parent / f"{utt}.flac"
                if not audio.is_file():
                    raise DataError(trans, f"line {n}", f"audio file {audio.name} of utterance {utt!r} not found")
                records.append(AudioRecord(id=utt, path=str(audio), label=transcript.strip(), split=split))
    if not records:
        raise DataError(folder, None, "no LibriSpeech transcripts (*.trans.txt) found")
    return records


class _SplitFolders(TranscriptionDataModule):
    """A data set whose splits are sub-folders of ``path`` (``val: null``: carved from train)."""

    def __init__(self, path: str | None = None, train: str = "train", val: str | None = None,
                 test: str | None = "test", **kwargs: Any):
        super().__init__(**kwargs)
        self.path, self.split_folders = path, {"train": train, "val": val, "test": test}

    def read_folder(self, folder: Path, split: str) -> list[AudioRecord]:
        raise NotImplementedError

    def read_records(self) -> list[AudioRecord]:
        root = data_folder(self.path, type(self).__name__)
        records = []
        for split, name in self.split_folders.items():
            if name is not None:
                records += self.read_folder(root / name, split)
        return records


class KaldiDataModule(_SplitFolders):
    """Speech recognition from Kaldi data directories (``wav.scp``, ``text``, optional
    ``segments`` and ``utt2spk``), one per split under ``path``.

    Args:
        path: the folder holding the data directories.
        train / val / test: their names (``val: null``: val carved out of train with
            ``val_fraction``; ``test: null``: ``test_fraction`` of train).
        audio_root: where relative ``wav.scp`` paths start (default: the data
            directory, else its parent).
        **kwargs: see :class:`~peftlab_speech.data.transcribed.TranscriptionDataModule`.
    """

    def __init__(self, path: str | None = None, train: str = "train", val: str | None = None,
                 test: str | None = "test", audio_root: str | None = None, **kwargs: Any):
        super().__init__(path=path, train=train, val=val, test=test, **kwargs)
        self.audio_root = audio_root

    def read_folder(self, folder: Path, split: str) -> list[AudioRecord]:
        return read_kaldi_dir(folder, self.audio_root, split)


class LibriSpeechDataModule(_SplitFolders):
    """LibriSpeech (``<subset>/<speaker>/<chapter>/*.trans.txt`` beside ``.flac`` files).
    SUPERB's ASR task trains on ``train-clean-100``, selects on ``dev-clean`` and reports
    ``test-clean`` WER: the defaults.

    Args:
        path: the ``LibriSpeech`` folder holding the subsets.
        train / val / test: subset folder names.
        **kwargs: see :class:`~peftlab_speech.data.transcribed.TranscriptionDataModule`.
    """

    def __init__(self, path: str | None = None, train: str = "train-clean-100", val: str | None = "dev-clean",
                 test: str | None = "test-clean", **kwargs: Any):
        super().__init__(path=path, train=train, val=val, test=test, **kwargs)

    def read_folder(self, folder: Path, split: str) -> list[AudioRecord]:
        return read_librispeech(folder, split)
