"""The Free Spoken Digit Dataset (:class:`FSDDDataModule`): files named
``{digit}_{speaker}_{take}.wav`` in ``recordings/``; takes 0-4 are the
official test split. A name that does not match the pattern is a
:class:`peftlab.data.DataError` naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from peftlab.data import DataError
from peftlab_speech.data.base import AudioDataModule, AudioRecord, data_folder

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
        max_seconds: longest clip kept; defaults to 1.5: FSDD recordings last 0.14-2.28 s
            (mean 0.44 s); 2 of 3,000 are longer than 1.5 s and 20 longer than 1 s.
        **kwargs: ``sample_rate``, ``augment``, ... : see
            :class:`~peftlab_speech.data.base.AudioDataModule` and
            :class:`peftlab.data.PeftDataModule` (no ``test_fraction``: the takes
            fix the test split). The files are 8 kHz: they are resampled to
            ``sample_rate`` (16 kHz for the encoders).
    """

    def __init__(self, path: str | None = None, task: str = "digit", max_seconds: float | None = 1.5,
                 **kwargs: Any):
        if task not in FSDD_TASKS:
            raise ValueError(f"task must be one of {FSDD_TASKS}, got {task!r}")
        super().__init__(max_seconds=max_seconds, test_fraction=0.0, **kwargs)
        self.path = path
        self.task = task

    @property
    def recordings(self) -> Path:
        """The folder of WAVs: ``path/recordings`` if there is one, else ``path``."""
        root = data_folder(self.path, type(self).__name__)
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
