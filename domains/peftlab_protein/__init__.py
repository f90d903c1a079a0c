"""peftlab's protein domain: ESM-2 backbones (fair-esm), FASTA/CSV data, protein metrics and recipes."""

from peftlab_protein.backbones import ESM2_SIZES, ESM2Backbone, esm_alphabet

__all__ = ["ESM2_SIZES", "ESM2Backbone", "esm_alphabet"]
