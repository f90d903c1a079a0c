"""Speech recognition data: :class:`TranscriptionDataModule`, the base of every
transcribed-audio format (Kaldi directories and LibriSpeech in
:mod:`~peftlab_speech.data.kaldi`), CSV manifests with a transcript column
(:class:`TranscriptCSVDataModule`) and FSDD read as recognition
(:class:`FSDDTranscriptionDataModule`: each recording's transcript is its
digit's English word).

A format reads records whose ``label`` is the transcript as written; the base
normalises it (:class:`peftlab.data.transcripts.TextNormalizer`: case,
punctuation, a character map), builds the character vocabulary from the
training transcripts (or takes the one given), encodes every transcript and
checks every utterance before training: an empty transcript, a character
outside the vocabulary (unless ``unknown_chars: drop``), missing audio, audio
longer than ``max_seconds`` or too short for its transcript each give a
:class:`peftlab.data.DataError` naming the utterance. Audio is never cropped
(a crop would cut words off their transcript); ``max_batch_seconds`` caps the
padded audio of a batch instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peftlab.data import IGNORE_INDEX, DataError, LoadedData, UniqueIds, assign_splits, listed_file, manifest_rows
from peftlab.data.transcripts import (UNKNOWN_CHARS, TextNormalizer, character_vocabulary, ctc_frames_needed,
                                      encode_transcript)
from peftlab_speech.data.audio import AUDIO_SUFFIXES
from peftlab_speech.data.audio_csv import _seconds, _split
from peftlab_speech.data.base import AudioDataModule, AudioDataset, AudioRecord, data_folder
from peftlab_speech.data.fsdd import FSDD_TEST_TAKES, parse_fsdd_name

#: FSDD digits as words (the transcripts of FSDD read as speech recognition)
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass
class TranscribedRecord(AudioRecord):
    """An :class:`AudioRecord` whose ``label`` is its (normalised) transcript; ``targets`` its symbol
    indices (``None``: audio to transcribe, without a transcript)."""

    targets: tuple[int, ...] | None = ()


class TranscribedDataset(AudioDataset):
    """Items whose ``label`` is the list of the transcript's symbol indices (``None`` without one)."""

    def item_label(self, record: TranscribedRecord) -> list[int] | None:
        return None if record.targets is None else list(record.targets)


def collate_transcribed(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``waveforms`` ``[B, N_max]`` zero-padded, ``lengths``, ``labels`` ``[B, S_max]`` padded with
    :data:`IGNORE_INDEX` (no ``labels`` for audio without transcripts), ``ids``."""
    if not items:
        raise ValueError("collate got an empty batch")
    waveforms = [item["waveform"] for item in items]
    batch = {"waveforms": torch.nn.utils.rnn.pad_sequence(waveforms, batch_first=True),
             "lengths": torch.tensor([w.numel() for w in waveforms], dtype=torch.long),
             "ids": [item["id"] for item in items]}
    if all(item["label"] is not None for item in items):
        labels = [torch.tensor(item["label"], dtype=torch.long) for item in items]
        batch["labels"] = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX)
    return batch


class TranscriptionDataModule(AudioDataModule):
    """Base of the speech recognition DataModules (``task_type: transcription``).

    Args:
        case: ``upper`` (default), ``lower`` or ``null`` (as written).
        strip_punctuation: delete punctuation except in-word apostrophes;
            hyphens and slashes become spaces.
        char_map: characters replaced before anything else (``{"é": "e"}``;
            ``""`` deletes).
        vocabulary: the characters the head predicts, in order (``<blank>`` and
            the word boundary ``|`` come first in any case); ``null``: the
            sorted characters of the training transcripts.
        unknown_chars: ``error`` (a DataError naming the utterance) or
            ``drop`` for characters outside the vocabulary.
        frame_stride: input samples per encoder output frame (320 at 16 kHz:
            wav2vec2, HuBERT, WavLM), to refuse utterances too short for their
            transcript before training (the loss checks the exact frame count
            again); ``null``: only the loss checks.
        max_seconds: the longest utterance allowed (a longer one is a
            DataError naming it; nothing is cropped); ``null``: no limit.
        max_batch_seconds: cap on a batch's padded audio (its size times its
            longest utterance), so batches of long utterances get fewer of them.
        augment: noise / shift / gain augmentation of training audio (off by default).
        predict_path: audio for ``peftlab predict`` instead of ``predict_split``: a Kaldi
            data directory (``text`` optional), a CSV manifest (this module's column
            names, else ``path`` / ``transcript`` / ``id``; the transcript column
            optional) or a folder of WAV/FLAC files (read recursively). Where it has
            transcripts, every utterance needs one, and predictions get the reference
            and WER. Checked as the splits are (missing or unreadable audio, audio
            longer than ``max_seconds``), when ``predict`` first asks for it.
        **kwargs: ``sample_rate``, ``batch_size``, ``seed``, ``val_fraction``... : see
            :class:`~peftlab_speech.data.base.AudioDataModule`.
    """

    def __init__(self, case: str | None = "upper", strip_punctuation: bool = True,
                 char_map: dict[str, str] | None = None, vocabulary: list[str] | None = None,
                 unknown_chars: str = "error", frame_stride: int | None = 320, max_seconds: float | None = None,
                 max_batch_seconds: float | None = None, augment: bool = False, predict_path: str | None = None,
                 **kwargs: Any):
        super().__init__(max_seconds=max_seconds, augment=augment, **kwargs)
        self.predict_path, self._predict_records = predict_path, None
        self.task_type = "transcription"
        self.normalizer = TextNormalizer(case=case, strip_punctuation=strip_punctuation, char_map=dict(char_map or {}))
        if unknown_chars not in UNKNOWN_CHARS:
            raise ValueError(f"unknown_chars must be one of {UNKNOWN_CHARS}, got {unknown_chars!r}")
        if frame_stride is not None and frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1 or null, got {frame_stride}")
        if max_batch_seconds is not None and max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be > 0 or null, got {max_batch_seconds}")
        self.vocabulary = list(vocabulary) if vocabulary is not None else None
        self.unknown_chars, self.frame_stride, self.max_batch_seconds = unknown_chars, frame_stride, max_batch_seconds

    def load_data(self) -> LoadedData:
        """Every split's records with normalised, encoded transcripts, checked; the vocabulary
        from the training transcripts (or ``vocabulary``)."""
        records = self.read_records()
        if not records:
            raise DataError(self.source, None, "no transcribed utterances found")
        records = [dataclasses.replace(r, label=self.normalizer(str(r.label))) for r in records]
        for r in records:
            if not r.label:
                raise DataError(self.source, r.id, "empty transcript (after normalisation): CTC needs at least one "
                                                   "character to align")
        splits = assign_splits(records, self.val_fraction, self.test_fraction, self.seed, self.source)
        vocabulary = character_vocabulary(((r.id, r.label) for r in splits["train"]), self.vocabulary, self.source)
        splits = {name: [self._checked(r, vocabulary) for r in split] for name, split in splits.items()}
        return LoadedData(splits, vocabulary)

    def _checked(self, record: AudioRecord, vocabulary, source: Any = None) -> TranscribedRecord:
        """The record with its encoded transcript (``None`` without one), its audio checked."""
        source = self.source if source is None else source
        targets = None if record.label is None else tuple(
            encode_transcript(str(record.label), vocabulary, source, record.id, self.unknown_chars))
        record = TranscribedRecord(**{f.name: getattr(record, f.name) for f in dataclasses.fields(AudioRecord)},
                                   targets=targets)
        if not self.check_files:
            return record
        first, stop, info = self._segment_frames(record)
        seconds = (stop - first) / info.sample_rate
        if self.max_seconds is not None and seconds > self.max_seconds:
            raise DataError(source, record.id, f"{seconds:.2f} s of audio, longer than max_seconds "
                                               f"{self.max_seconds} (transcribed audio is never cropped)")
        if self.frame_stride is not None and targets is not None:
            frames = int(seconds * self.sample_rate) // self.frame_stride
            needed = ctc_frames_needed(targets)
            if frames < needed:
                raise DataError(source, record.id,
                                f"{seconds:.2f} s of audio gives about {frames} encoder frame(s), fewer than the "
                                f"{needed} its transcript {record.label!r} needs for CTC (too short for its "
                                f"transcript)")
        return record

    # ---- audio to transcribe (predict_path) ------------------------------------------------
    @property
    def predict_records(self) -> list[TranscribedRecord]:
        """The utterances of ``predict_path``, transcripts normalised and encoded where given, checked."""
        if self._predict_records is None:
            self._predict_records = self._read_predict_path()
        return self._predict_records

    def _read_predict_path(self) -> list[TranscribedRecord]:
        from peftlab_speech.data.kaldi import read_kaldi_dir  # kaldi's DataModules import this module

        path = Path(self.predict_path)
        if path.is_dir() and (path / "wav.scp").is_file():
            records = read_kaldi_dir(path, getattr(self, "audio_root", None), transcripts_required=False)
        elif path.is_file():
            records = read_transcript_csv(path, getattr(self, "path_column", "path"),
                                          getattr(self, "transcript_column", "transcript"),
                                          getattr(self, "id_column", "id"), getattr(self, "audio_root", None),
                                          transcripts_required=False)
        else:
            records = read_audio_folder(data_folder(self.predict_path, "predict_path"))
        with_text = [r for r in records if r.label is not None]
        if with_text and len(with_text) < len(records):
            first = next(r for r in records if r.label is None)
            raise DataError(path, first.id, f"no transcript, while {len(with_text)} of the {len(records)} "
                                            "utterances have one (give every utterance a transcript, or none)")
        records = [r if r.label is None else dataclasses.replace(r, label=self.normalizer(str(r.label)))
                   for r in records]
        for r in records:
            if r.label == "":
                raise DataError(path, r.id, "empty transcript (after normalisation): give the utterance its "
                                            "transcript, or no utterance one")
        return [self._checked(r, self.labels, source=path) for r in records]

    def predict_dataloader(self):
        """``predict_path``'s utterances when given, else the ``predict_split``."""
        if self.predict_path is None:
            return super().predict_dataloader()
        return self._loader("predict", train=False, records=self.predict_records)

    def make_dataset(self, records: list[AudioRecord], train: bool) -> TranscribedDataset:
        return TranscribedDataset(records, sample_rate=self.sample_rate, max_seconds=None, train=train,
                                  augmentation=self.augmentation() if train else None, seed=self.seed,
                                  expected_sample_rate=self.expected_sample_rate, max_channels=self.max_channels)

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_transcribed(items)

    def sampler_options(self) -> dict[str, Any]:
        if self.max_batch_seconds is None:
            return {}
        return {"max_tokens": max(1, int(self.max_batch_seconds * self.sample_rate))}


# ---- CSV manifests ------------------------------------------------------------------------------------

class TranscriptCSVDataModule(TranscriptionDataModule):
    """Speech recognition from a CSV manifest: an audio path and a transcript per row.

    Args:
        path: the manifest CSV.
        path_column / transcript_column / id_column: column names (defaults
            ``path``, ``transcript``, ``id``; speechocean762's manifest uses
            ``audio``, ``transcript``, ``utt_id``). Optional ``start`` / ``end``
            (seconds) and ``split`` columns as in
            :class:`~peftlab_speech.data.audio_csv.AudioCSVDataModule`.
        audio_root: the folder relative audio paths start from (default: the CSV's folder).
        **kwargs: see :class:`TranscriptionDataModule`.
    """

    def __init__(self, path: str | None = None, path_column: str = "path", transcript_column: str = "transcript",
                 id_column: str = "id", audio_root: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.path, self.audio_root = path, audio_root
        self.path_column, self.transcript_column, self.id_column = path_column, transcript_column, id_column

    def read_records(self) -> list[AudioRecord]:
        if self.path is None:
            raise ValueError(f"{type(self).__name__} needs a manifest path (--data.path)")
        return read_transcript_csv(self.path, self.path_column, self.transcript_column, self.id_column,
                                   self.audio_root)


def read_transcript_csv(path: str | Path, path_column: str = "path", transcript_column: str = "transcript",
                        id_column: str = "id", audio_root: str | Path | None = None,
                        transcripts_required: bool = True) -> list[AudioRecord]:
    """The utterances of a CSV manifest (see :class:`TranscriptCSVDataModule`), transcripts as their labels.
    Without ``transcripts_required`` the transcript column may be missing or empty (label ``None``)."""
    csv_path = Path(path)
    root = Path(audio_root) if audio_root else csv_path.parent
    required = (path_column, transcript_column) if transcripts_required else (path_column,)
    _, rows = manifest_rows(csv_path, required, strip_header=True)
    ids, records = UniqueIds(csv_path), []
    for where, row in rows:
        written = (row.get(path_column) or "").strip()
        if not written:
            raise DataError(csv_path, where, f"empty {path_column!r}")
        record_id = ids.add((row.get(id_column) or "").strip() or written, where)
        audio = listed_file(csv_path, f"{where} ({record_id})", written, root, "audio")
        start, end = (_seconds(row.get(c, ""), c, csv_path, where) for c in ("start", "end"))
        if start is not None and end is not None and end <= start:
            raise DataError(csv_path, where, f"end {end} is not after start {start}")
        transcript = row.get(transcript_column)
        records.append(AudioRecord(id=record_id, path=str(audio), start=start, end=end,
                                   label=transcript if transcripts_required or (transcript or "").strip() else None,
                                   split=_split(row.get("split", ""), csv_path, where)))
    return records


def read_audio_folder(folder: str | Path) -> list[AudioRecord]:
    """Every WAV/FLAC file under ``folder`` (recursively, hidden files skipped) as an utterance without a
    transcript, its id the path relative to ``folder`` without the suffix."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise DataError(folder, None, f"no audio files ({', '.join(AUDIO_SUFFIXES)}) found")
    return [AudioRecord(id=p.relative_to(folder).with_suffix("").as_posix(), path=str(p), label=None)
            for p in files]


# ---- FSDD as speech recognition -----------------------------------------------------------------------

class FSDDTranscriptionDataModule(TranscriptionDataModule):
    """The Free Spoken Digit Dataset read as speech recognition: each recording's transcript
    is its digit's English word (``7_jackson_32.wav``: ``SEVEN``). Splits as
    :class:`~peftlab_speech.data.fsdd.FSDDDataModule` (takes 0-4 test, val carved
    from train); 8 kHz files resampled to ``sample_rate``.

    Args:
        path: the data set root (holding ``recordings/``) or the recordings folder.
        **kwargs: see :class:`TranscriptionDataModule`.
    """

    def __init__(self, path: str | None = None, **kwargs: Any):
        super().__init__(test_fraction=0.0, **kwargs)
        self.path = path

    def read_records(self) -> list[AudioRecord]:
        root = data_folder(self.path, type(self).__name__)
        folder = root / "recordings" if (root / "recordings").is_dir() else root
        records = []
        for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            digit, _, take = parse_fsdd_name(f)
            records.append(AudioRecord(id=f.stem, path=str(f), label=DIGIT_WORDS[int(digit)],
                                       split="test" if take < FSDD_TEST_TAKES else "train"))
        if not records:
            raise DataError(folder, None, "no FSDD recordings found")
        return records
