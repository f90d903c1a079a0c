"""A synthetic, offline audio task: which frequency band does the tone fall in?

Each clip is white noise plus one sine tone; the class is the tone's
frequency band. With the defaults there are 4 classes on octave bands between
200 Hz and 3,200 Hz (``200-400 Hz``, ``400-800 Hz``, ``800-1600 Hz``,
``1600-3200 Hz``). Per clip, everything else is random, so the band is the
only thing that tells the classes apart:

* the tone frequency is log-uniform inside the middle 80 % of its band (so
  bands never touch), its phase uniform;
* the tone lasts 50-100 % of the clip, starts at a random time and fades in and
  out over 10 ms;
* the tone amplitude is 0.05-0.5 and the noise is set to an SNR of 5-20 dB
  over the tone's span.

Clips are generated per item (no files) from a ``torch.Generator`` seeded with
(seed, clip index): the same seed gives the same clips, in any process.
Labels are balanced (clip ``i`` is class ``i % num_classes``) and the split is
:func:`peftlab.data.seeded_split`. Batches have the format of the other speech
DataModules, and training items get the same shift/gain augmentation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from peftlab_speech.data.base import AudioDataModule, AudioDataset, AudioRecord

__all__ = ["SyntheticToneDataModule", "band_edges", "make_tone_clip"]

SYNTHETIC_SOURCE = "<synthetic tones>"
FADE_SECONDS = 0.01


def band_edges(num_classes: int = 4, min_freq: float = 200.0, max_freq: float = 3200.0) -> list[tuple[float, float]]:
    """``num_classes`` log-spaced ``(low, high)`` bands covering ``[min_freq, max_freq]`` Hz."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not 0 < min_freq < max_freq:
        raise ValueError(f"need 0 < min_freq < max_freq, got {min_freq}, {max_freq}")
    ratio = (max_freq / min_freq) ** (1 / num_classes)
    return [(min_freq * ratio**k, min_freq * ratio ** (k + 1)) for k in range(num_classes)]


def _band_name(low: float, high: float) -> str:
    return f"{low:.0f}-{high:.0f} Hz"


def make_tone_clip(index: int, label: int, *, bands: Sequence[tuple[float, float]], seed: int = 0,
                   sample_rate: int = 16000, clip_seconds: float = 0.5) -> torch.Tensor:
    """Clip ``index`` of the task: noise plus a tone in ``bands[label]`` (see the module doc).

    Returns:
        A float32 waveform ``[round(clip_seconds * sample_rate)]``, peak below 1.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    u = lambda: float(torch.rand((), generator=g))  # noqa: E731
    n = int(round(clip_seconds * sample_rate))
    low, high = bands[label]
    margin = (high / low) ** 0.1  # keep to the middle 80 % of the band (in log frequency)
    freq = math.exp(math.log(low * margin) + u() * math.log(high / low / margin**2))
    length = max(1, int(n * (0.5 + 0.5 * u())))
    start = int(u() * (n - length + 1))
    t = torch.arange(length, dtype=torch.float64) / sample_rate
    tone = torch.sin(2 * math.pi * freq * t + 2 * math.pi * u())
    fade = min(length // 2, int(FADE_SECONDS * sample_rate))
    if fade:
        ramp = torch.linspace(0.0, 1.0, fade, dtype=torch.float64)
        tone[:fade] *= ramp
        tone[-fade:] *= ramp.flip(0)
    amplitude = 0.05 + 0.45 * u()
    snr_db = 5.0 + 15.0 * u()
    noise_std = amplitude / math.sqrt(2) / 10 ** (snr_db / 20)  # a sine's RMS is amplitude / sqrt(2)
    clip = torch.randn(n, generator=g, dtype=torch.float64) * noise_std
    clip[start : start + length] += amplitude * tone
    return clip.clamp(-0.99, 0.99).float()


class _ToneDataset(AudioDataset):
    """Items generated on the fly instead of decoded from files."""

    def __init__(self, records: Sequence[AudioRecord], *, bands: Sequence[tuple[float, float]],
                 clip_seconds: float, **kwargs):
        super().__init__(records, **kwargs)
        self.bands = list(bands)
        self.clip_seconds = clip_seconds

    def load(self, record: AudioRecord, generator: torch.Generator | None) -> torch.Tensor:
        index = int(record.id.removeprefix("tone"))
        clip = make_tone_clip(index, int(record.label), bands=self.bands, seed=self.seed,
                              sample_rate=self.sample_rate, clip_seconds=self.clip_seconds)
        return clip if self.max_seconds is None else clip[: max(1, int(round(self.max_seconds * self.sample_rate)))]


class SyntheticToneDataModule(AudioDataModule):
    """The synthetic tone-band task (see the module doc): an offline speech-domain demo.

    Args:
        num_clips: how many clips to generate.
        clip_seconds: clip duration.
        num_classes: frequency bands (classes), log-spaced from ``min_freq`` to ``max_freq``.
        min_freq / max_freq: the band range in Hz (``max_freq`` below Nyquist).
        sample_rate: rate of the generated clips.
        max_shift_seconds: largest time shift of the training augmentation (either direction).
        **kwargs: ``augment`` (shift/gain augmentation on train; there is no
            noise file), ``shift_prob``, ``gain_prob``, ``max_gain_db``: see
            :class:`~peftlab_speech.data.base.AudioDataModule`; ``seed`` (of
            the clips, the split and the batch order), ``batch_size``,
            ``num_workers``, ``group_by_length``, ``val_fraction``,
            ``test_fraction``, ``predict_split``: see :class:`peftlab.data.PeftDataModule`.
    """

    def __init__(self, num_clips: int = 600, clip_seconds: float = 0.5, num_classes: int = 4,
                 min_freq: float = 200.0, max_freq: float = 3200.0, sample_rate: int = 16000,
                 max_shift_seconds: float = 0.05, **kwargs: Any):
        if num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {num_clips}")
        if clip_seconds <= 0:
            raise ValueError(f"clip_seconds must be > 0, got {clip_seconds}")
        if max_freq >= sample_rate / 2:
            raise ValueError(f"max_freq {max_freq} Hz must be below the Nyquist frequency {sample_rate / 2} Hz")
        bands = band_edges(num_classes, min_freq, max_freq)
        # clips are generated, not read: no files to check, no noise files, no file-format limits
        super().__init__(sample_rate=sample_rate, max_seconds=clip_seconds, max_shift_seconds=max_shift_seconds,
                         noise_files=None, noise_snr_db=None, noise_prob=0.8, expected_sample_rate=None,
                         max_channels=None, check_files=False, label_names=[_band_name(lo, hi) for lo, hi in bands],
                         **kwargs)
        self.num_clips = num_clips
        self.clip_seconds = clip_seconds
        self.bands = bands

    @property
    def source(self) -> str:
        return SYNTHETIC_SOURCE

    def read_records(self) -> list[AudioRecord]:
        names = [_band_name(lo, hi) for lo, hi in self.bands]
        return [AudioRecord(id=f"tone{i}", path=SYNTHETIC_SOURCE, label=names[i % len(names)])
                for i in range(self.num_clips)]

    def record_length(self, record: AudioRecord) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    def make_dataset(self, records: list[AudioRecord], train: bool) -> AudioDataset:
        return _ToneDataset(records, bands=self.bands, clip_seconds=self.clip_seconds,
                            sample_rate=self.sample_rate, max_seconds=self.max_seconds, train=train,
                            augmentation=self.augmentation() if train else None, seed=self.seed)
