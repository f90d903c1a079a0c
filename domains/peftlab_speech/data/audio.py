"""Audio files: reading headers, checking them, decoding (soundfile), resampling
(torchaudio) and the training augmentation.

Every item is decoded by :func:`load_audio`: soundfile reads the file (or the
``[start, end)`` segment of it), channels are averaged to mono, torchaudio
resamples to ``sample_rate`` and the clip is cropped to ``max_seconds``:
**a random window on the train split, the centre window on val/test/predict**.
Only the frames of the window are read, and the crop is taken before
resampling. Padding happens in :func:`peftlab_speech.data.base.collate_audio`.

Training items (and only those) then go through :class:`AudioAugmentation`:
a random time shift, a random gain and additive background noise at a chosen
SNR, each with its own probability, drawn from the ``torch.Generator`` the
dataset seeds per (seed, epoch, item).

Every problem with a file raises :class:`peftlab.data.DataError` naming it: a
missing, corrupt or unreadable file, an empty file (0 frames), a header sample
rate outside :data:`MIN_SAMPLE_RATE`-:data:`MAX_SAMPLE_RATE` Hz (a corrupt
header) or one that torchaudio cannot resample to ``sample_rate`` without a
huge filter (rates with no usable common factor, e.g. 44101 Hz), a sample rate
or channel count outside the user's constraints (``expected_sample_rate``,
``max_channels``), a segment outside the file, a truncated file or non-finite
samples.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import soundfile as sf
import torch
import torchaudio

from peftlab.data import DataError

if TYPE_CHECKING:
    from peftlab_speech.data.base import AudioRecord

AUDIO_SUFFIXES = (".wav", ".flac")
CROP_MODES = ("random", "center", "start")
DEFAULT_NOISE_SNR_DB = (5.0, 10.0, 15.0, 20.0)
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 768_000  # header rates outside this are corrupt headers
_RESAMPLE_TAP_LIMIT = 2**23  # taps of torchaudio's sinc filter bank (built in float64: 64 MiB per copy)
_READ_ERRORS = (RuntimeError, ValueError, TypeError, OSError)  # soundfile.LibsndfileError is a RuntimeError


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


def audio_files(folder: Path) -> list[Path]:
    """WAV/FLAC files directly in ``folder``, sorted, hidden files skipped."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in AUDIO_SUFFIXES)


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


def _read_frames(f: sf.SoundFile, p: Path, info: AudioInfo, first: int, count: int, record: Any):
    """``count`` frames from frame ``first`` as float32 ``[count, channels]``; short reads are errors."""
    f.seek(first)
    try:
        data = f.read(count, dtype="float32", always_2d=True)
    except MemoryError:  # a corrupt header promising billions of frames
        raise DataError(p, record, f"the header promises {count} frames x {info.channels} channel(s) "
                                   f"({count / info.sample_rate:.0f} s), more than memory holds: a corrupt "
                                   f"header?") from None
    if data.shape[0] != count:
        raise DataError(p, record, f"truncated file: the header promises {count} more frames from frame "
                                   f"{first}, only {data.shape[0]} could be read")
    return data


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
            data = _read_frames(f, p, info, first, count, record)
    except DataError:
        raise
    except _READ_ERRORS as err:
        raise _unreadable(p, record, err) from None
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

