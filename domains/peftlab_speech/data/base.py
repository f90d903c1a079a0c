"""The speech domain's base: the record type, the Dataset that decodes and
augments records per item, the collate function and :class:`AudioDataModule`,
which every audio DataModule (one per data set or file format) extends.

A format module implements :meth:`AudioDataModule.read_records` (records with
class-name labels and, where the data defines them, splits); the base builds
the label vocabulary (:func:`peftlab.data.class_vocabulary`), assigns missing
splits (:func:`peftlab.data.assign_splits`), checks every file's header and
makes the datasets and loaders.

Training items are decoded with a random crop and augmented
(:class:`~peftlab_speech.data.audio.AudioAugmentation`); the random numbers of
an item come from a ``torch.Generator`` seeded with (DataModule seed, epoch,
item index), so the training stream is the same for a seed and an epoch
whatever the number of DataLoader workers, and a resumed run sees the same
crops and noise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from peftlab.data import (DataError, LoadedData, PeftDataModule, assign_splits, class_vocabulary, item_seed,
                          rebuild_loader)
from peftlab_speech.data.audio import (DEFAULT_NOISE_SNR_DB, AudioAugmentation, AudioInfo, audio_files, audio_info,
                                       check_audio, load_audio)


@dataclass
class AudioRecord:
    """One audio example.

    Attributes:
        id: unique within a data set (Speech Commands: the path relative to the
            root; FSDD: the file stem; CSV: the ``id`` column or the path).
        path: the audio file.
        label: the class name ``str`` as read, or its index ``int`` inside a DataModule.
        start, end: the ``[start, end)`` segment in seconds; ``None`` means
            the start / the end of the file.
        split: ``"train"``, ``"val"`` or ``"test"`` when the data says so, else ``None``.
    """

    id: str
    path: str
    label: str | int
    start: float | None = None
    end: float | None = None
    split: str | None = None


# ---------------------------------------------------------------------------------------
# Dataset and collate (items keyed by (epoch, index): peftlab.data.EpochTaggedBatchSampler)
# ---------------------------------------------------------------------------------------

class AudioDataset(Dataset):
    """Decodes records per item: ``{"waveform": FloatTensor[N], "label": int, "id": str}``.

    With ``train=True`` the crop is random and ``augmentation`` (if any) is
    applied; the item's randomness comes from :func:`item_seed`. The
    DataModule's training loader asks for ``(epoch, index)`` keys; a plain
    ``int`` key counts the draws of that index instead (0, 1, 2, ... as the
    epoch), so repeated reads differ but replay identically. Evaluation items
    (``train=False``) take the centre window and are identical on every read.
    """

    def __init__(self, records: Sequence[AudioRecord], *, sample_rate: int = 16000,
                 max_seconds: float | None = None, train: bool = False,
                 augmentation: AudioAugmentation | None = None, seed: int = 0,
                 expected_sample_rate: int | None = None, max_channels: int | None = None):
        self.records = list(records)
        self.sample_rate = sample_rate
        self.max_seconds = max_seconds
        self.train = train
        self.augmentation = augmentation if train else None
        self.seed = seed
        self.expected_sample_rate = expected_sample_rate
        self.max_channels = max_channels
        self._draws: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.records)

    def load(self, record: AudioRecord, generator: torch.Generator | None) -> torch.Tensor:
        """The record's waveform, cropped (random crop when ``generator`` is given)."""
        return load_audio(record.path, sample_rate=self.sample_rate, start=record.start, end=record.end,
                          max_seconds=self.max_seconds, crop="random" if generator is not None else "center",
                          generator=generator, expected_sample_rate=self.expected_sample_rate,
                          max_channels=self.max_channels, record=record.id)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(key, tuple):
            epoch, index = key
        else:
            index = int(key)
            epoch = self._draws.get(index, 0)
            if self.train:
                self._draws[index] = epoch + 1
        record = self.records[index]
        generator = None
        if self.train:
            generator = torch.Generator().manual_seed(item_seed(self.seed, epoch, index))
        waveform = self.load(record, generator)
        if self.augmentation is not None:
            waveform = self.augmentation(waveform, generator)
        return {"waveform": waveform, "label": self.item_label(record), "id": record.id}

    def item_label(self, record: AudioRecord) -> Any:
        """What an item carries as its label: the class index (a transcription dataset: the symbol indices)."""
        return int(record.label)


def collate_audio(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Items -> ``{"waveforms": [B, N_max] zero-padded, "lengths": [B], "labels": [B], "ids": [...]}``."""
    if not items:
        raise ValueError("collate got an empty batch")
    waveforms = [item["waveform"] for item in items]
    return {
        "waveforms": torch.nn.utils.rnn.pad_sequence(waveforms, batch_first=True),
        "lengths": torch.tensor([w.numel() for w in waveforms], dtype=torch.long),
        "labels": torch.tensor([item["label"] for item in items], dtype=torch.long),
        "ids": [item["id"] for item in items],
    }


# ---------------------------------------------------------------------------------------
# The shared DataModule
# ---------------------------------------------------------------------------------------

def data_folder(path: str | None, owner: str) -> Path:
    """The data set folder ``path`` (``owner``: the DataModule, for the message when there is none)."""
    if path is None:
        raise ValueError(f"{owner} needs a data path (--data.path)")
    p = Path(path)
    if not p.is_dir():
        raise DataError(p, None, "is a file, not a data folder" if p.exists() else "data folder not found")
    return p


class AudioDataModule(PeftDataModule):
    """Base of the audio DataModules: decoding, augmentation, labels, batches.

    Subclasses implement :meth:`read_records` (records with class-name labels
    and, when the data defines them, splits); this class builds the label
    vocabulary, maps labels to indices, assigns missing splits, checks the
    files (:meth:`load_data`), and builds datasets and loaders. ``task_type``
    is always ``multiclass``; the options every DataModule shares (batch
    size, workers, seed, split fractions) pass on to
    :class:`peftlab.data.PeftDataModule` through ``**kwargs``.

    Args:
        sample_rate: rate the encoder expects; every file is resampled to it.
        max_seconds: longest clip kept (random window on train, centre window
            otherwise); ``None`` keeps whole files.
        augment: apply :class:`AudioAugmentation` to training items.
        noise_files: extra background-noise WAV/FLAC files or folders of them
            for noise augmentation (Speech Commands adds its own).
        noise_snr_db: SNRs in dB that noise is mixed at, one picked uniformly
            per item (``None``: 5, 10, 15 and 20 dB).
        noise_prob: probability of the background-noise step.
        shift_prob: probability of the time-shift step.
        gain_prob: probability of the gain step.
        max_shift_seconds: largest time shift (either direction).
        max_gain_db: largest gain change (either direction), in dB.
        expected_sample_rate: if set, a file at another rate is an error.
        max_channels: if set, a file with more channels is an error.
        check_files: read every file's header when the splits are loaded, so
            that bad files fail before training.
        label_names: class names in index order (default: the sorted labels).
        **kwargs: ``batch_size``, ``num_workers``, ``seed``, ``group_by_length``,
            ``val_fraction``, ``test_fraction``, ``predict_split``: see
            :class:`peftlab.data.PeftDataModule`; lengths for grouping are
            durations in samples at ``sample_rate`` after the crop, read from
            the headers.
    """

    input_keys = ("waveforms", "lengths")

    tags_epochs = True  # augmentation seeded per (seed, epoch, item): the same with any workers, exact on resume

    def __init__(self, sample_rate: int = 16000, max_seconds: float | None = 1.0, augment: bool = True,
                 noise_files: list[str] | None = None, noise_snr_db: list[float] | None = None,
                 noise_prob: float = 0.8, shift_prob: float = 0.5, max_shift_seconds: float = 0.1,
                 gain_prob: float = 0.5, max_gain_db: float = 6.0, expected_sample_rate: int | None = None,
                 max_channels: int | None = None, check_files: bool = True,
                 label_names: list[str] | None = None, **kwargs: Any):
        super().__init__(task_type="multiclass", **kwargs)
        if sample_rate < 1:
            raise ValueError(f"sample_rate must be >= 1, got {sample_rate}")
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0 or None, got {max_seconds}")
        if max_channels is not None and max_channels < 1:
            raise ValueError(f"max_channels must be >= 1, got {max_channels}")
        self.sample_rate = sample_rate
        self.max_seconds = max_seconds
        self.augment = augment
        self.noise_files = list(noise_files) if noise_files else []
        self.noise_snr_db = list(noise_snr_db) if noise_snr_db is not None else list(DEFAULT_NOISE_SNR_DB)
        self.expected_sample_rate = expected_sample_rate
        self.max_channels = max_channels
        self.check_files = check_files
        self.given_label_names = list(label_names) if label_names is not None else None
        # validates the augmentation arguments now, not at the first batch
        self._augment_args = dict(sample_rate=sample_rate, noise_snr_db=self.noise_snr_db, noise_prob=noise_prob,
                                  shift_prob=shift_prob, max_shift_seconds=max_shift_seconds,
                                  gain_prob=gain_prob, max_gain_db=max_gain_db)
        AudioAugmentation(**self._augment_args)
        self._info: dict[str, AudioInfo] = {}
        self._noise: list[AudioRecord] | None = None

    # ---- what a subclass implements ---------------------------------------------------
    @property
    def source(self) -> str:
        """Where the labels come from, for error messages."""
        return str(getattr(self, "path", None) or type(self).__name__)

    def read_records(self) -> list[AudioRecord]:
        """All records with class-name labels; ``split`` set where the data defines it."""
        raise NotImplementedError

    def label_order(self) -> list[str] | None:
        """Class names in index order: the user's ``label_names``; ``None`` (the
        default) sorts the labels found (a data set with a standard class order
        gives it here when the user gives none)."""
        return self.given_label_names or None

    def extra_noise(self) -> list[AudioRecord]:
        """Noise segments the data set itself provides (Speech Commands background noise)."""
        return []

    # ---- loading ----------------------------------------------------------------------
    def load_data(self) -> LoadedData:
        """The records of every split, labels as class indices, and the class vocabulary
        (fixed once from all records, so every split maps labels alike); with
        ``check_files`` every file's header is checked here, before training."""
        records = self.read_records()
        if not records:
            raise DataError(self.source, None, "no audio records found")
        labels = class_vocabulary(((r.id, r.label) for r in records), self.label_order(), self.source,
                                  self.task_type)
        records = [dataclasses.replace(r, label=labels.index[str(r.label)]) for r in records]
        splits = assign_splits(records, self.val_fraction, self.test_fraction, self.seed, self.source)
        if self.check_files:
            for split_records in splits.values():
                for r in split_records:
                    self._segment_frames(r)
            if self.augment:
                for r in self.noise_records:
                    self._segment_frames(r)
        return LoadedData(splits, labels)

    @property
    def noise_records(self) -> list[AudioRecord]:
        """Noise segments for augmentation: the data set's own plus ``noise_files``."""
        if self._noise is None:
            noise = list(self.extra_noise())
            for entry in self.noise_files:
                p = Path(entry)
                files = audio_files(p) if p.is_dir() else [p]
                noise += [AudioRecord(id=f"noise:{f}", path=str(f), label="_noise_") for f in files]
            self._noise = noise
        return self._noise

    def file_info(self, path: str, record: Any = None) -> AudioInfo:
        """A file's header, read once."""
        if path not in self._info:
            self._info[path] = audio_info(path, record)
        return self._info[path]

    def _segment_frames(self, record: AudioRecord) -> tuple[int, int, AudioInfo]:
        """Validate a record's file and segment; ``(first, stop, info)`` in file frames."""
        info = self.file_info(record.path, record.id)
        first, stop = check_audio(record.path, info, start=record.start, end=record.end,
                                  expected_sample_rate=self.expected_sample_rate,
                                  max_channels=self.max_channels, record=record.id, sample_rate=self.sample_rate)
        return first, stop, info

    # ---- lengths (num_outputs / label_names: PeftDataModule, from the vocabulary load_data returns) --
    @property
    def max_samples(self) -> int | None:
        return None if self.max_seconds is None else max(1, int(round(self.max_seconds * self.sample_rate)))

    def record_length(self, record: AudioRecord) -> int:
        """Samples the model sees: the segment's duration at ``sample_rate``, after the crop."""
        first, stop, info = self._segment_frames(record)
        n = math.ceil((stop - first) * self.sample_rate / info.sample_rate)
        return n if self.max_samples is None else min(n, self.max_samples)

    # ---- datasets and loaders ---------------------------------------------------------
    def augmentation(self) -> AudioAugmentation | None:
        """The training augmentation, or ``None`` when ``augment`` is off."""
        if not self.augment:
            return None
        return AudioAugmentation(self.noise_records, **self._augment_args)

    def make_dataset(self, records: list[AudioRecord], train: bool) -> AudioDataset:
        """An :class:`AudioDataset` over ``records`` (random crop + augmentation when ``train``)."""
        return AudioDataset(records, sample_rate=self.sample_rate, max_seconds=self.max_seconds, train=train,
                            augmentation=self.augmentation() if train else None, seed=self.seed,
                            expected_sample_rate=self.expected_sample_rate, max_channels=self.max_channels)

    def dataset(self, split: str, records: list[AudioRecord]) -> AudioDataset:
        """Items of ``split``: random crop and augmentation on ``train``, centre crop elsewhere."""
        return self.make_dataset(records, train=split == "train")

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_audio(items)

    def predict_dataloader(self) -> DataLoader:
        """Prediction never augments, not even on the train split."""
        loader = super().predict_dataloader()
        if self.predict_split != "train":
            return loader
        return rebuild_loader(loader, dataset=self.make_dataset(self.splits["train"], train=False))
