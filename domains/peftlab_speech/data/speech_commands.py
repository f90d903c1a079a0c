"""Google Speech Commands (v0.01 / v0.02 layout) for keyword spotting
(:class:`SpeechCommandsDataModule`).

One folder per word holding WAVs; ``validation_list.txt`` and
``testing_list.txt`` (paths relative to the root, one per line) define val
and test, the rest is train. ``_background_noise_/`` is not a word: it feeds
noise augmentation and the ``_silence_`` class of the 12-class
keyword-spotting mapping. A list file that is not UTF-8 text or names a file
that is not a word file of the data set is a :class:`peftlab.data.DataError`
naming the list file and the line.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from peftlab.data import DataError, file_exists, open_text, seeded_split
from peftlab_speech.data.audio import AudioInfo, audio_files
from peftlab_speech.data.base import AudioDataModule, AudioRecord, data_folder

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
        max_seconds: longest clip kept (defaults to 1.0: Speech Commands clips are <= 1 s).
        **kwargs: ``sample_rate``, ``augment``, ``noise_files``, ... : see
            :class:`~peftlab_speech.data.base.AudioDataModule` and
            :class:`peftlab.data.PeftDataModule`.
    """

    def __init__(self, path: str | None = None, keyword_spotting_12: bool = False,
                 max_seconds: float | None = 1.0, **kwargs: Any):
        super().__init__(max_seconds=max_seconds, **kwargs)
        self.path = path
        self.keyword_spotting_12 = keyword_spotting_12

    @property
    def root(self) -> Path:
        return data_folder(self.path, type(self).__name__)

    def background_noise_files(self) -> list[Path]:
        folder = self.root / BACKGROUND_NOISE_DIR
        return audio_files(folder) if folder.is_dir() else []

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
                    problem = ("is not an audio file of a word folder"
                               if file_exists(list_path, f"line {n}", full, rel, "listed file") else
                               f"not found ({full})")
                    raise DataError(list_path, f"line {n}", f"listed file {rel!r} {problem}")
                ids.append(rel)
        return ids

    def read_records(self) -> list[AudioRecord]:
        root = self.root
        files: dict[str, Path] = {}
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
            for f in audio_files(folder):
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

    def label_order(self) -> list[str] | None:
        """The user's ``label_names``, else with ``keyword_spotting_12`` the SUPERB class order."""
        given = super().label_order()
        return given if given is not None or not self.keyword_spotting_12 else list(KWS12_LABELS)

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
