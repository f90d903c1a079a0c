"""Methods that learn a scale (and shift) of existing activations.

* (IA)^3, through HF peft: learned rescaling of keys, values and the MLP.
* SSF (Lian et al. 2022): a learned per-channel scale and shift after each
  linear, convolution and normalisation layer. Dutt et al. found it the best
  PEFT method for CNNs on medical images.
  
  peft has no SSF, so it is written here: each adapted layer gets a child
  ``ssf`` module and a forward hook (``y -> y * scale + shift`` over the channel
  dimension: the last one for token states, dimension 1 for feature maps).
  Merging folds the scale and shift into the layer's weight and bias, leaving
  the plain layer.
"""

from __future__ import annotations

import torch
from peft import IA3Config
from torch import Tensor, nn

from peftlab.backbone import Backbone, resolve_targets, select_layers
from peftlab.methods.base import Method, freeze, register_method
from peftlab.methods.peft_support import PeftMethod

@register_method("ia3")
class IA3(PeftMethod):
    """(IA)^3 (Liu et al. 2022): learned rescaling of keys, values and the MLP.

    Args:
        targets: modules whose outputs are rescaled (preset or names).
        feedforward_targets: modules whose *inputs* are rescaled (the MLP output
            layer in the paper); must also be reachable, they are added to the targets.
        layers: blocks to adapt.
    """

    trains = "scales of keys, values and MLP activations"

    family = "scaling"

    def __init__(self, targets: str | list[str] = "ia3", feedforward_targets: str | list[str] = "mlp_out",
                 layers: list[int] | str | None = None) -> None:
        self.targets, self.feedforward_targets, self.layers = targets, feedforward_targets, layers

    def apply(self, backbone: Backbone) -> None:
        targets = resolve_targets(backbone, self.targets, self.layers)
        feedforward = resolve_targets(backbone, self.feedforward_targets, self.layers)
        config = IA3Config(target_modules=sorted(set(targets) | set(feedforward)),
                           feedforward_modules=feedforward, init_ia3_weights=True)
        self._inject(backbone, config)


ADAPTED_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d,
                 nn.BatchNorm3d, nn.GroupNorm)

def _channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return module.out_channels
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    return module.num_features  # batch norms

def _channel_dim(module: nn.Module) -> int:
    return -1 if isinstance(module, (nn.Linear, nn.LayerNorm)) else 1

class ScaleShift(nn.Module):
    def __init__(self, channels: int, channel_dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))
        self.channel_dim = channel_dim

    def forward(self, y: Tensor) -> Tensor:
        shape = [1] * y.ndim
        shape[self.channel_dim] = -1
        return y * self.scale.view(shape) + self.shift.view(shape)

def _ssf_hook(module: nn.Module, inputs, output: Tensor) -> Tensor:
    return module.ssf(output)

@register_method("ssf")
class SSF(Method):
    """Scale and shift after every linear / convolution / normalisation layer of the chosen blocks.

    Args:
        layers: blocks to adapt (``None`` = all).
    """

    trains = "scale and shift after every layer"

    mergeable = True
    family = "scaling"

    def __init__(self, layers: list[int] | str | None = None) -> None:
        self.layers = layers

    def apply(self, backbone: Backbone) -> None:
        freeze(backbone)
        found = 0
        for i in select_layers(backbone.num_blocks, self.layers):
            block = backbone.blocks[i]
            # layers whose weights are read directly (nn.MultiheadAttention's out_proj, the backbone's
            # declared bypassed layers) never call their hooks: leave them out rather than train dead parameters
            fused = {id(m.out_proj) for m in block.modules() if isinstance(m, nn.MultiheadAttention)}
            fused |= {id(block.get_submodule(n)) for n in backbone.bypassed_modules}
            for module in list(block.modules()):
                if isinstance(module, ADAPTED_TYPES) and id(module) not in fused:
                    module.add_module("ssf", ScaleShift(_channels(module), _channel_dim(module)))
                    module.register_forward_hook(_ssf_hook)
                    found += 1
        if not found:
            raise ValueError(f"ssf: {type(backbone).__name__} has no linear, convolution or norm layers in its blocks")

    @torch.no_grad()
    def merge(self, backbone: Backbone) -> None:
        merged = 0
        for module in list(backbone.modules()):
            ssf = module._modules.get("ssf")
            if not isinstance(ssf, ScaleShift):
                continue
            weight = getattr(module, "weight", None)
            if weight is None:
                raise ValueError(f"ssf: cannot merge into {type(module).__name__} without affine weights")
            shape = [-1] + [1] * (weight.ndim - 1)
            weight.mul_(ssf.scale.view(shape))
            if module.bias is None:
                module.bias = nn.Parameter(torch.zeros_like(ssf.shift), requires_grad=False)
            module.bias.mul_(ssf.scale).add_(ssf.shift)
            del module.ssf
            for key, hook in list(module._forward_hooks.items()):
                if hook is _ssf_hook:
                    del module._forward_hooks[key]
            merged += 1
        if not merged:
            raise ValueError("ssf: nothing to merge (was the method applied?)")
