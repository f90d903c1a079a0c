"""FLIP files (Dallago et al. 2021), whose records carry their own labels and splits.

* **FLIP CSV** (:func:`read_flip_csv`): columns ``sequence,target,set,validation``.
  ``set`` is ``train``/``test``; ``validation`` ``True`` moves a train row to
  the validation split. Ids come from an ``id`` or ``name`` column when there
  is one, else ``row{N}`` (N = 1-based data row number, header excluded).
* **FLIP FASTA** (:func:`read_flip_fasta`): the label and split live in
  ``KEY=value`` header attributes, e.g.
  ``>Sequence12 TARGET=0.53 SET=train VALIDATION=False``; sequences may span
  several lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from peftlab.data import DataError, existing_file, manifest_rows
from peftlab_protein.data.fasta import FastaEntry, entry_split, read_fasta_entries
from peftlab_protein.data.records import (ID_COLUMNS, PathLike, ProteinRecord, check_unique, make_record, row_id,
                                          split_from, target_columns)

CSV_SUFFIXES = (".csv",)


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
    path = existing_file(path)
    targets = target_columns(target_column)
    header, rows = manifest_rows(path, [sequence_column, *targets])
    id_column = next((c for c in ID_COLUMNS if c in header), None)
    has_set, has_validation = "set" in header, "validation" in header
    records = []
    for where, row in rows:
        record_id = row_id(row, where, id_column, path)
        split = split_from(row["set"] if has_set else None,
                           row["validation"] if has_validation else None, path, record_id)
        records.append(make_record(record_id=record_id, raw_sequence=row[sequence_column],
                                   raw_label=[row[c] for c in targets], task_type=task_type,
                                   split=split, path=path, unknown_residues=unknown_residues))
    check_unique([r.id for r in records], path)
    return records


def _attribute_label(entry: FastaEntry, targets: Sequence[str], path: Path) -> list[str]:
    keys = [t.upper() for t in targets]
    missing = [k for k in keys if k not in entry.attributes]
    if missing:
        raise DataError(path, entry.id, f"header has no {'/'.join(k + '=' for k in missing)} attribute")
    return [entry.attributes[k] for k in keys]


def read_flip_fasta(path: PathLike, *, task_type: str = "regression", target_column: str | Sequence[str] = "target",
                    unknown_residues: str = "error") -> list[ProteinRecord]:
    """Read a FLIP-style FASTA: ``>Sequence12 TARGET=0.53 SET=train VALIDATION=False``.

    The target comes from the header attribute named ``target_column``
    (case-insensitive, so ``target`` reads ``TARGET=``); ``SET`` and
    ``VALIDATION`` give the split when present.
    """
    path = existing_file(path)
    targets = target_columns(target_column)
    records = []
    for entry in read_fasta_entries(path):
        records.append(make_record(record_id=entry.id, raw_sequence=entry.body,
                                   raw_label=_attribute_label(entry, targets, path), task_type=task_type,
                                   split=entry_split(entry, path), path=path,
                                   unknown_residues=unknown_residues))
    return records
