"""FASTA: parsing (``>id KEY=value ...`` headers, sequences over several lines)
and a plain FASTA whose labels sit in a separate file (:func:`read_fasta_with_labels`).

The labels file is a CSV (``id,label`` or ``id,<target_column>``, optionally
``set``/``validation``) or a FASTA file whose attributes hold the target, or
whose body holds a per-residue label string (FLIP secondary-structure layout:
``>Seq1 SET=train VALIDATION=False`` / ``CCHHHEEE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from peftlab.data import DataError, UniqueIds, csv_dict_reader, existing_file, manifest_rows, open_text
from peftlab_protein.data.per_residue import read_score_folder, read_score_lines
from peftlab_protein.data.records import (ASCII_WHITESPACE, ID_COLUMNS, Labels, PathLike, ProteinRecord,
                                          check_unique, make_record, row_id, split_from, target_columns)

FASTA_SUFFIXES = (".fasta", ".fa", ".faa")


@dataclass
class FastaEntry:
    id: str
    attributes: dict[str, str]  # KEY=value header attributes, keys upper-cased
    body: str
    line: int


def _header(line: str, n: int, path: Path) -> FastaEntry:
    """The entry a ``>`` header line starts (its body still empty)."""
    words = line[1:].split()
    if not words:
        raise DataError(path, f"line {n}", "FASTA header without an id")
    attributes = {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if sep and key:
            attributes[key.upper()] = value
    return FastaEntry(words[0], attributes, "", n)


def read_fasta_entries(path: Path) -> list[FastaEntry]:
    """FASTA records with their header attributes; multi-line bodies are joined."""
    entries: list[FastaEntry] = []
    chunks: list[list[str]] = []
    with open_text(path) as f:
        for n, line in enumerate(f, start=1):
            line = line.strip(ASCII_WHITESPACE)
            if not line or line.startswith(";"):
                continue
            if line.startswith(">"):
                entries.append(_header(line, n, path))
                chunks.append([])
            else:
                if not entries:
                    raise DataError(path, f"line {n}", "sequence text before the first '>' header")
                chunks[-1].append(line)
    for entry, body in zip(entries, chunks):
        entry.body = "".join(body)
    if not entries:
        raise DataError(path, None, "no FASTA records found")
    check_unique([e.id for e in entries], path)
    return entries


def entry_split(entry: FastaEntry, path: Path) -> str | None:
    """The split from the entry's FLIP ``SET`` / ``VALIDATION`` header attributes (``None``: no ``SET``)."""
    return split_from(entry.attributes.get("SET"), entry.attributes.get("VALIDATION"), path, entry.id)


def _labels_from_fasta(path: Path, targets: Sequence[str]) -> Labels:
    labels: Labels = {}
    keys = [t.upper() for t in targets]
    for entry in read_fasta_entries(path):
        if all(k in entry.attributes for k in keys):
            raw = [entry.attributes[k] for k in keys]
        elif entry.body:
            raw = [entry.body]  # FLIP secondary-structure layout: the body is the label string
        else:
            raise DataError(path, entry.id, f"no label: neither {'/'.join(k + '=' for k in keys)} "
                                            "attribute nor a label line")
        labels[entry.id] = (raw, entry_split(entry, path))
    return labels


def _labels_from_csv(path: Path, targets: list[str]) -> Labels:
    with open_text(path, newline="") as f:
        header = list(csv_dict_reader(f, path).fieldnames or [])
    if not all(t in header for t in targets) and "label" in header:
        targets = ["label"]
    id_column = next((c for c in ID_COLUMNS if c in header), "id")
    header, rows = manifest_rows(path, [id_column, *targets])
    has_set, has_validation = "set" in header, "validation" in header
    labels: Labels = {}
    ids = UniqueIds(path)
    for where, row in rows:
        record_id = ids.add(row_id(row, where, id_column, path))
        split = split_from(row["set"] if has_set else None,
                           row["validation"] if has_validation else None, path, record_id)
        labels[record_id] = ([row[c] for c in targets], split)
    return labels


def read_labels(path: Path, target_column: str | Sequence[str], sequences: dict[str, str] | None = None) -> Labels:
    """``id -> (raw target values, split)`` from a labels CSV, a labels FASTA, or per-residue
    scores (a ``.txt`` scores file or a folder of per-protein files, :mod:`~peftlab_protein.data.per_residue`;
    the folder's residue letters are checked against ``sequences``)."""
    targets = target_columns(target_column)
    if path.is_dir():
        return read_score_folder(path, sequences or {})
    if path.suffix.lower() == ".txt":
        return read_score_lines(path)
    if path.suffix.lower() in FASTA_SUFFIXES:
        return _labels_from_fasta(path, targets)
    return _labels_from_csv(path, targets)


def read_fasta_with_labels(fasta_path: PathLike, labels_path: PathLike, *, task_type: str = "regression",
                           target_column: str | Sequence[str] = "target",
                           unknown_residues: str = "error") -> list[ProteinRecord]:
    """Read a plain FASTA and join labels on the FASTA id (first word of the header).

    ``labels_path`` is either a CSV with an ``id`` (or ``name``) column and the
    ``target_column`` column(s) (falling back to a ``label`` column), a
    FASTA file whose header attribute ``TARGET=`` (named by ``target_column``)
    or, failing that, whose body holds the label, or per-residue scores (a
    CheZOD-style ``.txt`` file or folder, see :mod:`~peftlab_protein.data.per_residue`). The labels file's
    ``set``/``validation`` (CSV) or ``SET``/``VALIDATION`` (FASTA) values give
    the split; otherwise the sequence FASTA's header attributes do. Labels for
    ids that are not in the FASTA are ignored; a FASTA id without a label is
    an error.
    """
    fasta_path = existing_file(fasta_path)
    labels_path = Path(labels_path) if Path(labels_path).is_dir() else existing_file(labels_path)
    entries = read_fasta_entries(fasta_path)
    labels = read_labels(labels_path, target_column, {e.id: e.body for e in entries})
    records = []
    for entry in entries:
        if entry.id not in labels:
            raise DataError(labels_path, entry.id, f"no label for sequence id {entry.id!r} of {fasta_path}")
        raw_label, split = labels[entry.id]
        if split is None:
            split = entry_split(entry, fasta_path)
        records.append(make_record(record_id=entry.id, raw_sequence=entry.body, raw_label=raw_label,
                                   task_type=task_type, split=split, path=fasta_path,
                                   unknown_residues=unknown_residues, label_path=labels_path))
    return records


def read_residue_masks(path: PathLike) -> dict[str, str]:
    """A per-residue mask FASTA (FLIP): id -> ``"1"`` (scored) / ``"0"`` (not scored) per residue."""
    path = existing_file(path)
    masks = {}
    for entry in read_fasta_entries(path):
        bad = set(entry.body) - {"0", "1"}
        if bad or not entry.body:
            found = f"found {''.join(sorted(bad))!r}" if bad else "it is empty"
            raise DataError(path, entry.id, f"a residue mask holds one 0 or 1 per residue; {found}")
        masks[entry.id] = entry.body
    return masks
