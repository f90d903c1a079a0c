"""Methods that HF ``peft`` implements: thin wrappers that resolve targets
through the Backbone contract and inject with ``peft.inject_adapter_in_model``.

peft works on any ``nn.Module`` given explicit ``target_modules``; we pass full
module names so that a layer subset (e.g. the last 8 blocks) is exact.
"""

from __future__ import annotations

from peft import IA3Config, LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from peftlab.backbone import Backbone, resolve_targets
from peftlab.methods.base import Method, freeze, register_method


def merge_peft_layers(backbone: nn.Module) -> int:
    """Fold every peft layer into its base layer and put the base layer back in
    its place, outermost first (peft nests a layer inside nn.MultiheadAttention's
    wrapper), until no peft module is left. Returns how many were merged."""
    replaced = 0
    while True:
        found = next(((n, m) for n, m in backbone.named_modules() if n and isinstance(m, BaseTunerLayer)), None)
        if found is None:
            return replaced
        name, module = found
        if not module.merged:
            module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = backbone.get_submodule(parent_name) if parent_name else backbone
        setattr(parent, child, module.get_base_layer())
        replaced += 1


class _PeftMethod(Method):
    mergeable = True

    def _inject(self, backbone: Backbone, config) -> None:
        freeze(backbone)
        inject_adapter_in_model(config, backbone, adapter_name="default")
        # inject_adapter_in_model leaves only adapter weights trainable.

    def merge(self, backbone: Backbone) -> None:
        if merge_peft_layers(backbone) == 0:
            raise ValueError(f"{self.name}: no adapted layers to merge (was the method applied?)")


@register_method("lora")
class LoRA(_PeftMethod):
    """LoRA (Hu et al. 2021), with DoRA (Liu et al. 2024) and rsLoRA scaling as options.

    Args:
        r: rank of the update.
        alpha: scaling numerator (update scaled by ``alpha / r``, or
            ``alpha / sqrt(r)`` with ``use_rslora``).
        dropout: dropout on the LoRA input.
        targets: a target preset of the backbone (``attention``,
            ``attention+mlp``, ``all-linear``, ``conv``...), block-relative
            module names (e.g. ``[self_attn.k_proj, self_attn.v_proj]``), or
            ``None`` for the backbone's default (attention; convolutions on a CNN).
        layers: blocks to adapt: ``None`` (all), indices (negative from the
            end) or ``"last:N"``.
        use_dora: weight-decomposed LoRA (DoRA).
        use_rslora: rank-stabilised scaling.
        init: peft's ``init_lora_weights`` (``true``, ``gaussian``, ``pissa``, ``olora``...).
    """

    def __init__(self, r: int = 8, alpha: float = 16, dropout: float = 0.0,
                 targets: str | list[str] | None = None, layers: list[int] | str | None = None,
                 use_dora: bool = False, use_rslora: bool = False, init: bool | str = True) -> None:
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.targets, self.layers = targets, layers
        self.use_dora, self.use_rslora, self.init = use_dora, use_rslora, init

    def apply(self, backbone: Backbone) -> None:
        config = LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                            target_modules=resolve_targets(backbone, self.targets, self.layers),
                            use_dora=self.use_dora, use_rslora=self.use_rslora,
                            init_lora_weights=self.init, bias="none")
        self._inject(backbone, config)


@register_method("ia3")
class IA3(_PeftMethod):
    """(IA)^3 (Liu et al. 2022): learned rescaling of keys, values and the MLP.

    Args:
        targets: modules whose outputs are rescaled (preset or names).
        feedforward_targets: modules whose *inputs* are rescaled (the MLP output
            layer in the paper); must also be reachable, they are added to the targets.
        layers: blocks to adapt.
    """

    def __init__(self, targets: str | list[str] = "ia3", feedforward_targets: str | list[str] = "mlp_out",
                 layers: list[int] | str | None = None) -> None:
        self.targets, self.feedforward_targets, self.layers = targets, feedforward_targets, layers

    def apply(self, backbone: Backbone) -> None:
        targets = resolve_targets(backbone, self.targets, self.layers)
        feedforward = resolve_targets(backbone, self.feedforward_targets, self.layers)
        config = IA3Config(target_modules=sorted(set(targets) | set(feedforward)),
                           feedforward_modules=feedforward, init_ia3_weights=True)
        self._inject(backbone, config)
