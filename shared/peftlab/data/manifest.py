"""CSV manifests (a row per example: a file, labels, optionally an id, a split):
the row checks every domain's manifest reader shares, each error naming the
file, the row and what is wrong."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftlab.data.io import csv_dict_reader, file_exists, open_text
from peftlab.errors import DataError


def existing_file(path: str | Path) -> Path:
    """``path`` as a Path, when it is a file (a folder or nothing there is a DataError)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "is a directory, not a file" if path.is_dir() else "file not found (no such file)")
    return path


def manifest_rows(path: str | Path, required: Sequence[str], *, strip_header: bool = False
                  ) -> tuple[list[str], list[tuple[str, dict[str, str]]]]:
    """The header and the ``("row{N}", row)`` pairs of a CSV manifest (N counts data
    rows from 1), checked: the file exists, it has a header naming no column twice
    and every ``required`` column, every row has as many fields as the header,
    and there is at least one data row. ``strip_header`` removes spaces around
    column names."""
    path = existing_file(path)
    with open_text(path, newline="") as f:
        reader = csv_dict_reader(f, path)
        header = list(reader.fieldnames or [])
        if strip_header:
            header = [c.strip() for c in header]
            repeated = sorted({c for c in header if c and header.count(c) > 1})
            if repeated:
                raise DataError(path, "line 1", f"the header names column(s) {repeated} more than once")
            reader.fieldnames = header
        if not header:
            raise DataError(path, None, "empty file: no header row")
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(path, None, f"missing required column(s) {missing}; found columns {header}")
        rows = []
        for n, row in enumerate(reader, start=1):
            if None in row:
                raise DataError(path, f"row{n}", "more fields than the header has columns")
            if any(v is None for v in row.values()):
                raise DataError(path, f"row{n}", "fewer fields than the header has columns")
            rows.append((f"row{n}", row))
    if not rows:
        raise DataError(path, None, "no data rows")
    return header, rows


def required_cell(row: dict[str, str], column: str, source: Any, where: str, what: str | None = None) -> str:
    """The stripped value of ``column``; an empty cell is a DataError (``empty <what>``)."""
    value = (row.get(column) or "").strip()
    if not value:
        raise DataError(source, where, f"empty {what or repr(column)}")
    return value


def listed_file(source: Any, where: str, written: str, base: Path, what: str) -> Path:
    """The ``what`` file (``image``, ``audio``) a row names as ``written``, relative to
    ``base`` unless absolute; a file that does not exist is a DataError."""
    file = Path(written) if Path(written).is_absolute() else base / written
    if not file_exists(source, where, file, written, what):
        raise DataError(source, where, f"{what} file {written!r} not found ({file})")
    return file


class UniqueIds:
    """Record ids seen so far in one source: a repeated id is a DataError naming both places."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.seen: dict[str, Any] = {}

    def add(self, record_id: str, where: Any = None) -> str:
        if record_id in self.seen:
            first = self.seen[record_id]
            also = f" (also on {first})" if first is not None and first != record_id else ""
            raise DataError(self.source, where if where is not None else record_id,
                            f"duplicated id {record_id!r}{also}")
        self.seen[record_id] = where
        return record_id
