"""PEFT methods and their registry, grouped by family. Taking any name from this
package (``peftlab.methods.METHODS``, ``LoRA`` ...) registers every built-in method.

    base                 Method, the registry (register_method, build_method)
    peft_support         what the methods HF peft implements share (targets, injection, merging)
    lora                 LoRA, DoRA, PiSSA, OLoRA, LoRA+, AdaLoRA
    reparameterisation   LoHa, LoKr, VeRA, OFT, BOFT, FourierFT
    scaling              (IA)^3, SSF
    selective            full, linear probe, BitFit, partial, LN tuning
    adapters             bottleneck adapters (Houlsby, Pfeiffer, parallel), AdaptFormer, Compacter++
    prompts              prompt tuning (shallow / deep), prefix tuning
    reft                 LoReFT
    combined             several methods together
"""

import importlib
from typing import Any

#: the family modules, in registration order (every one registers its methods when imported)
FAMILIES = ("base", "peft_support", "lora", "reparameterisation", "scaling", "selective", "adapters", "prompts",
            "reft", "combined")
#: public name -> the family module that defines it
_EXPORTS = {
    **dict.fromkeys(("METHODS", "Method", "build_method", "count_parameters", "freeze", "register_method"), "base"),
    "PeftMethod": "peft_support", "merge_peft_layers": "peft_support",
    **dict.fromkeys(("AdaLoRA", "DoRA", "LoRA", "LoRAPlus", "OLoRA", "PiSSA"), "lora"),
    **dict.fromkeys(("BOFT", "OFT", "FourierFT", "LoHa", "LoKr", "VeRA"), "reparameterisation"),
    "IA3": "scaling", "SSF": "scaling",
    **dict.fromkeys(("BitFit", "Full", "LinearProbe", "LNTuning", "Partial"), "selective"),
    **dict.fromkeys(("AdaptFormer", "Adapter", "Compacter"), "adapters"),
    **dict.fromkeys(("PrefixTuning", "Prompt", "register_prefix_attention"), "prompts"),
    "LoReFT": "reft", "Combined": "combined",
}


def import_all() -> None:
    """Import every family, so that the registry (``METHODS``) and ``Method.__subclasses__`` are complete."""
    for family in FAMILIES:
        importlib.import_module(f"peftlab.methods.{family}")


def __getattr__(name: str) -> Any:
    """A name taken from the package (``from peftlab.methods import METHODS``) registers every method
    first; a family module imported by its own path (``peftlab.methods.prompts``, what a backbone
    needs at import time) imports only itself, so that a domain's import does not pull in HF peft
    (and through it transformers and torchaudio)."""
    if name in _EXPORTS:
        import_all()
        return getattr(importlib.import_module(f"peftlab.methods.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'peftlab.methods' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = ["METHODS", "Method", "PeftMethod", "build_method", "count_parameters", "freeze", "register_method",
           "merge_peft_layers", "Full", "LinearProbe", "BitFit", "Partial", "LNTuning", "LoRA", "DoRA", "PiSSA",
           "OLoRA", "LoRAPlus", "AdaLoRA", "LoHa", "LoKr", "VeRA", "OFT", "BOFT", "FourierFT", "IA3", "SSF",
           "Adapter", "AdaptFormer", "Compacter", "Prompt", "PrefixTuning", "register_prefix_attention", "LoReFT",
           "Combined"]
