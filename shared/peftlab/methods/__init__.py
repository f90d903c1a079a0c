"""PEFT methods and their registry. Importing this package registers every built-in method."""

from peftlab.methods.base import METHODS, Method, build_method, count_parameters, freeze, register_method
from peftlab.methods.simple import BitFit, Full, LinearProbe, Partial
from peftlab.methods.peft_methods import (BOFT, IA3, OFT, VeRA, AdaLoRA, DoRA, FourierFT, LNTuning, LoHa, LoKr,
                                          LoRA, LoRAPlus, OLoRA, PiSSA, merge_peft_layers)
from peftlab.methods.adapters import AdaptFormer, Adapter
from peftlab.methods.compacter import Compacter
from peftlab.methods.prefix import PrefixTuning, register_prefix_attention
from peftlab.methods.prompt import Prompt
from peftlab.methods.reft import LoReFT
from peftlab.methods.ssf import SSF
from peftlab.methods.combined import Combined

__all__ = ["METHODS", "Method", "build_method", "count_parameters", "freeze", "register_method",
           "Full", "LinearProbe", "BitFit", "Partial", "LoRA", "DoRA", "PiSSA", "OLoRA", "LoRAPlus", "AdaLoRA",
           "LoHa", "LoKr", "VeRA", "OFT", "BOFT", "FourierFT", "IA3", "LNTuning", "merge_peft_layers",
           "Adapter", "AdaptFormer", "Compacter", "Prompt", "PrefixTuning", "register_prefix_attention", "LoReFT", "SSF", "Combined"]
