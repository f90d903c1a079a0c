"""What the methods HF ``peft`` implements share: targets resolved through the
Backbone contract and injected with ``peft.inject_adapter_in_model``, and
merging peft's layers back into plain ones.

peft works on any ``nn.Module`` given explicit ``target_modules``; we pass full
module names so that a layer subset (e.g. the last 8 blocks) is exact. Every
such method merges: peft's layers fold their update into the base weight.

A method's options (its ``__init__``) are its configuration; ``adapter_name``
(``"default"``) is where it injects, so that several adapters can share one
backbone (:mod:`peftlab.multi_adapter`) by setting it, without patching.
"""

from __future__ import annotations

import warnings

from peft import inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from peftlab.backbone import Backbone, resolve_targets
from peftlab.methods.base import Method, freeze

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.RMSNorm)

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


class PeftMethod(Method):
    """A method HF peft implements: subclasses build the peft config from their
    options and call :meth:`_inject`."""

    mergeable = True
    family = "reparameterisation"
    #: why the method needs linear targets, when peft supports it (or we trust it) on linear layers only
    linear_only: str | None = None
    #: the peft adapter name the method injects under; another name puts a second adapter of the same
    #: peft family beside the first in one backbone (peftlab.multi_adapter sets it)
    adapter_name: str = "default"

    def _targets(self, backbone: Backbone, targets, layers) -> list[str]:
        names = resolve_targets(backbone, targets, layers)
        if self.linear_only:
            other = [f"{n} ({type(backbone.get_submodule(n)).__name__})" for n in names
                     if not isinstance(backbone.get_submodule(n), nn.Linear)]
            if other:
                raise ValueError(f"{self.name}: {self.linear_only}, but the targets on {backbone.name} include "
                                 f"{', '.join(other[:3])}{'...' if len(other) > 3 else ''}; give linear targets "
                                 f"(presets: {', '.join(sorted(backbone.target_presets))}) or use lora/loha/lokr")
        return names

    def _inject(self, backbone: Backbone, config) -> None:
        freeze(backbone)
        with warnings.catch_warnings():  # a second adapter name: "Already found a `peft_config` attribute" is the point
            if self.adapter_name != "default":
                warnings.filterwarnings("ignore", message=".*peft_config.*")
            inject_adapter_in_model(config, backbone, adapter_name=self.adapter_name)
        # inject_adapter_in_model leaves only adapter weights trainable.

    def merge(self, backbone: Backbone) -> None:
        if merge_peft_layers(backbone) == 0:
            raise ValueError(f"{self.name}: no adapted layers to merge (was the method applied?)")
