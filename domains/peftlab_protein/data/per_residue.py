"""Per-residue targets and masks: the files Schmirler et al. 2024, SETH and FLIP ship.

* A scores file (CheZOD training layout): one line per protein, ``ID:`` then
  a value for every residue, separated by commas (``26672: 999, 2.73, ...``).
* A scores folder (CheZOD test layout): one file per protein, named
  ``<prefix><ID>.txt`` (CheZOD: ``zscores26672.txt``), one row per residue in
  sequence order: residue letter, residue number, value. The letters are
  checked against the sequence.

(A mask FASTA, FLIP's ``>ID`` then one ``1``/``0`` per residue, is read by
:func:`peftlab_protein.data.fasta.read_residue_masks`.)

Missing measurements (CheZOD writes ``999``) are turned into NaN by the data
module's ``missing_value``; NaN residues count in neither loss nor metrics.
"""

from __future__ import annotations

from pathlib import Path

from peftlab.data import DataError, open_text
from peftlab_protein.data.records import ASCII_WHITESPACE, Labels, check_unique

#: file-name prefix of a scores folder's per-protein files (CheZOD's)
SCORE_FILE_PREFIX = "zscores"


def read_score_lines(path: Path) -> Labels:
    """A scores file: ``ID: v1, v2, ...`` per line (blank lines skipped)."""
    labels: Labels = {}
    ids = []
    with open_text(path) as f:
        for n, line in enumerate(f, start=1):
            line = line.strip(ASCII_WHITESPACE)
            if not line:
                continue
            record_id, sep, values = line.partition(":")
            record_id = record_id.strip()
            if not sep or not record_id:
                raise DataError(path, f"line {n}", "expected 'ID: value, value, ...' (one protein per line)")
            labels[record_id] = ([values], None)
            ids.append(record_id)
    if not labels:
        raise DataError(path, None, "no per-residue scores found")
    check_unique(ids, path)
    return labels


def read_score_folder(folder: Path, sequences: dict[str, str], prefix: str = SCORE_FILE_PREFIX) -> Labels:
    """A scores folder: ``<prefix><ID>.txt`` per protein of ``sequences`` (id -> residues), rows of
    ``letter number value``; a missing file, a bad row or letters that differ from the sequence are
    DataErrors naming the file and the protein."""
    labels: Labels = {}
    for record_id, sequence in sequences.items():
        path = folder / f"{prefix}{record_id}.txt"
        if not path.is_file():
            raise DataError(folder, record_id, f"no scores file {path.name} for this protein")
        letters, values = [], []
        with open_text(path) as f:
            for n, line in enumerate(f, start=1):
                cells = line.split()
                if not cells:
                    continue
                if len(cells) != 3:
                    raise DataError(path, f"{record_id} line {n}", f"expected 'residue number value', got {line.strip()!r}")
                letters.append(cells[0].upper())
                values.append(cells[2])
        read = "".join(letters)
        if read != sequence:
            first = next((i for i, (a, b) in enumerate(zip(read, sequence)) if a != b), min(len(read), len(sequence)))
            raise DataError(path, record_id, f"its residues differ from the sequence at residue {first + 1} "
                                             f"({len(read)} rows, sequence of {len(sequence)})")
        labels[record_id] = ([" ".join(values)], None)
    return labels
