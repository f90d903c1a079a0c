"""QLoRA (Dettmers et al. 2023): a 4-bit quantised frozen backbone under LoRA.

:func:`quantize_backbone` replaces every ``nn.Linear`` inside the backbone's
blocks by a bitsandbytes ``Linear4bit`` (NF4 by default, double quantisation
of the scales, bf16 compute) and quantises it on the GPU. Call it before a
method injects LoRA: HF peft wraps ``Linear4bit`` layers with its own
bitsandbytes LoRA layer, so LoRA, DoRA and their options work unchanged, and
the trained tensors (``lora_A`` / ``lora_B``, the head) keep the names they
have on an unquantised backbone: a QLoRA adapter loads onto the bf16 or fp32
backbone it was trained from (the backbone's identity is taken before the
method quantises it).

What stays in full precision: embeddings, norms, the task head, the LoRA
weights, and linear layers that a block's fused attention reads directly
instead of calling (``Backbone.bypassed_modules``, and subclasses of
``nn.Linear`` such as ``nn.MultiheadAttention``'s ``out_proj``).

Needs CUDA and ``pip install bitsandbytes``; anywhere else it stops with
:class:`QuantizationUnavailableError` before touching the backbone.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from peftlab.errors import QuantizationUnavailableError

QUANT_TYPES = ("nf4", "fp4")


def require_bitsandbytes(quant_type: str = "nf4") -> Any:
    """The ``bitsandbytes`` module, or a :class:`QuantizationUnavailableError`
    that says everything that is missing (the package, a CUDA GPU)."""
    problems = []
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        bnb = None
        problems.append(f"bitsandbytes is not installed ({e}; pip install bitsandbytes)")
    if not torch.cuda.is_available():
        problems.append("no CUDA GPU is visible here (torch.cuda.is_available() is False)")
    if problems:
        raise QuantizationUnavailableError(
            f"quantize={quant_type!r} (QLoRA: a 4-bit frozen backbone) needs bitsandbytes and a CUDA GPU: "
            + "; ".join(problems) + ". Without them, train plain LoRA (no quantize), with "
            "--trainer.precision bf16-mixed to halve activation memory.")
    return bnb


def default_device() -> torch.device:
    """This process's GPU: ``LOCAL_RANK`` under torchrun, srun or Lightning's
    launcher (the model is built before Lightning moves it), else the current one."""
    local_rank = os.environ.get("LOCAL_RANK")
    return torch.device("cuda", int(local_rank) if local_rank is not None else torch.cuda.current_device())


def quantizable_linears(backbone: nn.Module) -> list[str]:
    """Names (in the backbone) of the linear layers that 4-bit quantisation
    replaces: exact ``nn.Linear`` inside the blocks, less those the blocks'
    fused kernels read directly."""
    bypassed = tuple(getattr(backbone, "bypassed_modules", ()))
    names = []
    for block_name in backbone.block_names():
        block = backbone.get_submodule(block_name)
        for name, module in block.named_modules():
            if type(module) is nn.Linear and not any(name == b or name.startswith(b + ".") for b in bypassed):
                names.append(f"{block_name}.{name}")
    return names


def quantize_backbone(backbone: nn.Module, quant_type: str = "nf4", compute_dtype: torch.dtype = torch.bfloat16,
                      double_quant: bool = True, device: str | torch.device | None = None) -> list[str]:
    """Replace the backbone's block linear layers by frozen 4-bit
    ``bitsandbytes.nn.Linear4bit`` layers, quantised on ``device`` (default:
    this process's GPU). Call before the method injects LoRA. Returns the names
    of the replaced layers.

    Args:
        backbone: a :class:`peftlab.backbone.Backbone`.
        quant_type: ``nf4`` (QLoRA's NormalFloat) or ``fp4``.
        compute_dtype: dtype of the matmuls (the weights are dequantised to it).
        double_quant: quantise the quantisation scales too (about 0.4 bit per weight saved).
        device: where to quantise (a CUDA device).
    """
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quantize must be one of {', '.join(QUANT_TYPES)} (or null), got {quant_type!r}")
    bnb = require_bitsandbytes(quant_type)
    device = torch.device(device) if device is not None else default_device()
    names = quantizable_linears(backbone)
    if not names:
        raise ValueError(f"{type(backbone).__name__}: no nn.Linear layers in its blocks to quantise")
    for name in names:
        linear = backbone.get_submodule(name)
        q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=compute_dtype, compress_statistics=double_quant, quant_type=quant_type,
                              device="meta")
        q.weight = bnb.nn.Params4bit(linear.weight.detach().to("cpu", torch.float32), requires_grad=False,
                                     compress_statistics=double_quant, quant_type=quant_type, module=q)
        if linear.bias is not None:
            q.bias = nn.Parameter(linear.bias.detach().to("cpu", torch.float32), requires_grad=False)
        q = q.to(device)  # Params4bit quantises when it moves to the device
        parent_name, _, child = name.rpartition(".")
        setattr(backbone.get_submodule(parent_name), child, q)
    # peft reads this flag (as on a transformers model loaded in 4 bits) to wrap Linear4bit layers with
    # its bitsandbytes LoRA layer; without it, LoRA would wrap them with the plain layer, which cannot merge
    backbone.is_loaded_in_4bit = True
    return names


def quantized_layers(module: nn.Module) -> list[str]:
    """Names of the 4-bit layers in ``module`` (peft's LoRA wrappers included)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return []
    return [n for n, m in module.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
