"""Audio data: loading, training augmentation and the speech DataModules.

    audio            headers, checks, decoding (soundfile), resampling (torchaudio), AudioAugmentation
    base             AudioRecord, AudioDataset, collate_audio and AudioDataModule, the base of the others
    speech_commands  Google Speech Commands (SpeechCommandsDataModule, the 12-class keyword-spotting mapping)
    fsdd             the Free Spoken Digit Dataset (FSDDDataModule)
    audio_csv        CSV manifests (AudioCSVDataModule, read_audio_csv)
    transcribed      speech recognition: TranscriptionDataModule (the base), CSV manifests with a transcript
                     column, FSDD read as recognition
    kaldi            Kaldi data directories and LibriSpeech folders (KaldiDataModule, LibriSpeechDataModule)

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

Every item is decoded by :func:`load_audio` (a random window on the train
split, the centre window elsewhere) and training items go through
:class:`AudioAugmentation`, seeded per (seed, epoch, item), so the training
stream is the same whatever the number of DataLoader workers and a resumed
run sees the same crops and noise.

Every problem in the input raises :class:`peftlab.data.DataError` naming the
file: see :mod:`peftlab_speech.data.audio` for the audio files themselves; a
manifest or list-file row naming a missing file, a manifest or list file that
is not UTF-8 text, or an FSDD name that does not match the pattern are named
with their row or line. With ``check_files=True`` (the default) every file's
header is read once (``soundfile.info``, ~30 us a file) when the splits are
loaded, so these errors surface before training starts.

Every name of the former ``peftlab_speech.data`` module is importable from
here (``peftlab_speech.data.FSDDDataModule`` is the class path configs use).
"""

from peftlab.data import item_seed
from peftlab_speech.data.audio import (AUDIO_SUFFIXES, CROP_MODES, DEFAULT_NOISE_SNR_DB, MAX_SAMPLE_RATE,
                                       MIN_SAMPLE_RATE, AudioAugmentation, AudioInfo, audio_files, audio_info,
                                       check_audio, load_audio, resample_taps)
from peftlab_speech.data.audio_csv import AudioCSVDataModule, read_audio_csv
from peftlab_speech.data.base import AudioDataModule, AudioDataset, AudioRecord, collate_audio
from peftlab_speech.data.fsdd import FSDD_NAME, FSDD_TASKS, FSDD_TEST_TAKES, FSDDDataModule, parse_fsdd_name
from peftlab_speech.data.kaldi import KaldiDataModule, LibriSpeechDataModule, read_kaldi_dir, read_librispeech
from peftlab_speech.data.transcribed import (DIGIT_WORDS, FSDDTranscriptionDataModule, TranscribedRecord,
                                             TranscriptCSVDataModule, TranscriptionDataModule, collate_transcribed)
from peftlab_speech.data.speech_commands import (BACKGROUND_NOISE_DIR, KWS12_LABELS, KWS12_WORDS, NOISE_REGIONS,
                                                 SILENCE_LABEL, SILENCE_SECONDS, SPEECH_COMMANDS_LISTS, UNKNOWN_LABEL,
                                                 SpeechCommandsDataModule)

__all__ = [
    "DIGIT_WORDS",
    "FSDDTranscriptionDataModule",
    "KaldiDataModule",
    "LibriSpeechDataModule",
    "TranscribedRecord",
    "TranscriptCSVDataModule",
    "TranscriptionDataModule",
    "collate_transcribed",
    "read_kaldi_dir",
    "read_librispeech",
    "AUDIO_SUFFIXES",
    "BACKGROUND_NOISE_DIR",
    "CROP_MODES",
    "DEFAULT_NOISE_SNR_DB",
    "FSDD_NAME",
    "FSDD_TASKS",
    "FSDD_TEST_TAKES",
    "KWS12_LABELS",
    "KWS12_WORDS",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "NOISE_REGIONS",
    "SILENCE_LABEL",
    "SILENCE_SECONDS",
    "SPEECH_COMMANDS_LISTS",
    "UNKNOWN_LABEL",
    "AudioAugmentation",
    "AudioCSVDataModule",
    "AudioDataModule",
    "AudioDataset",
    "AudioInfo",
    "AudioRecord",
    "FSDDDataModule",
    "SpeechCommandsDataModule",
    "audio_files",
    "audio_info",
    "check_audio",
    "collate_audio",
    "item_seed",
    "load_audio",
    "parse_fsdd_name",
    "read_audio_csv",
    "resample_taps",
]
