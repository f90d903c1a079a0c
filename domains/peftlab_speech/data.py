"""Audio data: loading, training augmentation and the speech DataModules.

Three layouts are read, all producing :class:`AudioRecord` objects:

* **Speech Commands** (:class:`SpeechCommandsDataModule`): one folder per
  word holding WAVs; ``validation_list.txt`` and ``testing_list.txt`` (paths
  relative to the root, one per line) define val and test, the rest is train.
  ``_background_noise_/`` is not a word: it feeds noise augmentation and the
  ``_silence_`` class of the 12-class keyword-spotting mapping.
* **FSDD** (:class:`FSDDDataModule`): Free Spoken Digit Dataset files named
  ``{digit}_{speaker}_{take}.wav`` in ``recordings/``; takes 0-4 are test.
* **CSV manifest** (:class:`AudioCSVDataModule`): ``path,label`` with optional
  ``id``, ``start``/``end`` (seconds) and ``split`` columns, e.g. exports of
  emotion corpora (CREMA-D, IEMOCAP).

Every item is decoded by :func:`load_audio`: soundfile reads the file (or the
``[start, end)`` segment of it), channels are averaged to mono, torchaudio
resamples to ``sample_rate`` and the clip is cropped to ``max_seconds``:
**a random window on the train split, the centre window on val/test/predict**.
Only the frames of the window are read, and the crop is taken before
resampling. Padding happens in :func:`collate_audio`.

Training items (and only those) then go through :class:`AudioAugmentation`:
a random time shift, a random gain and additive background noise at a chosen
SNR, each with its own probability. The random numbers of an item come from a
``torch.Generator`` seeded with (DataModule seed, epoch, item index), so the
training stream is the same for a seed and an epoch whatever the number of
DataLoader workers, and a resumed run sees the same crops and noise.

Every problem in the input raises :class:`peftlab.data.DataError` naming the
file: a missing, corrupt or unreadable file, an empty file (0 frames), a
header sample rate outside :data:`MIN_SAMPLE_RATE`-:data:`MAX_SAMPLE_RATE` Hz
(a corrupt header) or one that torchaudio cannot resample to ``sample_rate``
without a huge filter (rates with no usable common factor, e.g. 44101 Hz), a
sample rate or channel count outside the user's constraints
(``expected_sample_rate``, ``max_channels``), a segment outside the file, a
manifest or list-file row naming a missing file, a manifest or list file that
is not UTF-8 text, or an FSDD name that does not match the pattern. With
``check_files=True`` (the default) every file's header is read once
(``soundfile.info``, ~30 us a file) when the splits are loaded, so these
errors surface before training starts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf
import torch
import torchaudio
from torch.utils.data import DataLoader, Dataset

from peftlab.data import (DataError, PeftDataModule, assign_splits, csv_dict_reader, file_exists, item_seed,
                          open_text, rebuild_loader, seeded_split)

__all__ = [
    "AUDIO_SUFFIXES",
    "BACKGROUND_NOISE_DIR",
    "CROP_MODES",
    "DEFAULT_NOISE_SNR_DB",
    "FSDD_TEST_TAKES",
    "KWS12_LABELS",
    "KWS12_WORDS",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "SILENCE_LABEL",
    "UNKNOWN_LABEL",
    "AudioAugmentation",
    "AudioCSVDataModule",
    "AudioDataModule",
    "AudioDataset",
    "AudioInfo",
    "AudioRecord",
    "FSDDDataModule",
    "SpeechCommandsDataModule",
    "audio_info",
    "check_audio",
    "collate_audio",
    "item_seed",
    "load_audio",
    "parse_fsdd_name",
    "read_audio_csv",
]

AUDIO_SUFFIXES = (".wav", ".flac")
CROP_MODES = ("random", "center", "start")
DEFAULT_NOISE_SNR_DB = (5.0, 10.0, 15.0, 20.0)
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 768_000  # header rates outside this are corrupt headers
_RESAMPLE_TAP_LIMIT = 2**23  # taps of torchaudio's sinc filter bank (built in float64: 64 MiB per copy)
_READ_ERRORS = (RuntimeError, ValueError, TypeError, OSError)  # soundfile.LibsndfileError is a RuntimeError
_SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}


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


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says: frames per channel, sample rate and channel count."""

    frames: int
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------

def _existing_audio(path: str | Path, record: Any = None) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(p, record, "is a directory, not an audio file" if p.is_dir() else "audio file not found")
    return p


def _unreadable(path: Path, record: Any, err: Exception) -> DataError:
    return DataError(path, record, f"unreadable audio ({err}); expected a WAV or FLAC file that "
                                   "soundfile (libsndfile) can decode")


def audio_info(path: str | Path, record: Any = None) -> AudioInfo:
    """The header of an audio file (cheap: no samples are decoded).

    Raises:
        DataError: the file is missing or soundfile cannot read it.
    """
    p = _existing_audio(path, record)
    try:
        info = sf.info(str(p))
    except _READ_ERRORS as err:
        raise _unreadable(p, record, err) from None
    return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))


def resample_taps(orig_freq: int, new_freq: int) -> int:
    """Size of the filter bank torchaudio's sinc resampler builds for ``orig_freq -> new_freq``.

    torchaudio reduces both rates by their gcd and builds ``new x (orig + 2 * width)``
    taps: small for the usual rates (44100 -> 16000: 76,000), but 706 million
    for 44101 -> 16000, which would exhaust the memory.
    """
    if orig_freq == new_freq:
        return 0
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    width = math.ceil(6 * orig / (min(orig, new) * 0.99))  # lowpass_filter_width=6, rolloff=0.99
    return new * (orig + 2 * width)


def check_audio(path: str | Path, info: AudioInfo, *, start: float | None = None, end: float | None = None,
                expected_sample_rate: int | None = None, max_channels: int | None = None,
                record: Any = None, sample_rate: int | None = None) -> tuple[int, int]:
    """Validate a file's header against the constraints and return the segment's ``(first, stop)`` frames.

    ``sample_rate`` is the rate the file will be resampled to (``None``: not checked).

    Raises:
        DataError: empty file, a header sample rate outside
            :data:`MIN_SAMPLE_RATE`-:data:`MAX_SAMPLE_RATE`, or one that cannot be
            resampled to ``sample_rate`` within a sane filter size, unexpected
            sample rate or channel count, or a segment that is empty or lies
            (partly) outside the file.
    """
    if info.frames <= 0:
        raise DataError(path, record, "empty audio file (0 frames)")
    if not MIN_SAMPLE_RATE <= info.sample_rate <= MAX_SAMPLE_RATE:
        raise DataError(path, record, f"sample rate {info.sample_rate} Hz in the header is outside "
                                      f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz (a corrupt header?)")
    if sample_rate is not None and resample_taps(info.sample_rate, sample_rate) > _RESAMPLE_TAP_LIMIT:
        taps = resample_taps(info.sample_rate, sample_rate)
        raise DataError(path, record, f"sample rate {info.sample_rate} Hz cannot be resampled to {sample_rate} Hz: "
                                      f"the rates share no usable common factor, so torchaudio would build a "
                                      f"{taps / 1e6:.0f}M-tap filter; convert the file to a standard rate "
                                      "(e.g. 16000, 22050, 44100 or 48000 Hz)")
    if expected_sample_rate is not None and info.sample_rate != expected_sample_rate:
        raise DataError(path, record, f"sample rate {info.sample_rate} Hz, expected {expected_sample_rate} Hz "
                                      "(expected_sample_rate)")
    if max_channels is not None and info.channels > max_channels:
        raise DataError(path, record, f"{info.channels} channels, at most {max_channels} allowed (max_channels)")
    first = 0 if start is None else int(round(start * info.sample_rate))
    stop = info.frames if end is None else int(round(end * info.sample_rate))
    if first < 0 or stop <= first or first >= info.frames or stop > info.frames:
        shown = f"[{0.0 if start is None else start}, {info.seconds if end is None else end}) s"
        raise DataError(path, record, f"segment {shown} lies outside the file ({info.seconds:.3f} s) or is empty")
    return first, stop


@functools.lru_cache(maxsize=32)
def _resampler(orig_freq: int, new_freq: int) -> torchaudio.transforms.Resample:
    """torchaudio's resampler, whose sinc kernel is computed once per rate pair."""
    return torchaudio.transforms.Resample(orig_freq, new_freq)


def _crop_offset(total: int, window: int, crop: str, generator: torch.Generator | None) -> int:
    if total <= window or crop == "start":
        return 0
    if crop == "center":
        return (total - window) // 2
    return int(torch.randint(0, total - window + 1, (1,), generator=generator))


def load_audio(path: str | Path, *, sample_rate: int = 16000, start: float | None = None,
               end: float | None = None, max_seconds: float | None = None, crop: str = "center",
               generator: torch.Generator | None = None, expected_sample_rate: int | None = None,
               max_channels: int | None = None, record: Any = None) -> torch.Tensor:
    """Decode one file (or its ``[start, end)`` segment) to a mono float waveform at ``sample_rate``.

    Args:
        path: a WAV or FLAC file (any format soundfile reads works).
        sample_rate: the output rate; other rates are resampled with torchaudio.
        start, end: segment in seconds (``None``: start / end of the file).
        max_seconds: keep at most this many seconds (``None``: everything).
            The window is chosen by ``crop`` and only its frames are read.
        crop: ``"random"`` (training), ``"center"`` (evaluation) or ``"start"``.
        generator: the random source of ``crop="random"``.
        expected_sample_rate: if set, any other file rate is an error.
        max_channels: if set, more channels is an error.
        record: the record id, for error messages.

    Returns:
        A float32 tensor ``[N]``: channels averaged, values as soundfile scales
        them (int PCM -> [-1, 1)), ``N <= round(max_seconds * sample_rate)``.

    Raises:
        DataError: see :func:`audio_info` and :func:`check_audio`; also a
            truncated file or non-finite samples.
    """
    if crop not in CROP_MODES:
        raise ValueError(f"crop must be one of {CROP_MODES}, got {crop!r}")
    p = _existing_audio(path, record)
    max_samples = None if max_seconds is None else max(1, int(round(max_seconds * sample_rate)))
    try:
        with sf.SoundFile(str(p)) as f:
            info = AudioInfo(int(f.frames), int(f.samplerate), int(f.channels))
            first, stop = check_audio(p, info, start=start, end=end, expected_sample_rate=expected_sample_rate,
                                      max_channels=max_channels, record=record, sample_rate=sample_rate)
            count = stop - first
            if max_samples is not None:  # the window in source frames, enough for max_samples after resampling
                window = math.ceil(max_samples * info.sample_rate / sample_rate)
                offset = _crop_offset(count, window, crop, generator)
                first, count = first + offset, min(count, window)
            f.seek(first)
            data = f.read(count, dtype="float32", always_2d=True)
    except DataError:
        raise
    except _READ_ERRORS as err:
        raise _unreadable(p, record, err) from None
    if data.shape[0] != count:
        raise DataError(p, record, f"truncated file: the header promises {count} more frames from frame "
                                   f"{first}, only {data.shape[0]} could be read")
    waveform = torch.from_numpy(data).mean(dim=1)  # down-mix: the mean of the channels
    if info.sample_rate != sample_rate:
        waveform = _resampler(info.sample_rate, sample_rate)(waveform)
    if max_samples is not None:
        waveform = waveform[:max_samples]
    if not torch.isfinite(waveform).all():
        raise DataError(p, record, "non-finite sample values (NaN or inf)")
    return waveform.contiguous()


# ---------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------

class AudioAugmentation:
    """Training-only waveform augmentation: time shift, gain, then background noise.

    Each step happens with its own probability, drawn from the ``generator``
    passed in (so an item's augmentation is reproducible):

    * **time shift**: the waveform moves by a uniform ``[-max_shift_seconds,
      max_shift_seconds]``; the vacated part is zero-filled (no wrap-around).
    * **gain**: a uniform ``[-max_gain_db, max_gain_db]`` dB (torchaudio ``gain``).
    * **background noise**: one of ``noise`` (records whose files and
      segments are the noise), a random stretch of it (tiled if shorter than
      the clip), added at an SNR picked uniformly from ``noise_snr_db``
      (torchaudio ``add_noise``: the SNR is measured over the whole clip).

    Args:
        noise: noise segments; empty: no noise augmentation.
        sample_rate: rate of the waveforms (noise files are resampled to it).
        noise_snr_db: the SNRs in dB to choose from; one value gives a fixed SNR.
        noise_prob, shift_prob, gain_prob: probability of each step.
        max_shift_seconds, max_gain_db: ranges of the shift and the gain.
    """

    def __init__(self, noise: Sequence[AudioRecord] = (), *, sample_rate: int = 16000,
                 noise_snr_db: Sequence[float] = DEFAULT_NOISE_SNR_DB, noise_prob: float = 0.8,
                 shift_prob: float = 0.5, max_shift_seconds: float = 0.1, gain_prob: float = 0.5,
                 max_gain_db: float = 6.0):
        for name, p in (("noise_prob", noise_prob), ("shift_prob", shift_prob), ("gain_prob", gain_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if not noise_snr_db:
            raise ValueError("noise_snr_db must hold at least one SNR value")
        if max_shift_seconds < 0 or max_gain_db < 0:
            raise ValueError("max_shift_seconds and max_gain_db must be >= 0")
        self.noise = list(noise)
        self.sample_rate = sample_rate
        self.noise_snr_db = [float(x) for x in noise_snr_db]
        self.noise_prob, self.shift_prob, self.gain_prob = noise_prob, shift_prob, gain_prob
        self.max_shift = int(round(max_shift_seconds * sample_rate))
        self.max_gain_db = max_gain_db
        self._noise_cache: dict[int, torch.Tensor] = {}  # decoded lazily, once per worker process

    def __getstate__(self) -> dict[str, Any]:  # do not ship decoded noise to workers
        return {**self.__dict__, "_noise_cache": {}}

    def noise_waveform(self, i: int) -> torch.Tensor:
        """The ``i``-th noise segment, decoded at ``sample_rate`` (cached)."""
        if i not in self._noise_cache:
            r = self.noise[i]
            self._noise_cache[i] = load_audio(r.path, sample_rate=self.sample_rate, start=r.start, end=r.end,
                                              record=r.id)
        return self._noise_cache[i]

    @staticmethod
    def _chance(p: float, generator: torch.Generator) -> bool:
        return p > 0 and float(torch.rand((), generator=generator)) < p

    def shift(self, waveform: torch.Tensor, samples: int) -> torch.Tensor:
        """``waveform`` moved right by ``samples`` (left if negative), zero-filled."""
        n = waveform.numel()
        samples = max(-n, min(n, samples))
        out = torch.zeros_like(waveform)
        if samples >= 0:
            out[samples:] = waveform[: n - samples]
        else:
            out[: n + samples] = waveform[-samples:]
        return out

    def add_noise(self, waveform: torch.Tensor, noise: torch.Tensor, snr_db: float,
                  generator: torch.Generator) -> torch.Tensor:
        """``waveform`` plus a random stretch of ``noise`` scaled to ``snr_db``."""
        n = waveform.numel()
        if noise.numel() < n:
            noise = noise.repeat(math.ceil(n / noise.numel()))
        offset = int(torch.randint(0, noise.numel() - n + 1, (1,), generator=generator))
        piece = noise[offset : offset + n]
        if not piece.abs().sum() > 0 or not waveform.abs().sum() > 0:
            return waveform  # silent noise or silent clip: no SNR to set
        return torchaudio.functional.add_noise(waveform[None], piece[None],
                                               torch.tensor([snr_db], dtype=waveform.dtype))[0]

    def __call__(self, waveform: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.max_shift and self._chance(self.shift_prob, generator):
            waveform = self.shift(waveform, int(torch.randint(-self.max_shift, self.max_shift + 1, (1,),
                                                              generator=generator)))
        if self.max_gain_db and self._chance(self.gain_prob, generator):
            gain = (float(torch.rand((), generator=generator)) * 2 - 1) * self.max_gain_db
            waveform = torchaudio.functional.gain(waveform, gain)
        if self.noise and self._chance(self.noise_prob, generator):
            i = int(torch.randint(0, len(self.noise), (1,), generator=generator))
            snr = self.noise_snr_db[int(torch.randint(0, len(self.noise_snr_db), (1,), generator=generator))]
            waveform = self.add_noise(waveform, self.noise_waveform(i), snr, generator)
        return waveform


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
        return {"waveform": waveform, "label": int(record.label), "id": record.id}


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

def _audio_files(folder: Path) -> list[Path]:
    """WAV/FLAC files directly in ``folder``, sorted, hidden files skipped."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in AUDIO_SUFFIXES)


def _existing_dir(path: str | None, owner: str) -> Path:
    if path is None:
        raise ValueError(f"{owner} needs a data path (--data.path)")
    p = Path(path)
    if not p.is_dir():
        raise DataError(p, None, "is a file, not a data folder" if p.exists() else "data folder not found")
    return p


class AudioDataModule(PeftDataModule):
    """Base of the audio DataModules: decoding, augmentation, labels, batches.

    Subclasses implement :meth:`read_records` (records with class-name labels
    and, when the data defines them, splits); this class maps labels to
    indices, assigns missing splits, checks the files, and builds datasets
    and loaders. ``task_type`` is always ``multiclass``.

    Args:
        sample_rate: rate the encoder expects; every file is resampled to it.
        max_seconds: longest clip kept (random window on train, centre window
            otherwise); ``None`` keeps whole files.
        augment: apply :class:`AudioAugmentation` to training items.
        noise_files: extra background-noise WAV/FLAC files or folders of them
            for noise augmentation (Speech Commands adds its own).
        noise_snr_db: SNRs in dB that noise is mixed at, one picked uniformly
            per item (``None``: 5, 10, 15 and 20 dB).
        noise_prob / shift_prob / gain_prob: probabilities of the noise,
            time-shift and gain steps.
        max_shift_seconds: largest time shift (either direction).
        max_gain_db: largest gain change (either direction), in dB.
        expected_sample_rate: if set, a file at another rate is an error.
        max_channels: if set, a file with more channels is an error.
        check_files: read every file's header when the splits are loaded, so
            that bad files fail before training.
        label_names: class names in index order (default: the sorted labels).
        batch_size / num_workers / seed / group_by_length / val_fraction /
            test_fraction / predict_split: see :class:`peftlab.data.PeftDataModule`;
            lengths for grouping are durations in samples at ``sample_rate``
            after the crop, read from the headers.
    """

    input_keys = ("waveforms", "lengths")

    tags_epochs = True  # augmentation seeded per (seed, epoch, item): the same with any workers, exact on resume

    def __init__(self, sample_rate: int = 16000, max_seconds: float | None = 1.0, augment: bool = True,
                 noise_files: list[str] | None = None, noise_snr_db: list[float] | None = None,
                 noise_prob: float = 0.8, shift_prob: float = 0.5, max_shift_seconds: float = 0.1,
                 gain_prob: float = 0.5, max_gain_db: float = 6.0, expected_sample_rate: int | None = None,
                 max_channels: int | None = None, check_files: bool = True,
                 label_names: list[str] | None = None, batch_size: int = 16, num_workers: int = 0,
                 seed: int = 0, group_by_length: bool = True, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, predict_split: str = "test"):
        super().__init__(task_type="multiclass", batch_size=batch_size, num_workers=num_workers, seed=seed,
                         group_by_length=group_by_length, val_fraction=val_fraction,
                         test_fraction=test_fraction, predict_split=predict_split)
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

    def default_label_names(self, records: Sequence[AudioRecord]) -> list[str]:
        """Class names when the user gives none: the sorted set of labels."""
        return sorted({str(r.label) for r in records})

    def extra_noise(self) -> list[AudioRecord]:
        """Noise segments the data set itself provides (Speech Commands background noise)."""
        return []

    # ---- loading ----------------------------------------------------------------------
    def load_splits(self) -> dict[str, list[AudioRecord]]:
        records = self._resolve_labels(self.read_records())
        splits = assign_splits(records, self.val_fraction, self.test_fraction, self.seed, self.source)
        if self.check_files:
            for split_records in splits.values():
                for r in split_records:
                    self._segment_frames(r)
            if self.augment:
                for r in self.noise_records:
                    self._segment_frames(r)
        return splits

    def _resolve_labels(self, records: list[AudioRecord]) -> list[AudioRecord]:
        """Fix the class vocabulary once, so every split maps labels alike."""
        if not records:
            raise DataError(self.source, None, "no audio records found")
        names = self.given_label_names or self.default_label_names(records)
        if len(set(names)) != len(names):
            raise ValueError(f"label_names has duplicates: {names}")
        index = {name: i for i, name in enumerate(names)}
        for r in records:
            if str(r.label) not in index:
                raise DataError(self.source, r.id, f"label {r.label!r} is not one of label_names {names}")
        self._label_names, self._num_outputs = list(names), len(names)
        return [dataclasses.replace(r, label=index[str(r.label)]) for r in records]

    @property
    def noise_records(self) -> list[AudioRecord]:
        """Noise segments for augmentation: the data set's own plus ``noise_files``."""
        if self._noise is None:
            noise = list(self.extra_noise())
            for entry in self.noise_files:
                p = Path(entry)
                files = _audio_files(p) if p.is_dir() else [p]
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

    # ---- task description (num_outputs / label_names: PeftDataModule, set by _resolve_labels) --
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


# ---------------------------------------------------------------------------------------
# Speech Commands
# ---------------------------------------------------------------------------------------

BACKGROUND_NOISE_DIR = "_background_noise_"
KWS12_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN_LABEL = "_unknown_"
SILENCE_LABEL = "_silence_"
KWS12_LABELS = (*KWS12_WORDS, UNKNOWN_LABEL, SILENCE_LABEL)  # the SUPERB / s3prl class order
SILENCE_SECONDS = 1.0
# each background-noise file is cut in time: _silence_ crops of a split come from
# its own stretch (train: first 80 %, val: next 10 %, test: last 10 %), and noise
# augmentation uses the train stretch only, so no noise audio is shared across splits
NOISE_REGIONS = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}
SPEECH_COMMANDS_LISTS = {"val": "validation_list.txt", "test": "testing_list.txt"}


class SpeechCommandsDataModule(AudioDataModule):
    """Google Speech Commands (v0.01 / v0.02 layout) for keyword spotting.

    Every folder under ``path`` whose name does not start with ``_`` or ``.``
    is a word; its WAVs are that word's examples (ids: ``word/file.wav``).
    ``validation_list.txt`` / ``testing_list.txt`` list the val / test files
    (relative paths); everything else is train. If a list file is absent, that
    split is carved from the rest with :func:`peftlab.data.seeded_split`
    (``val_fraction`` / ``test_fraction``, file-level: speakers may then
    leak across splits).

    With ``keyword_spotting_12=True`` the labels are the SUPERB KS classes:
    ``yes no up down left right on off stop go``, ``_unknown_`` (every other
    word; all of them are kept) and ``_silence_``. Silence examples are 1 s
    crops of ``_background_noise_/`` files at seeded random offsets; a split
    gets as many as the average command-word class of that split has
    (rounded; the mean over the command words present in the data set), and
    its crops come from its own time stretch of each noise file (train: first
    80 %, val: next 10 %, test: last 10 %).

    ``_background_noise_/`` (first 80 % of each file) also feeds noise
    augmentation on train.

    Args:
        path: the data set root (the folder holding the word folders).
        keyword_spotting_12: use the 12-class mapping described above.
        sample_rate / max_seconds / ...: see :class:`AudioDataModule`
            (``max_seconds`` defaults to 1.0: Speech Commands clips are <= 1 s).
    """

    def __init__(self, path: str | None = None, keyword_spotting_12: bool = False, sample_rate: int = 16000,
                 max_seconds: float | None = 1.0, augment: bool = True, noise_files: list[str] | None = None,
                 noise_snr_db: list[float] | None = None, noise_prob: float = 0.8, shift_prob: float = 0.5,
                 max_shift_seconds: float = 0.1, gain_prob: float = 0.5, max_gain_db: float = 6.0,
                 expected_sample_rate: int | None = None, max_channels: int | None = None,
                 check_files: bool = True, label_names: list[str] | None = None, batch_size: int = 16,
                 num_workers: int = 0, seed: int = 0, group_by_length: bool = True, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, predict_split: str = "test"):
        super().__init__(sample_rate=sample_rate, max_seconds=max_seconds, augment=augment,
                         noise_files=noise_files, noise_snr_db=noise_snr_db, noise_prob=noise_prob,
                         shift_prob=shift_prob, max_shift_seconds=max_shift_seconds, gain_prob=gain_prob,
                         max_gain_db=max_gain_db, expected_sample_rate=expected_sample_rate,
                         max_channels=max_channels, check_files=check_files, label_names=label_names,
                         batch_size=batch_size, num_workers=num_workers, seed=seed,
                         group_by_length=group_by_length, val_fraction=val_fraction,
                         test_fraction=test_fraction, predict_split=predict_split)
        self.path = path
        self.keyword_spotting_12 = keyword_spotting_12

    @property
    def root(self) -> Path:
        return _existing_dir(self.path, type(self).__name__)

    def background_noise_files(self) -> list[Path]:
        folder = self.root / BACKGROUND_NOISE_DIR
        return _audio_files(folder) if folder.is_dir() else []

    def _read_list(self, list_path: Path, files: dict[str, Path]) -> list[str]:
        """Ids named by a list file, each checked to be a word file of the data set."""
        ids = []
        with open_text(list_path) as f:
            for n, line in enumerate(f, start=1):
                rel = line.strip().replace("\\", "/").removeprefix("./")
                if not rel:
                    continue
                if rel not in files:
                    full = self.root / rel
                    try:
                        problem = ("is not an audio file of a word folder" if full.is_file()
                                   else f"not found ({full})")
                    except OSError as error:  # e.g. a name longer than the file system allows
                        problem = f"is not a usable file name ({error.strerror})"
                        rel = rel if len(rel) <= 80 else rel[:80] + "..."
                    raise DataError(list_path, f"line {n}", f"listed file {rel!r} {problem}")
                ids.append(rel)
        return ids

    def read_records(self) -> list[AudioRecord]:
        root = self.root
        files: dict[str, Path] = {}
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
            for f in _audio_files(folder):
                files[f"{folder.name}/{f.name}"] = f
        if not files:
            raise DataError(root, None, "no word folders with WAV files found (expected the Speech Commands "
                                        "layout: <root>/<word>/<file>.wav)")
        # splits from the list files
        split_of: dict[str, str] = {}
        listed = {s: root / name for s, name in SPEECH_COMMANDS_LISTS.items() if (root / name).is_file()}
        for split, list_path in listed.items():
            for rel in self._read_list(list_path, files):
                if split_of.get(rel, split) != split:
                    raise DataError(list_path, rel, f"also listed in {listed[split_of[rel]]}")
                split_of[rel] = split
        ids = sorted(files)
        rest = [i for i in ids if i not in split_of]
        missing = [s for s in ("val", "test") if s not in listed]
        if missing:  # carve what the lists do not give out of the unlisted files
            idx = seeded_split(len(rest), self.val_fraction if "val" in missing else 0.0,
                               self.test_fraction if "test" in missing else 0.0, self.seed)
            for split in missing:
                split_of.update({rest[i]: split for i in idx[split]})
        records = []
        for rel in ids:
            word = rel.split("/", 1)[0]
            label = word if not self.keyword_spotting_12 or word in KWS12_WORDS else UNKNOWN_LABEL
            records.append(AudioRecord(id=rel, path=str(files[rel]), label=label,
                                       split=split_of.get(rel, "train")))
        if self.keyword_spotting_12:
            records += self._silence_records(records)
        return records

    def default_label_names(self, records: Sequence[AudioRecord]) -> list[str]:
        return list(KWS12_LABELS) if self.keyword_spotting_12 else super().default_label_names(records)

    def _noise_infos(self) -> list[tuple[Path, AudioInfo]]:
        return [(p, self.file_info(str(p), f"{BACKGROUND_NOISE_DIR}/{p.name}")) for p in self.background_noise_files()]

    def _silence_records(self, records: list[AudioRecord]) -> list[AudioRecord]:
        """``_silence_`` examples: seeded 1 s crops of the background noise, per split (see the class doc)."""
        noise = self._noise_infos()
        if not noise:
            raise DataError(self.root / BACKGROUND_NOISE_DIR, None,
                            "keyword_spotting_12 needs background-noise WAVs here for the _silence_ class")
        words_present = {r.label for r in records if r.label in KWS12_WORDS}
        silence = []
        crop_ms = int(round(SILENCE_SECONDS * 1000))
        for split, (lo, hi) in NOISE_REGIONS.items():
            in_split = sum(1 for r in records if r.split == split and r.label in KWS12_WORDS)
            count = round(in_split / max(1, len(words_present)))
            if in_split and not count:
                count = 1
            # the split's stretch of each file, in whole milliseconds inside it
            stretches = [(p, math.ceil(round(lo * info.seconds * 1000, 6)),
                          math.floor(round(hi * info.seconds * 1000, 6))) for p, info in noise]
            usable = [(p, a, b) for p, a, b in stretches if b - a >= crop_ms]
            if count and not usable:
                raise DataError(self.root / BACKGROUND_NOISE_DIR, None,
                                f"no background-noise file is long enough for {SILENCE_SECONDS} s silence crops "
                                f"from its {split} stretch ({int(lo * 100)}-{int(hi * 100)} %)")
            rng = random.Random(f"{self.seed}/silence/{split}")
            for k in range(count):
                p, a, b = usable[rng.randrange(len(usable))]
                start = rng.randint(a, b - crop_ms) / 1000
                silence.append(AudioRecord(id=f"{SILENCE_LABEL}/{split}{k:05d}_{p.stem}", path=str(p),
                                           label=SILENCE_LABEL, start=start, end=start + SILENCE_SECONDS,
                                           split=split))
        return silence

    def extra_noise(self) -> list[AudioRecord]:
        lo, hi = NOISE_REGIONS["train"]
        return [AudioRecord(id=f"{BACKGROUND_NOISE_DIR}/{p.name}", path=str(p), label="_noise_",
                            start=lo * info.seconds, end=math.floor(hi * info.frames) / info.sample_rate)
                for p, info in self._noise_infos()]


# ---------------------------------------------------------------------------------------
# FSDD
# ---------------------------------------------------------------------------------------

FSDD_NAME = re.compile(r"^(?P<digit>[0-9])_(?P<speaker>[A-Za-z][A-Za-z0-9-]*)_(?P<take>[0-9]+)\.wav$")
FSDD_TEST_TAKES = 5  # takes 0-4 are the official test split
FSDD_TASKS = ("digit", "speaker")


def parse_fsdd_name(path: str | Path) -> tuple[str, str, int]:
    """``(digit, speaker, take)`` of an FSDD file name ``{digit}_{speaker}_{take}.wav``.

    Raises:
        DataError: the name does not match the pattern.
    """
    match = FSDD_NAME.fullmatch(Path(path).name)  # not match: "$" also matches before a final "\n"
    if match is None:
        raise DataError(path, None, "file name does not match the FSDD pattern {digit}_{speaker}_{take}.wav "
                                    "(e.g. 7_jackson_32.wav)")
    return match["digit"], match["speaker"], int(match["take"])


class FSDDDataModule(AudioDataModule):
    """Free Spoken Digit Dataset: 8 kHz mono recordings ``{digit}_{speaker}_{take}.wav``.

    The official split puts takes 0-4 in test and takes 5-49 in train; val is
    carved out of train with :func:`peftlab.data.seeded_split`
    (``val_fraction``, ``seed``). On the 3,000-file copy this gives
    train 2,430 / val 270 / test 300 with ``val_fraction=0.1``.

    Args:
        path: the data set root (holding ``recordings/``) or the recordings folder.
        task: ``"digit"`` (10 classes ``0``-``9``) or ``"speaker"`` (one class
            per speaker, sorted names; 6 in the shared copy).
        max_seconds: defaults to 1.5: FSDD recordings last 0.14-2.28 s (mean
            0.44 s); 2 of 3,000 are longer than 1.5 s and 20 longer than 1 s.
        sample_rate / augment / ...: see :class:`AudioDataModule`. The files are
            8 kHz: they are resampled to ``sample_rate`` (16 kHz for the encoders).
    """

    def __init__(self, path: str | None = None, task: str = "digit", sample_rate: int = 16000,
                 max_seconds: float | None = 1.5, augment: bool = True, noise_files: list[str] | None = None,
                 noise_snr_db: list[float] | None = None, noise_prob: float = 0.8, shift_prob: float = 0.5,
                 max_shift_seconds: float = 0.1, gain_prob: float = 0.5, max_gain_db: float = 6.0,
                 expected_sample_rate: int | None = None, max_channels: int | None = None,
                 check_files: bool = True, label_names: list[str] | None = None, batch_size: int = 16,
                 num_workers: int = 0, seed: int = 0, group_by_length: bool = True, val_fraction: float = 0.1,
                 predict_split: str = "test"):
        if task not in FSDD_TASKS:
            raise ValueError(f"task must be one of {FSDD_TASKS}, got {task!r}")
        super().__init__(sample_rate=sample_rate, max_seconds=max_seconds, augment=augment,
                         noise_files=noise_files, noise_snr_db=noise_snr_db, noise_prob=noise_prob,
                         shift_prob=shift_prob, max_shift_seconds=max_shift_seconds, gain_prob=gain_prob,
                         max_gain_db=max_gain_db, expected_sample_rate=expected_sample_rate,
                         max_channels=max_channels, check_files=check_files, label_names=label_names,
                         batch_size=batch_size, num_workers=num_workers, seed=seed,
                         group_by_length=group_by_length, val_fraction=val_fraction, test_fraction=0.0,
                         predict_split=predict_split)
        self.path = path
        self.task = task

    @property
    def recordings(self) -> Path:
        """The folder of WAVs: ``path/recordings`` if there is one, else ``path``."""
        root = _existing_dir(self.path, type(self).__name__)
        return root / "recordings" if (root / "recordings").is_dir() else root

    def read_records(self) -> list[AudioRecord]:
        folder = self.recordings
        records = []
        for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            digit, speaker, take = parse_fsdd_name(f)
            records.append(AudioRecord(id=f.stem, path=str(f), label=digit if self.task == "digit" else speaker,
                                       split="test" if take < FSDD_TEST_TAKES else "train"))
        if not records:
            raise DataError(folder, None, "no FSDD recordings found")
        return records


# ---------------------------------------------------------------------------------------
# CSV manifest
# ---------------------------------------------------------------------------------------

def _seconds(text: str, column: str, path: Path, record: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise DataError(path, record, f"{column} {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise DataError(path, record, f"{column} {text!r} must be a finite number >= 0")
    return value


def read_audio_csv(path: str | Path) -> list[AudioRecord]:
    """Read a manifest CSV: ``path,label`` plus optional ``id``, ``start``, ``end``, ``split``.

    Relative audio paths are relative to the CSV's folder. Ids come from the
    ``id`` column, else the ``path`` value as written, else (a path on several
    rows, e.g. segments of one recording) ``{path}@{start}-{end}``.

    Raises:
        DataError: missing columns, an empty path or label, a listed audio file
            that does not exist, a bad start/end or split value, duplicated ids.
    """
    csv_path = Path(path)
    if not csv_path.is_file():
        raise DataError(csv_path, None, "manifest file not found")
    with open_text(csv_path, newline="") as f:
        reader = csv_dict_reader(f, csv_path)
        header = [c.strip() for c in reader.fieldnames or []]
        repeated = sorted({c for c in header if c and header.count(c) > 1})
        if repeated:
            raise DataError(csv_path, "line 1", f"the header names column(s) {repeated} more than once")
        reader.fieldnames = header
        missing = [c for c in ("path", "label") if c not in header]
        if missing:
            raise DataError(csv_path, None, f"missing required column(s) {missing}; found columns {header}")
        rows = list(enumerate(reader, start=1))
    if not rows:
        raise DataError(csv_path, None, "no data rows")
    uses = Counter((row["path"] or "").strip() for _, row in rows)
    records, seen = [], set()
    for n, row in rows:
        where = f"row{n}"
        if None in row or any(v is None for v in row.values()):
            raise DataError(csv_path, where, "the number of fields differs from the header's")
        rel, label = row["path"].strip(), row["label"].strip()
        if not rel:
            raise DataError(csv_path, where, "empty path")
        if not label:
            raise DataError(csv_path, where, "empty label")
        audio = Path(rel) if Path(rel).is_absolute() else csv_path.parent / rel
        if not file_exists(csv_path, where, audio, rel, "audio"):
            raise DataError(csv_path, where, f"audio file {rel!r} not found ({audio})")
        start = _seconds(row.get("start", ""), "start", csv_path, where)
        end = _seconds(row.get("end", ""), "end", csv_path, where)
        if start is not None and end is not None and end <= start:
            raise DataError(csv_path, where, f"end {end} is not after start {start}")
        split_text = row.get("split", "").strip().lower()
        split = _SPLIT_NAMES.get(split_text) if split_text else None
        if split_text and split is None:
            raise DataError(csv_path, where, f"unknown split value {row['split']!r} (expected train, val or test)")
        record_id = row.get("id", "").strip()
        if not record_id:  # the path, made unique by the segment when the path repeats
            segment = f"@{0.0 if start is None else start}-{'end' if end is None else end}"
            record_id = rel if uses[rel] == 1 else rel + segment
        if record_id in seen:
            raise DataError(csv_path, where, f"duplicated id {record_id!r}")
        seen.add(record_id)
        records.append(AudioRecord(id=record_id, path=str(audio), label=label, start=start, end=end, split=split))
    return records


class AudioCSVDataModule(AudioDataModule):
    """Audio classification from a CSV manifest (e.g. CREMA-D / IEMOCAP emotion exports).

    Columns: ``path`` and ``label`` (required); ``id``, ``start`` / ``end``
    (segment in seconds, empty = file start / end) and ``split``
    (``train``/``val``/``test``; ``valid``/``validation``/``dev`` mean val) are
    optional. Relative paths are relative to the CSV's folder. Without a
    ``split`` column the split is seeded (``val_fraction``, ``test_fraction``);
    with one but no val rows, val is carved out of train.

    Args:
        path: the manifest CSV.
        max_seconds: defaults to 6.0 (emotional utterances run a few seconds).
        sample_rate / augment / ...: see :class:`AudioDataModule`.
    """

    def __init__(self, path: str | None = None, sample_rate: int = 16000, max_seconds: float | None = 6.0,
                 augment: bool = True, noise_files: list[str] | None = None, noise_snr_db: list[float] | None = None,
                 noise_prob: float = 0.8, shift_prob: float = 0.5, max_shift_seconds: float = 0.1,
                 gain_prob: float = 0.5, max_gain_db: float = 6.0, expected_sample_rate: int | None = None,
                 max_channels: int | None = None, check_files: bool = True, label_names: list[str] | None = None,
                 batch_size: int = 16, num_workers: int = 0, seed: int = 0, group_by_length: bool = True,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, predict_split: str = "test"):
        super().__init__(sample_rate=sample_rate, max_seconds=max_seconds, augment=augment,
                         noise_files=noise_files, noise_snr_db=noise_snr_db, noise_prob=noise_prob,
                         shift_prob=shift_prob, max_shift_seconds=max_shift_seconds, gain_prob=gain_prob,
                         max_gain_db=max_gain_db, expected_sample_rate=expected_sample_rate,
                         max_channels=max_channels, check_files=check_files, label_names=label_names,
                         batch_size=batch_size, num_workers=num_workers, seed=seed,
                         group_by_length=group_by_length, val_fraction=val_fraction,
                         test_fraction=test_fraction, predict_split=predict_split)
        self.path = path

    def read_records(self) -> list[AudioRecord]:
        if self.path is None:
            raise ValueError(f"{type(self).__name__} needs a manifest path (--data.path)")
        return read_audio_csv(self.path)
