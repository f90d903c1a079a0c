"""Bottleneck adapters, written once against the Backbone contract.

peft has no bottleneck adapters for non-HF models (AdapterHub's ``adapters``
package only wraps HF transformers classes), so they live here. An adapter is
a child module of the layer it follows (``<site>.adapter``) and runs through a
forward hook, so the backbone's own weights keep their names and the module
tree is otherwise untouched.

Placements:

* ``houlsby`` (Houlsby et al. 2019): after the attention output projection and
  after the MLP output, each before the residual add.
* ``pfeiffer`` (Pfeiffer et al. 2021): after the MLP output only.
* ``parallel`` (He et al. 2022; AdaptFormer's form): beside the MLP, reading the
  MLP input and adding ``scale * adapter(input)`` to the MLP output.

Compacter (Karimi Mahabadi et al. 2021): bottleneck adapters whose two
projections are parameterised hypercomplex multiplication (PHM) layers,

    W = sum_i  A_i (x) (s_i t_i^T),      i = 1..n,

with the small ``n x n`` rule matrices ``A_i`` shared by every adapter of the
model and a rank-1 factor per layer: a ``D -> b`` projection costs
``n (D/n + b/n) = D + b`` parameters instead of ``D b``. Placed after the MLP
output (Compacter++, the paper's cheaper and equally accurate variant).

peft has no Compacter and AdapterHub's only wraps HF transformers classes, so
it is written here on top of our bottleneck adapters.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor, nn

from peftlab.backbone import Backbone, select_layers
from peftlab.methods.base import Method, freeze, register_method

PLACEMENTS = ("houlsby", "pfeiffer", "parallel")


class Bottleneck(nn.Module):
    """``x -> up(act(down(x))) * scale``; ``up`` starts at zero so the adapted
    model starts exactly at the frozen one."""

    def __init__(self, dim: int, bottleneck: int, activation: str = "gelu", scale: float = 1.0) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = {"gelu": nn.GELU(), "relu": nn.ReLU(), "tanh": nn.Tanh()}[activation]
        self.up = nn.Linear(bottleneck, dim)
        self.scale = scale
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.stashed_input: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.act(self.down(x))) * self.scale


def _add_adapter_to_output(module: nn.Module, inputs, output: Tensor) -> Tensor:
    return output + module.adapter(output)


def _stash_input(adapter: Bottleneck, module: nn.Module, inputs) -> None:
    adapter.stashed_input = inputs[0]


def _add_parallel_adapter(module: nn.Module, inputs, output: Tensor) -> Tensor:
    adapter = module.adapter
    x, adapter.stashed_input = adapter.stashed_input, None
    if x is None:
        raise RuntimeError("parallel adapter: the MLP input was not seen before its output")
    return output + adapter(x)


def _site_width(site: nn.Module, which: str) -> int:
    weight = getattr(site, "weight", None)
    if weight is None or weight.ndim != 2:
        raise ValueError(f"adapter site {site.__class__.__name__} is not a linear layer")
    return weight.shape[0] if which == "out" else weight.shape[1]


@register_method("adapter")
class Adapter(Method):
    """Bottleneck adapters.

    Args:
        placement: ``houlsby``, ``pfeiffer`` or ``parallel``.
        bottleneck: hidden width of each adapter.
        activation: ``gelu``, ``relu`` or ``tanh``.
        scale: output multiplier (AdaptFormer uses 0.1 for the parallel form).
        layers: blocks that get adapters (``None`` = all).
    """

    size_option = "bottleneck"

    trains = "bottleneck MLPs after attention / MLP"

    family = "adapter"

    def __init__(self, placement: str = "houlsby", bottleneck: int = 64, activation: str = "gelu",
                 scale: float = 1.0, layers: list[int] | str | None = None) -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"adapter placement must be one of {PLACEMENTS}, got {placement!r}")
        self.placement, self.bottleneck, self.activation = placement, bottleneck, activation
        self.scale, self.layers = scale, layers

    def _site(self, backbone: Backbone, block: nn.Module, key: str) -> nn.Module:
        if key not in backbone.adapter_sites:
            why = ("" if backbone.token_sequence or backbone.adapter_sites else
                   ": bottleneck adapters act on token states, and this backbone's blocks are convolutional "
                   "(try ssf, bitfit or lora)")
            raise ValueError(f"{backbone.name} declares no {key!r} adapter site, "
                             f"so {self.placement} adapters cannot attach to it{why}")
        return block.get_submodule(backbone.adapter_sites[key])

    def _bottleneck(self, backbone: Backbone, dim: int) -> nn.Module:
        """One adapter module for a site of width ``dim`` (Compacter swaps in its PHM form)."""
        return Bottleneck(dim, self.bottleneck, self.activation, self.scale)

    def apply(self, backbone: Backbone) -> None:
        freeze(backbone)
        for i in select_layers(backbone.num_blocks, self.layers):
            block = backbone.blocks[i]
            if self.placement == "parallel":
                mlp_in, mlp_out = self._site(backbone, block, "mlp_in"), self._site(backbone, block, "mlp_out")
                adapter = self._bottleneck(backbone, _site_width(mlp_in, "in"))
                mlp_out.add_module("adapter", adapter)
                mlp_in.register_forward_pre_hook(partial(_stash_input, adapter))
                mlp_out.register_forward_hook(_add_parallel_adapter)
                continue
            keys = ["attention_out", "mlp_out"] if self.placement == "houlsby" else ["mlp_out"]
            for key in keys:
                site = self._site(backbone, block, key)
                site.add_module("adapter", self._bottleneck(backbone, _site_width(site, "out")))
                site.register_forward_hook(_add_adapter_to_output)
        # the adapters were created after freezing, so they (and only they) train
        for name, p in backbone.named_parameters():
            p.requires_grad_(".adapter." in f".{name}")


@register_method("adaptformer")
class AdaptFormer(Adapter):
    """AdaptFormer (Chen et al. 2022): a scaled bottleneck beside every MLP.

    The parallel adapter with the paper's defaults (ReLU, bottleneck 64,
    scale 0.1). It reads the MLP's (normalised) input, as the paper's
    ``adapter_layernorm_option="none"`` variant on pre-norm blocks.

    Args:
        bottleneck: hidden width.
        scale: output multiplier.
        layers: blocks that get adapters (``None`` = all).
    """

    trains = "scaled bottleneck beside each MLP"

    def __init__(self, bottleneck: int = 64, scale: float = 0.1, layers: list[int] | str | None = None) -> None:
        super().__init__(placement="parallel", bottleneck=bottleneck, activation="relu", scale=scale, layers=layers)


# ---- Compacter++ --------------------------------------------------------------------------------

RULES_NAME = "compacter_phm_rules"

class PHMRules(nn.Module):
    """The ``n`` shared ``n x n`` rule matrices, one set for down- and one for up-projections."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.randn(n, n, n) * 0.01 + torch.eye(n))
        self.up = nn.Parameter(torch.randn(n, n, n) * 0.01 + torch.eye(n))

class PHMLinear(nn.Module):
    """``x -> x W + bias`` with ``W = sum_i kron(rule_i, s_i t_i^T)`` (in x out)."""

    def __init__(self, rules: PHMRules, which: str, n: int, d_in: int, d_out: int, zero: bool) -> None:
        super().__init__()
        if d_in % n or d_out % n:
            raise ValueError(f"compacter: widths {d_in} and {d_out} must be divisible by phm_dim={n}")
        self._rules = [rules]  # shared: a plain list keeps it out of this module's parameters
        self.which = which
        bound = math.sqrt(6.0 / (d_in + d_out))  # Glorot, as the paper
        self.s = nn.Parameter(torch.empty(n, d_in // n, 1).uniform_(-bound, bound))
        self.t = nn.Parameter(torch.zeros(n, 1, d_out // n) if zero else torch.empty(n, 1, d_out // n).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def weight(self) -> Tensor:
        rule = getattr(self._rules[0], self.which)  # [n, n, n]
        factor = self.s @ self.t  # [n, d_in/n, d_out/n]
        # sum_i kron(rule_i, factor_i): [n*(d_in/n), n*(d_out/n)]
        w = torch.einsum("iab,icd->acbd", rule, factor)
        return w.reshape(rule.shape[1] * factor.shape[1], rule.shape[2] * factor.shape[2])

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight().to(x.dtype) + self.bias

class PHMBottleneck(nn.Module):
    """``x -> up(act(down(x)))``; the up projection starts at zero (identity start)."""

    def __init__(self, rules: PHMRules, n: int, dim: int, bottleneck: int, activation: str) -> None:
        super().__init__()
        self.down = PHMLinear(rules, "down", n, dim, bottleneck, zero=False)
        self.act = {"gelu": nn.GELU(), "relu": nn.ReLU(), "tanh": nn.Tanh()}[activation]
        self.up = PHMLinear(rules, "up", n, bottleneck, dim, zero=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.act(self.down(x)))

@register_method("compacter")
class Compacter(Adapter):
    """Compacter++: PHM bottleneck adapters after every MLP.

    Args:
        bottleneck: hidden width of each adapter (divisible by ``phm_dim``).
        phm_dim: ``n``, the number of shared rule matrices (must divide the widths).
        activation: ``gelu``, ``relu`` or ``tanh``.
        placement: ``pfeiffer`` (after the MLP, Compacter++) or ``houlsby`` (also after attention).
        layers: blocks that get adapters (``None`` = all).
    """

    trains = "PHM bottleneck adapters (shared rules + rank-1 factors)"

    def __init__(self, bottleneck: int = 32, phm_dim: int = 4, activation: str = "gelu",
                 placement: str = "pfeiffer", layers: list[int] | str | None = None) -> None:
        if placement not in ("pfeiffer", "houlsby"):
            raise ValueError(f"compacter placement must be 'pfeiffer' or 'houlsby', got {placement!r}")
        super().__init__(placement=placement, bottleneck=bottleneck, activation=activation, layers=layers)
        self.phm_dim = phm_dim

    def _bottleneck(self, backbone: Backbone, dim: int) -> nn.Module:
        return PHMBottleneck(backbone.get_submodule(RULES_NAME), self.phm_dim, dim, self.bottleneck, self.activation)

    def apply(self, backbone: Backbone) -> None:
        if RULES_NAME in backbone._modules:
            raise ValueError("compacter is already applied to this backbone")
        backbone.add_module(RULES_NAME, PHMRules(self.phm_dim))
        super().apply(backbone)
        for p in backbone.get_submodule(RULES_NAME).parameters():
            p.requires_grad_(True)
