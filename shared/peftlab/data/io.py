"""Reading text and CSV files with errors that name the file and the line
(what every domain reader builds on): UTF-8 with a byte-order mark allowed,
``csv.Error`` and undecodable bytes turned into :class:`DataError`, and file
names that the file system cannot look up."""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from peftlab.errors import DataError


def _not_utf8(path: Any) -> DataError:
    """A DataError naming the line and byte of the first thing in ``path`` that is not UTF-8."""
    data = Path(path).read_bytes()
    for bom, name in ((codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"),
                      (codecs.BOM_UTF32_LE, "UTF-32")):
        if data.startswith(bom):
            return DataError(path, "line 1", f"{name} text (byte-order mark {bom.hex(' ').upper()}); "
                                             "save the file as UTF-8")
    body = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        start = error.start
    else:  # decodable after all (should not happen): blame the file
        return DataError(path, None, "cannot be decoded as UTF-8 text")
    newline = b"\n" if b"\n" in body else b"\r"
    line = body.count(newline, 0, start) + 1
    column = start - (body.rfind(newline, 0, start) + 1) + 1
    shown = body[start : start + 4].hex(" ").upper()
    return DataError(path, f"line {line}", f"not UTF-8 text: byte(s) {shown} at column {column} cannot be "
                                           "decoded (latin-1 / binary data?); save the file as UTF-8")

@contextmanager
def open_text(path: Any, newline: str | None = None) -> Iterator[TextIO]:
    """Open a UTF-8 text file (a BOM is skipped) for reading.

    A byte sequence that is not UTF-8, met anywhere while the file is read
    inside the ``with`` block, raises :class:`DataError` naming the file, the
    line and the bytes (instead of a bare ``UnicodeDecodeError``).
    """
    with open(path, encoding="utf-8-sig", newline=newline) as f:
        try:
            yield f
        except UnicodeDecodeError:
            raise _not_utf8(path) from None

class _CSVRows:
    """A ``csv.reader`` whose ``csv.Error`` (a field over the size limit, ...) becomes a DataError."""

    def __init__(self, path: Any, reader: Any):
        self.path, self.reader = path, reader

    def __iter__(self) -> _CSVRows:
        return self

    def __next__(self) -> list[str]:
        try:
            return next(self.reader)
        except csv.Error as error:
            raise DataError(self.path, f"line {self.reader.line_num}", f"malformed CSV: {error}") from None

    @property
    def line_num(self) -> int:
        return self.reader.line_num

    @property
    def dialect(self) -> Any:
        return self.reader.dialect

def file_exists(source: Any, record: Any, file: Path, written: str, what: str) -> bool:
    """Whether the ``what`` file (``audio``, ``image``) that ``source``'s
    ``record`` names as ``written`` exists; a name the file system cannot
    even look up (e.g. a component over 255 bytes) is a DataError, not an OSError."""
    try:
        return file.is_file()
    except OSError as error:
        shown = written if len(written) <= 80 else written[:80] + "..."
        raise DataError(source, record, f"{what} path {shown!r} is not a usable file name ({error.strerror})") from None

def csv_dict_reader(f: TextIO, path: Any) -> csv.DictReader:
    """``csv.DictReader`` over an open file (see :func:`open_text`, ``newline=""``).

    Malformed CSV (e.g. a field longer than the csv module's limit) raises
    :class:`DataError` naming the line, and so does a header that names a
    column twice (the later one would silently hide the earlier).
    """
    reader = csv.DictReader(f)
    reader.reader = _CSVRows(path, reader.reader)
    header = reader.fieldnames or []
    repeated = sorted({c for c in header if c and header.count(c) > 1})
    if repeated:
        raise DataError(path, "line 1", f"the header names column(s) {repeated} more than once")
    return reader
