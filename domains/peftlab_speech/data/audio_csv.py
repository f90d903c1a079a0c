"""Audio classification from a CSV manifest (:class:`AudioCSVDataModule`):
``path,label`` with optional ``id``, ``start``/``end`` (seconds) and ``split``
columns, e.g. exports of emotion corpora (CREMA-D, IEMOCAP).

The row checks every manifest shares (the file, its header, ragged rows,
empty cells, listed files that do not exist, duplicated ids) are
:mod:`peftlab.data.manifest`'s; each error names the manifest and the row.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from peftlab.data import DataError, SPLIT_NAMES, UniqueIds, listed_file, manifest_rows, required_cell
from peftlab_speech.data.base import AudioDataModule, AudioRecord

REQUIRED_COLUMNS = ("path", "label")


def _rows(path: Path) -> list[tuple[str, dict[str, str]]]:
    """The manifest's checked ``(row{N}, row)`` pairs (column names stripped of spaces)."""
    try:
        return manifest_rows(path, REQUIRED_COLUMNS, strip_header=True)[1]
    except DataError as error:  # a ragged row: said in the words this reader has always used
        if error.record is None or not error.problem.endswith("fields than the header has columns"):
            raise
        raise DataError(error.path, error.record,
                        f"the number of fields differs from the header's ({error.problem})") from None


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


def _split(text: str, path: Path, record: str) -> str | None:
    """peftlab's name for a ``split`` cell (:data:`peftlab.data.SPLIT_NAMES`); ``None`` when empty."""
    value = text.strip().lower()
    if not value:
        return None
    if value not in SPLIT_NAMES:
        raise DataError(path, record, f"unknown split value {text!r} (expected one of "
                                      f"{', '.join(sorted(SPLIT_NAMES))})")
    return SPLIT_NAMES[value]


def _record(path: Path, where: str, row: dict[str, str], uses: Counter[str], ids: UniqueIds) -> AudioRecord:
    """One manifest row as a record (see :func:`read_audio_csv`)."""
    rel = required_cell(row, "path", path, where, "path")
    label = required_cell(row, "label", path, where, "label")
    audio = listed_file(path, where, rel, path.parent, "audio")
    start = _seconds(row.get("start", ""), "start", path, where)
    end = _seconds(row.get("end", ""), "end", path, where)
    if start is not None and end is not None and end <= start:
        raise DataError(path, where, f"end {end} is not after start {start}")
    split = _split(row.get("split", ""), path, where)
    record_id = row.get("id", "").strip()
    if not record_id:  # the path, made unique by the segment when the path repeats
        segment = f"@{0.0 if start is None else start}-{'end' if end is None else end}"
        record_id = rel if uses[rel] == 1 else rel + segment
    ids.add(record_id, where)
    return AudioRecord(id=record_id, path=str(audio), label=label, start=start, end=end, split=split)


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
    rows = _rows(csv_path)
    uses = Counter(row["path"].strip() for _, row in rows)
    ids = UniqueIds(csv_path)
    return [_record(csv_path, where, row, uses, ids) for where, row in rows]


class AudioCSVDataModule(AudioDataModule):
    """Audio classification from a CSV manifest (e.g. CREMA-D / IEMOCAP emotion exports).

    Columns: ``path`` and ``label`` (required); ``id``, ``start`` / ``end``
    (segment in seconds, empty = file start / end) and ``split``
    (``train``/``val``/``test``; ``valid``/``validation``/``dev`` mean val; any name of
    :data:`peftlab.data.SPLIT_NAMES`) are
    optional. Relative paths are relative to the CSV's folder. Without a
    ``split`` column the split is seeded (``val_fraction``, ``test_fraction``);
    with one but no val rows, val is carved out of train.

    Args:
        path: the manifest CSV.
        max_seconds: longest clip kept; defaults to 6.0 (emotional utterances run a few seconds).
        **kwargs: ``sample_rate``, ``augment``, ... : see
            :class:`~peftlab_speech.data.base.AudioDataModule` and
            :class:`peftlab.data.PeftDataModule`.
    """

    def __init__(self, path: str | None = None, max_seconds: float | None = 6.0, **kwargs: Any):
        super().__init__(max_seconds=max_seconds, **kwargs)
        self.path = path

    def read_records(self) -> list[AudioRecord]:
        if self.path is None:
            raise ValueError(f"{type(self).__name__} needs a manifest path (--data.path)")
        return read_audio_csv(self.path)
