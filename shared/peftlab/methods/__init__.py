"""PEFT methods and their registry, grouped by family. Importing this package
registers every built-in method.

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

from peftlab.methods.base import METHODS, Method, build_method, count_parameters, freeze, register_method
from peftlab.methods.peft_support import PeftMethod, merge_peft_layers
from peftlab.methods.lora import AdaLoRA, DoRA, LoRA, LoRAPlus, OLoRA, PiSSA
from peftlab.methods.reparameterisation import BOFT, OFT, FourierFT, LoHa, LoKr, VeRA
from peftlab.methods.scaling import IA3, SSF
from peftlab.methods.selective import BitFit, Full, LinearProbe, LNTuning, Partial
from peftlab.methods.adapters import AdaptFormer, Adapter, Compacter
from peftlab.methods.prompts import PrefixTuning, Prompt, register_prefix_attention
from peftlab.methods.reft import LoReFT
from peftlab.methods.combined import Combined

__all__ = ["METHODS", "Method", "PeftMethod", "build_method", "count_parameters", "freeze", "register_method",
           "merge_peft_layers", "Full", "LinearProbe", "BitFit", "Partial", "LNTuning", "LoRA", "DoRA", "PiSSA",
           "OLoRA", "LoRAPlus", "AdaLoRA", "LoHa", "LoKr", "VeRA", "OFT", "BOFT", "FourierFT", "IA3", "SSF",
           "Adapter", "AdaptFormer", "Compacter", "Prompt", "PrefixTuning", "register_prefix_attention", "LoReFT",
           "Combined"]
