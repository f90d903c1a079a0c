"""PEFT methods and their registry. Importing this package registers every built-in method."""

from peftlab.methods.base import METHODS, Method, build_method, count_parameters, freeze, register_method
from peftlab.methods.simple import BitFit, Full, LinearProbe
from peftlab.methods.peft_methods import IA3, LoRA, merge_peft_layers
from peftlab.methods.adapters import AdaptFormer, Adapter
from peftlab.methods.prompt import Prompt
from peftlab.methods.ssf import SSF

__all__ = ["METHODS", "Method", "build_method", "count_parameters", "freeze", "register_method",
           "Full", "LinearProbe", "BitFit", "LoRA", "IA3", "merge_peft_layers", "Adapter", "AdaptFormer", "Prompt", "SSF"]
