"""Protein records and what every format reader shares: residue cleaning,
target parsing, the FLIP split marks (``set`` / ``validation``), record ids.

Residues: the ESM alphabet's 20 standard amino acids plus the ambiguous
letters ``X B Z U O`` are accepted; lowercase is upper-cased and ASCII
whitespace (space, tab, line breaks) is removed. Any other character is an
error, unless ``unknown_residues="map_to_x"`` is chosen, in which case any
other ASCII *letter* becomes ``X`` (non-letters such as ``*``, ``-`` or digits,
and every non-ASCII character, are still an error: ``"ſ".upper()`` is ``"S"``,
so upper-casing them would silently invent residues).
"""

from __future__ import annotations

import math
import os
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from peftlab.data import SPLIT_NAMES, DataError, UniqueIds, required_cell

STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
AMBIGUOUS_RESIDUES = "XBZUO"
ALLOWED_RESIDUES = STANDARD_RESIDUES + AMBIGUOUS_RESIDUES
UNKNOWN_RESIDUE_POLICIES = ("error", "map_to_x")
#: columns that give a CSV row its record id, the first one present wins
ID_COLUMNS = ("id", "name")
#: the ``set`` values FLIP files write, mapped to splits by peftlab's one split-name table
#: (:data:`peftlab.data.SPLIT_NAMES`); its other spellings (``dev``, ``training``,
#: ``testing``) are not FLIP's and stay errors here
FLIP_SET_VALUES = ("train", "test", "val", "valid", "validation")
ASCII_WHITESPACE = " \t\n\r\v\f"

_ALLOWED_SET = frozenset(ALLOWED_RESIDUES)
_ASCII_LETTERS = frozenset(string.ascii_uppercase)
_SET_NAMES = {value: SPLIT_NAMES[value] for value in FLIP_SET_VALUES}
_ASCII_SPACE_RUN = re.compile(f"[{re.escape(ASCII_WHITESPACE)}]+")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no", ""})

PathLike = str | os.PathLike

#: ``id -> (raw target values, split)``: what every labels-file reader gives
Labels = dict[str, tuple[list[str], str | None]]


@dataclass
class ProteinRecord:
    """One protein example.

    Attributes:
        id: record id (unique within a data set).
        sequence: upper-case residues, validated (see :func:`clean_sequence`).
        label: ``float`` (regression), ``int`` 0/1 (binary), class name ``str``
            as read or class index ``int`` inside a
            :class:`~peftlab_protein.data.ProteinDataModule` (multiclass),
            ``list[float]`` (multi-output regression, multilabel; per-residue
            values for token regression, NaN where a residue has none) or a
            per-residue label ``str`` (token classification).
        split: ``"train"``, ``"val"`` or ``"test"`` when the file says so
            (FLIP ``set``/``validation``), else ``None``.
        mask: per-residue ``"1"`` (scored) / ``"0"`` (not scored) string of a
            per-residue task (FLIP's mask FASTA), or ``None``: every residue counts.
    """

    id: str
    sequence: str
    label: Any
    split: str | None = None
    mask: str | None = None


def check_policy(unknown_residues: str) -> None:
    if unknown_residues not in UNKNOWN_RESIDUE_POLICIES:
        raise ValueError(f"unknown_residues must be one of {UNKNOWN_RESIDUE_POLICIES}, got {unknown_residues!r}")


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
    check_policy(unknown_residues)
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


def parse_label(raw: Sequence[str], task_type: str, path: PathLike, record_id: Any) -> Any:
    """Parse the target value(s) of one record (one string per target column)."""
    if task_type == "token_classification":
        # one character per residue, whatever it is: only ASCII whitespace (line breaks) is not a label
        label = _ASCII_SPACE_RUN.sub("", raw[0])
        if not label:
            raise DataError(path, record_id, "missing target value")
        return label
    if task_type == "token_regression":
        return residue_values(raw[0], path, record_id)
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


def residue_values(text: str, path: PathLike, record_id: Any) -> list[float]:
    """Per-residue values from one string (separated by commas and/or whitespace); ``nan``
    marks a residue without a value (a missing-value sentinel such as CheZOD's 999 is
    turned into NaN by the data module's ``missing_value``)."""
    parts = [p for p in re.split(r"[,\s]+", text) if p]
    if not parts:
        raise DataError(path, record_id, "missing target value")
    values = []
    for pos, part in enumerate(parts, start=1):
        try:
            value = float(part)
        except ValueError:
            raise DataError(path, record_id, f"per-residue value {part!r} at residue {pos} is not a number") from None
        if math.isinf(value):
            raise DataError(path, record_id, f"per-residue value {part!r} at residue {pos} is infinite")
        values.append(value)
    return values


def _parse_bool(text: str, path: PathLike, record_id: Any) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise DataError(path, record_id, f"validation value {text!r} is not True/False")


def split_from(set_value: str | None, validation: str | None, path: PathLike, record_id: Any) -> str | None:
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


def make_record(*, record_id: str, raw_sequence: str, raw_label: Sequence[str], task_type: str,
                split: str | None, path: PathLike, unknown_residues: str,
                label_path: PathLike | None = None) -> ProteinRecord:
    """Validate one record; ``label_path`` names the labels file when it differs from ``path``."""
    label_path = path if label_path is None else label_path
    sequence = clean_sequence(raw_sequence, path=path, record_id=record_id, unknown_residues=unknown_residues)
    label = parse_label(raw_label, task_type, label_path, record_id)
    if task_type in ("token_classification", "token_regression") and len(label) != len(sequence):
        given = (f"per-residue label string has {len(label)} characters" if task_type == "token_classification"
                 else f"{len(label)} per-residue values")
        raise DataError(label_path, record_id, f"{given} but the sequence has {len(sequence)} residues")
    return ProteinRecord(id=record_id, sequence=sequence, label=label, split=split)


def check_unique(ids: Sequence[str], path: PathLike) -> None:
    """A repeated id is a DataError naming it (checked once a whole file is read)."""
    unique = UniqueIds(path)
    for record_id in ids:
        unique.add(record_id)


def target_columns(target_column: str | Sequence[str]) -> list[str]:
    columns = [target_column] if isinstance(target_column, str) else list(target_column)
    if not columns:
        raise ValueError("target_column must name at least one column")
    return columns


def row_id(row: dict[str, str], where: str, id_column: str | None, path: PathLike) -> str:
    """A CSV row's record id: its ``id_column`` cell (an empty one is an error), else ``where`` (``row{N}``)."""
    if id_column is None:
        return where
    return required_cell(row, id_column, path, where)
