"""Compacter (Karimi Mahabadi et al. 2021): bottleneck adapters whose two
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

import torch
from torch import Tensor, nn

from peftlab.backbone import Backbone
from peftlab.methods.adapters import Adapter
from peftlab.methods.base import register_method

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
