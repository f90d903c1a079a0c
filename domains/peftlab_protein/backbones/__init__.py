"""Protein backbones: ESM-2 through fair-esm (:mod:`peftlab_protein.backbones.fair_esm`) and through
transformers (:class:`HFProteinEncoder`, :mod:`peftlab_protein.backbones.transformers_esm`, imported
when first named: transformers takes seconds to import).

Configs and saved adapters name these classes by this package's path
(``peftlab_protein.backbones.ESM2Backbone``) or the domain's
(``peftlab_protein.ESM2Backbone``); both keep working whichever module
defines them.
"""

from peftlab_protein.backbones.fair_esm import ESM2_SIZES, ESM_ALPHABET, FAIR_ESM_MODEL_URL, ESM2Backbone, esm_alphabet

__all__ = ["ESM2_SIZES", "ESM2Backbone", "ESM_ALPHABET", "FAIR_ESM_MODEL_URL", "HFProteinEncoder", "esm_alphabet"]


def __getattr__(name: str):
    if name == "HFProteinEncoder":
        from peftlab_protein.backbones.transformers_esm import HFProteinEncoder
        return HFProteinEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
