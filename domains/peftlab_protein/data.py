"""Protein sequence data: readers, validation and the protein DataModule.

Three input layouts are read, all producing :class:`ProteinRecord` objects:

* **FLIP CSV** (:func:`read_flip_csv`): columns ``sequence,target,set,validation``.
  ``set`` is ``train``/``test``; ``validation`` ``True`` moves a train row to
  the validation split. Ids come from an ``id`` or ``name`` column when there
  is one, else ``row{N}`` (N = 1-based data row number, header excluded).
* **FLIP FASTA** (:func:`read_flip_fasta`): the label and split live in
  ``KEY=value`` header attributes, e.g.
  ``>Sequence12 TARGET=0.53 SET=train VALIDATION=False``; sequences may span
  several lines.
* **Plain FASTA + labels file** (:func:`read_fasta_with_labels`): labels are
  joined on the FASTA id (first word of the header). The labels file is a CSV
  (``id,label`` or ``id,<target_column>``, optionally ``set``/``validation``)
  or a FASTA file whose attributes hold the target, or whose body holds a
  per-residue label string (FLIP secondary-structure layout:
  ``>Seq1 SET=train VALIDATION=False`` / ``CCHHHEEE``).

Per-residue (token classification) labels are strings with one character per
residue, e.g. ``CCHHHEEE``; in a CSV they simply sit in the target column.

Every problem in the input raises :class:`peftlab.data.DataError`, whose
message names the file, the record and what is wrong.

Residues: the ESM alphabet's 20 standard amino acids plus the ambiguous
letters ``X B Z U O`` are accepted; lowercase is upper-cased and ASCII
whitespace (space, tab, line breaks) is removed. Any other character is an
error, unless ``unknown_residues="map_to_x"`` is chosen, in which case any
other ASCII *letter* becomes ``X`` (non-letters such as ``*``, ``-`` or digits,
and every non-ASCII character, are still an error: ``"ſ".upper()`` is ``"S"``,
so upper-casing them would silently invent residues).

Files are read as UTF-8 (a BOM is skipped); other bytes, or a CSV field longer
than the csv module's limit, raise a DataError naming the line.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peftlab.data import IGNORE_INDEX, DataError, PeftDataModule, assign_splits, csv_dict_reader, open_text
from peftlab_protein.backbones import esm_alphabet  # the ESM-1b/ESM-2 alphabet of fair-esm

__all__ = [
    "ALLOWED_RESIDUES",
    "AMBIGUOUS_RESIDUES",
    "STANDARD_RESIDUES",
    "UNKNOWN_RESIDUE_POLICIES",
    "ProteinDataModule",
    "ProteinRecord",
    "clean_sequence",
    "read_fasta_with_labels",
    "read_flip_csv",
    "read_flip_fasta",
]

STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
AMBIGUOUS_RESIDUES = "XBZUO"
ALLOWED_RESIDUES = STANDARD_RESIDUES + AMBIGUOUS_RESIDUES
UNKNOWN_RESIDUE_POLICIES = ("error", "map_to_x")
FORMATS = ("auto", "csv", "fasta")
CSV_SUFFIXES = (".csv",)
FASTA_SUFFIXES = (".fasta", ".fa", ".faa")

_ALLOWED_SET = frozenset(ALLOWED_RESIDUES)
_ASCII_LETTERS = frozenset(string.ascii_uppercase)
_ID_COLUMNS = ("id", "name")
_SET_NAMES = {"train": "train", "test": "test", "val": "val", "valid": "val", "validation": "val"}
_ASCII_WHITESPACE = " \t\n\r\v\f"
_ASCII_SPACE_RUN = re.compile(f"[{re.escape(_ASCII_WHITESPACE)}]+")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no", ""})

PathLike = str | os.PathLike


@dataclass
class ProteinRecord:
    """One protein example.

    Attributes:
        id: record id (unique within a data set).
        sequence: upper-case residues, validated (see :func:`clean_sequence`).
        label: ``float`` (regression), ``int`` 0/1 (binary), class name ``str``
            as read or class index ``int`` inside a :class:`ProteinDataModule`
            (multiclass), ``list[float]`` (multi-output regression, multilabel)
            or a per-residue label ``str`` (token classification).
        split: ``"train"``, ``"val"`` or ``"test"`` when the file says so
            (FLIP ``set``/``validation``), else ``None``.
    """

    id: str
    sequence: str
    label: Any
    split: str | None = None


# ---------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------

def _check_policy(unknown_residues: str) -> None:
    if unknown_residues not in UNKNOWN_RESIDUE_POLICIES:
        raise ValueError(f"unknown_residues must be one of {UNKNOWN_RESIDUE_POLICIES}, got {unknown_residues!r}")


def _existing_file(path: PathLike) -> Path:
    """``path`` as a Path, or a DataError saying it does not exist."""
    p = Path(path)
    if not p.is_file():
        problem = "is a directory, not a file" if p.is_dir() else "file not found (no such file)"
        raise DataError(p, None, problem)
    return p


def clean_sequence(raw: str, *, path: PathLike, record_id: Any, unknown_residues: str = "error") -> str:
    """Strip whitespace, upper-case and validate one amino-acid sequence.

    Args:
        raw: the sequence as read.
        path, record_id: where it came from (for the error message).
        unknown_residues: ``"error"`` (default) rejects any letter outside
            :data:`ALLOWED_RESIDUES`; ``"map_to_x"`` turns such letters into ``X``.

    Raises:
        DataError: empty sequence, or an invalid character.
    """
    _check_policy(unknown_residues)
    seq = _ASCII_SPACE_RUN.sub("", raw)
    if not seq:
        raise DataError(path, record_id, "empty sequence")
    # upper-case ASCII only: str.upper maps some non-ASCII letters to ASCII ones ("ſ" -> "S", "ﬀ" -> "FF")
    seq = seq.upper() if seq.isascii() else "".join(c.upper() if c.isascii() else c for c in seq)
    if set(seq) <= _ALLOWED_SET:
        return seq
    if unknown_residues == "map_to_x":
        seq = "".join("X" if c in _ASCII_LETTERS and c not in _ALLOWED_SET else c for c in seq)
    for pos, c in enumerate(seq, start=1):
        if c not in _ALLOWED_SET:
            hint = ("" if unknown_residues == "map_to_x"
                    else "; set unknown_residues='map_to_x' to turn other letters into X")
            raise DataError(path, record_id,
                            f"invalid residue {c!r} at position {pos} (allowed: {ALLOWED_RESIDUES}{hint})")
    return seq


def _number(text: str, path: PathLike, record_id: Any) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(path, record_id, f"target {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(path, record_id, f"target {text!r} is not a finite number")
    return value


def _parse_label(raw: Sequence[str], task_type: str, path: PathLike, record_id: Any) -> Any:
    """Parse the target value(s) of one record (one string per target column)."""
    if task_type == "token_classification":
        # one character per residue, whatever it is: only ASCII whitespace (line breaks) is not a label
        label = _ASCII_SPACE_RUN.sub("", raw[0])
        if not label:
            raise DataError(path, record_id, "missing target value")
        return label
    values = [v.strip() for v in raw]
    if any(v == "" for v in values):
        raise DataError(path, record_id, "missing target value")
    if task_type == "multiclass":
        return values[0]
    if task_type == "binary":
        value = _number(values[0], path, record_id)
        if value not in (0.0, 1.0):
            raise DataError(path, record_id, f"binary target must be 0 or 1, got {values[0]!r}")
        return int(value)
    if task_type == "multilabel":
        # several 0/1 columns, or one column holding "0,1,1" / "0;1;1" / "0 1 1"
        parts = values if len(values) > 1 else [p for p in re.split(r"[,;\s]+", values[0]) if p]
        if not parts:
            raise DataError(path, record_id, f"multilabel target {values[0]!r} holds no 0/1 values")
        numbers = [_number(p, path, record_id) for p in parts]
        if any(x not in (0.0, 1.0) for x in numbers):
            raise DataError(path, record_id, f"multilabel targets must be 0 or 1, got {values}")
        return numbers
    # regression: one value per target column
    numbers = [_number(v, path, record_id) for v in values]
    return numbers[0] if len(numbers) == 1 else numbers


def _parse_bool(text: str, path: PathLike, record_id: Any) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise DataError(path, record_id, f"validation value {text!r} is not True/False")


def _split_from(set_value: str | None, validation: str | None, path: PathLike, record_id: Any) -> str | None:
    """The split a record belongs to from FLIP ``set``/``validation`` values (``None``: not given)."""
    if set_value is None:
        return None
    split = _SET_NAMES.get(set_value.strip().lower())
    if split is None:
        raise DataError(path, record_id, f"unknown set value {set_value!r} (expected train or test, or val)")
    if validation is not None and _parse_bool(validation, path, record_id):
        if split == "test":
            raise DataError(path, record_id, "validation=True on a test row: only train rows can go to validation")
        split = "val"
    return split


def _make_record(*, record_id: str, raw_sequence: str, raw_label: Sequence[str], task_type: str,
                 split: str | None, path: PathLike, unknown_residues: str,
                 label_path: PathLike | None = None) -> ProteinRecord:
    """Validate one record; ``label_path`` names the labels file when it differs from ``path``."""
    label_path = path if label_path is None else label_path
    sequence = clean_sequence(raw_sequence, path=path, record_id=record_id, unknown_residues=unknown_residues)
    label = _parse_label(raw_label, task_type, label_path, record_id)
    if task_type == "token_classification" and len(label) != len(sequence):
        raise DataError(label_path, record_id,
                        f"per-residue label string has {len(label)} characters but the sequence has "
                        f"{len(sequence)} residues")
    return ProteinRecord(id=record_id, sequence=sequence, label=label, split=split)


def _check_unique(ids: Sequence[str], path: PathLike) -> None:
    seen: set[str] = set()
    for record_id in ids:
        if record_id in seen:
            raise DataError(path, record_id, f"duplicated id {record_id!r}")
        seen.add(record_id)


def _target_columns(target_column: str | Sequence[str]) -> list[str]:
    columns = [target_column] if isinstance(target_column, str) else list(target_column)
    if not columns:
        raise ValueError("target_column must name at least one column")
    return columns


# ---------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------

def _csv_rows(path: Path, required: Sequence[str]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(row number, row)`` pairs of a CSV, checking required columns and row widths."""
    with open_text(path, newline="") as f:
        reader = csv_dict_reader(f, path)
        header = list(reader.fieldnames or [])
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
            rows.append((n, row))
    if not rows:
        raise DataError(path, None, "no data rows")
    return header, rows


def _row_id(row: dict[str, str], n: int, id_column: str | None, path: Path) -> str:
    if id_column is None:
        return f"row{n}"
    record_id = row[id_column].strip()
    if not record_id:
        raise DataError(path, f"row{n}", f"empty {id_column!r}")
    return record_id


def read_flip_csv(path: PathLike, *, task_type: str = "regression", sequence_column: str = "sequence",
                  target_column: str | Sequence[str] = "target",
                  unknown_residues: str = "error") -> list[ProteinRecord]:
    """Read a FLIP-style CSV (``sequence,target,set,validation``).

    Args:
        path: the CSV file.
        task_type: decides how the target is parsed (see :class:`ProteinRecord`).
        sequence_column: column holding the sequence.
        target_column: column holding the target, or a list of columns for
            multi-output regression / multilabel.
        unknown_residues: ``"error"`` or ``"map_to_x"`` (see :func:`clean_sequence`).

    Returns:
        Records in file order; ``split`` is set when the file has a ``set`` column.
    """
    path = _existing_file(path)
    targets = _target_columns(target_column)
    header, rows = _csv_rows(path, [sequence_column, *targets])
    id_column = next((c for c in _ID_COLUMNS if c in header), None)
    has_set, has_validation = "set" in header, "validation" in header
    records = []
    for n, row in rows:
        record_id = _row_id(row, n, id_column, path)
        split = _split_from(row["set"] if has_set else None,
                            row["validation"] if has_validation else None, path, record_id)
        records.append(_make_record(record_id=record_id, raw_sequence=row[sequence_column],
                                    raw_label=[row[c] for c in targets], task_type=task_type,
                                    split=split, path=path, unknown_residues=unknown_residues))
    _check_unique([r.id for r in records], path)
    return records


# ---------------------------------------------------------------------------------------
# FASTA
# ---------------------------------------------------------------------------------------

@dataclass
class _FastaEntry:
    id: str
    attributes: dict[str, str]  # KEY=value header attributes, keys upper-cased
    body: str
    line: int


def _read_fasta_entries(path: Path) -> list[_FastaEntry]:
    """FASTA records with their header attributes; multi-line bodies are joined."""
    entries: list[_FastaEntry] = []
    current: _FastaEntry | None = None
    chunks: list[str] = []

    def flush() -> None:
        if current is not None:
            current.body = "".join(chunks)
            entries.append(current)

    with open_text(path) as f:
        for n, line in enumerate(f, start=1):
            line = line.strip(_ASCII_WHITESPACE)
            if not line or line.startswith(";"):
                continue
            if line.startswith(">"):
                flush()
                words = line[1:].split()
                if not words:
                    raise DataError(path, f"line {n}", "FASTA header without an id")
                attributes = {}
                for word in words[1:]:
                    key, sep, value = word.partition("=")
                    if sep and key:
                        attributes[key.upper()] = value
                current, chunks = _FastaEntry(words[0], attributes, "", n), []
            else:
                if current is None:
                    raise DataError(path, f"line {n}", "sequence text before the first '>' header")
                chunks.append(line)
    flush()
    if not entries:
        raise DataError(path, None, "no FASTA records found")
    _check_unique([e.id for e in entries], path)
    return entries


def _attribute_label(entry: _FastaEntry, targets: Sequence[str], path: Path) -> list[str]:
    keys = [t.upper() for t in targets]
    missing = [k for k in keys if k not in entry.attributes]
    if missing:
        raise DataError(path, entry.id, f"header has no {'/'.join(k + '=' for k in missing)} attribute")
    return [entry.attributes[k] for k in keys]


def _entry_split(entry: _FastaEntry, path: Path) -> str | None:
    return _split_from(entry.attributes.get("SET"), entry.attributes.get("VALIDATION"), path, entry.id)


def read_flip_fasta(path: PathLike, *, task_type: str = "regression", target_column: str | Sequence[str] = "target",
                    unknown_residues: str = "error") -> list[ProteinRecord]:
    """Read a FLIP-style FASTA: ``>Sequence12 TARGET=0.53 SET=train VALIDATION=False``.

    The target comes from the header attribute named ``target_column``
    (case-insensitive, so ``target`` reads ``TARGET=``); ``SET`` and
    ``VALIDATION`` give the split when present.
    """
    path = _existing_file(path)
    targets = _target_columns(target_column)
    records = []
    for entry in _read_fasta_entries(path):
        records.append(_make_record(record_id=entry.id, raw_sequence=entry.body,
                                    raw_label=_attribute_label(entry, targets, path), task_type=task_type,
                                    split=_entry_split(entry, path), path=path,
                                    unknown_residues=unknown_residues))
    return records


def _read_labels(path: Path, task_type: str, target_column: str | Sequence[str]
                 ) -> dict[str, tuple[list[str], str | None]]:
    """``id -> (raw target values, split)`` from a labels CSV or a labels FASTA."""
    targets = _target_columns(target_column)
    labels: dict[str, tuple[list[str], str | None]] = {}
    if path.suffix.lower() in FASTA_SUFFIXES:
        for entry in _read_fasta_entries(path):
            keys = [t.upper() for t in targets]
            if all(k in entry.attributes for k in keys):
                raw = [entry.attributes[k] for k in keys]
            elif entry.body:
                raw = [entry.body]  # FLIP secondary-structure layout: the body is the label string
            else:
                raise DataError(path, entry.id, f"no label: neither {'/'.join(k + '=' for k in keys)} "
                                                "attribute nor a label line")
            labels[entry.id] = (raw, _entry_split(entry, path))
        return labels
    with open_text(path, newline="") as f:
        header = list(csv_dict_reader(f, path).fieldnames or [])
    if not all(t in header for t in targets) and "label" in header:
        targets = ["label"]
    id_column = next((c for c in _ID_COLUMNS if c in header), "id")
    header, rows = _csv_rows(path, [id_column, *targets])
    has_set, has_validation = "set" in header, "validation" in header
    for n, row in rows:
        record_id = _row_id(row, n, id_column, path)
        if record_id in labels:
            raise DataError(path, record_id, f"duplicated id {record_id!r}")
        split = _split_from(row["set"] if has_set else None,
                            row["validation"] if has_validation else None, path, record_id)
        labels[record_id] = ([row[c] for c in targets], split)
    return labels


def read_fasta_with_labels(fasta_path: PathLike, labels_path: PathLike, *, task_type: str = "regression",
                           target_column: str | Sequence[str] = "target",
                           unknown_residues: str = "error") -> list[ProteinRecord]:
    """Read a plain FASTA and join labels on the FASTA id (first word of the header).

    ``labels_path`` is either a CSV with an ``id`` (or ``name``) column and the
    ``target_column`` column(s) (falling back to a ``label`` column), or a
    FASTA file whose header attribute ``TARGET=`` (named by ``target_column``)
    or, failing that, whose body holds the label. The labels file's
    ``set``/``validation`` (CSV) or ``SET``/``VALIDATION`` (FASTA) values give
    the split; otherwise the sequence FASTA's header attributes do. Labels for
    ids that are not in the FASTA are ignored; a FASTA id without a label is
    an error.
    """
    fasta_path, labels_path = _existing_file(fasta_path), _existing_file(labels_path)
    labels = _read_labels(labels_path, task_type, target_column)
    records = []
    for entry in _read_fasta_entries(fasta_path):
        if entry.id not in labels:
            raise DataError(labels_path, entry.id, f"no label for sequence id {entry.id!r} of {fasta_path}")
        raw_label, split = labels[entry.id]
        if split is None:
            split = _entry_split(entry, fasta_path)
        records.append(_make_record(record_id=entry.id, raw_sequence=entry.body, raw_label=raw_label,
                                    task_type=task_type, split=split, path=fasta_path,
                                    unknown_residues=unknown_residues, label_path=labels_path))
    return records


def _detect_format(path: PathLike, format: str) -> str:
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if format != "auto":
        return format
    suffix = Path(path).suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in FASTA_SUFFIXES:
        return "fasta"
    raise DataError(path, None, f"cannot tell the format from the suffix {suffix!r}: use "
                                f"{'/'.join(CSV_SUFFIXES + FASTA_SUFFIXES)} or set format='csv'/'fasta'")


# ---------------------------------------------------------------------------------------
# DataModule
# ---------------------------------------------------------------------------------------

class ProteinDataModule(PeftDataModule):
    """Protein sequences for ESM-2 fine-tuning, from FLIP-style CSV or FASTA files.

    Args:
        path: the data file (``.csv``, or ``.fasta``/``.fa``/``.faa``).
        labels_path: labels for a plain FASTA ``path`` (CSV ``id,label`` /
            ``id,<target_column>``, or a FASTA of labels); ``None`` when the
            labels are in ``path`` itself.
        format: ``"auto"`` (from the suffix), ``"csv"`` or ``"fasta"``.
        task_type: ``regression``, ``binary``, ``multiclass``, ``multilabel``
            or ``token_classification`` (per-residue label strings).
        sequence_column: CSV column holding the sequence.
        target_column: CSV column (or FASTA header attribute, case-insensitive)
            holding the target; a list of columns gives multi-output regression
            or multilabel targets.
        label_names: class names (multiclass), residue label characters (token
            classification) or label names (multilabel); default: the sorted
            set of labels seen in the data (multilabel: the target columns).
        max_length: residues kept per sequence; longer ones are cropped to the
            first ``max_length`` residues (ESM-2 takes 1024 tokens incl. BOS/EOS).
        unknown_residues: ``"error"`` rejects letters outside the ESM amino-acid
            alphabet; ``"map_to_x"`` turns them into ``X``.
        batch_size: examples per batch.
        num_workers: DataLoader worker processes.
        seed: seed of generated splits and batch order.
        group_by_length: batch similar lengths together (less padding).
        val_fraction: share of examples for validation when the data names no
            validation rows (with a ``set`` column: share of the train rows).
        test_fraction: share of examples for test when the data names no splits.
        predict_split: split that ``predict`` runs on.

    Splits come from the ``set``/``validation`` columns (FASTA ``SET``/
    ``VALIDATION`` attributes) when present; otherwise
    :func:`peftlab.data.seeded_split` makes them.
    """

    input_keys = ("tokens",)

    def __init__(self, path: str | None = None, labels_path: str | None = None, format: str = "auto",
                 task_type: str = "regression", sequence_column: str = "sequence",
                 target_column: str | list[str] = "target", label_names: list[str] | None = None,
                 max_length: int = 1022, unknown_residues: str = "error", batch_size: int = 16,
                 num_workers: int = 0, seed: int = 0, group_by_length: bool = True,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, predict_split: str = "test"):
        super().__init__(task_type=task_type, batch_size=batch_size, num_workers=num_workers, seed=seed,
                         group_by_length=group_by_length, val_fraction=val_fraction,
                         test_fraction=test_fraction, predict_split=predict_split)
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        _check_policy(unknown_residues)
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if label_names is not None and task_type == "token_classification":
            bad = [n for n in label_names if len(n) != 1]
            if bad:
                raise ValueError(f"token_classification label_names must be single characters, got {bad}")
        self.path = path
        self.labels_path = labels_path
        self.format = format
        self.sequence_column = sequence_column
        self.target_column = target_column
        self.given_label_names = list(label_names) if label_names is not None else None
        self.max_length = max_length
        self.unknown_residues = unknown_residues
        self.alphabet = esm_alphabet()
        self._label_index: dict[str, int] = {}

    # ---- reading ------------------------------------------------------------------
    @property
    def source(self) -> str:
        """Where the labels come from, for error messages."""
        return str(self.labels_path or self.path)

    def read_records(self) -> list[ProteinRecord]:
        """All records of the data set, in file order (subclasses may generate them instead)."""
        if self.path is None:
            raise ValueError(f"{type(self).__name__} needs a data path (--data.path)")
        options = dict(task_type=self.task_type, target_column=self.target_column,
                       unknown_residues=self.unknown_residues)
        fmt = _detect_format(self.path, self.format)
        if fmt == "csv":
            if self.labels_path is not None:
                raise ValueError("labels_path is only used with a FASTA path; a CSV holds its own targets")
            return read_flip_csv(self.path, sequence_column=self.sequence_column, **options)
        if self.labels_path is not None:
            return read_fasta_with_labels(self.path, self.labels_path, **options)
        return read_flip_fasta(self.path, **options)

    def load_splits(self) -> dict[str, list[ProteinRecord]]:
        records = self._resolve_labels(self.read_records())
        return assign_splits(records, self.val_fraction, self.test_fraction, self.seed, self.source)

    def _resolve_labels(self, records: list[ProteinRecord]) -> list[ProteinRecord]:
        """Fix the label vocabulary on all records at once, so every split maps labels alike."""
        source, task = self.source, self.task_type
        given = self.given_label_names
        if task in ("multiclass", "token_classification"):
            seen = {c for r in records for c in (r.label if task == "token_classification" else [r.label])}
            names = given if given is not None else sorted(seen)
            index = {name: i for i, name in enumerate(names)}
            for r in records:
                for lab in (r.label if task == "token_classification" else [r.label]):
                    if lab not in index:
                        raise DataError(source, r.id, f"label {lab!r} is not one of label_names {names}")
            self._label_names, self._label_index, self._num_outputs = list(names), index, len(names)
            if task == "multiclass":
                records = [dataclasses.replace(r, label=index[r.label]) for r in records]
            return records
        if task in ("regression", "multilabel"):
            widths = {r.id: (len(r.label) if isinstance(r.label, list) else 0) for r in records}
            first = records[0]
            for r in records:
                if widths[r.id] != widths[first.id]:
                    raise DataError(source, r.id, f"{max(widths[r.id], 1)} target value(s), but record "
                                                  f"{first.id} has {max(widths[first.id], 1)}")
            k = max(widths[first.id], 1)
            if task == "multilabel":
                columns = _target_columns(self.target_column)
                names = given if given is not None else (columns if len(columns) > 1 else None)
                if names is not None and len(names) != k:
                    raise DataError(source, first.id, f"{k} labels but label_names has {len(names)}: {names}")
                self._label_names = names
            else:
                self._label_names = given
            self._num_outputs = k
            return records
        self._label_names, self._num_outputs = given, 1  # binary
        return records

    # ---- task description -----------------------------------------------------------
    def record_length(self, record: ProteinRecord) -> int:
        """Residues the model sees (the sequence length, after cropping to ``max_length``)."""
        return min(len(record.sequence), self.max_length)

    # ---- batching -------------------------------------------------------------------
    def collate(self, records: list[ProteinRecord]) -> dict[str, Any]:
        """Records -> ``{"tokens": [B, T], "labels": ..., "ids": [...]}`` in the ESM-2 alphabet.

        Each row is ``<cls> residues <eos>`` padded with ``<pad>`` to the longest
        (cropped) sequence; T <= max_length + 2. Token labels are aligned with
        the tokens and hold ``IGNORE_INDEX`` on BOS, EOS, padding and cropped residues.
        """
        if not records:
            raise ValueError("collate got an empty batch")
        alphabet = self.alphabet
        sequences = [r.sequence[: self.max_length] for r in records]
        width = max(len(s) for s in sequences) + 2
        tokens = torch.full((len(records), width), alphabet.padding_idx, dtype=torch.long)
        for i, seq in enumerate(sequences):
            tokens[i, 0] = alphabet.cls_idx
            tokens[i, 1 : len(seq) + 1] = torch.tensor([alphabet.get_idx(c) for c in seq], dtype=torch.long)
            tokens[i, len(seq) + 1] = alphabet.eos_idx
        return {"tokens": tokens, "labels": self._collate_labels(records, width), "ids": [r.id for r in records]}

    def _collate_labels(self, records: list[ProteinRecord], width: int) -> torch.Tensor:
        task = self.task_type
        if task in ("multiclass", "token_classification") and self._num_outputs is None:
            self.splits  # the label vocabulary comes from the data
        if task == "token_classification":
            labels = torch.full((len(records), width), IGNORE_INDEX, dtype=torch.long)
            for i, r in enumerate(records):
                kept = r.label[: self.max_length]
                labels[i, 1 : len(kept) + 1] = torch.tensor([self._label_index[c] for c in kept], dtype=torch.long)
            return labels
        if task == "multiclass":
            return torch.tensor([r.label if isinstance(r.label, int) else self._label_index[r.label]
                                 for r in records], dtype=torch.long)
        # regression ([B] or [B, K]), binary ([B] of 0/1), multilabel ([B, K])
        return torch.tensor([r.label for r in records], dtype=torch.float32)
