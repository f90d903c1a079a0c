"""Protein sequence data: readers, validation and the protein DataModule.

    records   ProteinRecord, residue cleaning, target and split parsing shared by the readers
    fasta     FASTA parsing; a plain FASTA with a labels file (:func:`read_fasta_with_labels`)
    flip      FLIP CSV (:func:`read_flip_csv`) and FLIP FASTA with ``KEY=value`` headers (:func:`read_flip_fasta`)
    per_residue  per-residue scores (CheZOD's file and folder layouts); masks are read by ``fasta``
    base      ProteinDataModule: every format through one class (``format: auto|csv|fasta``)
    pairs     protein pairs (PPI): the pairs reader, a split by protein, ProteinPairDataModule

Every input layout produces :class:`ProteinRecord` objects. Per-residue (token
classification) labels are strings with one character per residue, e.g.
``CCHHHEEE``; in a CSV they simply sit in the target column.

Every problem in the input raises :class:`peftlab.data.DataError`, whose
message names the file, the record and what is wrong. Files are read as UTF-8
(a BOM is skipped); other bytes, or a CSV field longer than the csv module's
limit, raise a DataError naming the line.

Every name of the former ``peftlab_protein.data`` module is importable from
here (``__all__`` is the former one; the format constants are importable
too), and configs keep naming ``peftlab_protein.data.ProteinDataModule``.
"""

from peftlab_protein.data.base import FORMATS, ProteinDataModule  # noqa: F401 (FORMATS re-exported)
from peftlab_protein.data.fasta import FASTA_SUFFIXES, read_fasta_with_labels  # noqa: F401
from peftlab_protein.data.pairs import ProteinPair, ProteinPairDataModule, read_pairs, split_by_protein
from peftlab_protein.data.flip import CSV_SUFFIXES, read_flip_csv, read_flip_fasta  # noqa: F401
from peftlab_protein.data.records import (ALLOWED_RESIDUES, AMBIGUOUS_RESIDUES, STANDARD_RESIDUES,
                                          UNKNOWN_RESIDUE_POLICIES, PathLike, ProteinRecord,  # noqa: F401
                                          clean_sequence)

__all__ = [
    "ALLOWED_RESIDUES",
    "AMBIGUOUS_RESIDUES",
    "STANDARD_RESIDUES",
    "UNKNOWN_RESIDUE_POLICIES",
    "ProteinDataModule",
    "ProteinPair",
    "ProteinPairDataModule",
    "ProteinRecord",
    "clean_sequence",
    "read_fasta_with_labels",
    "read_flip_csv",
    "read_flip_fasta",
    "read_pairs",
    "split_by_protein",
]
