"""Methods that only choose which existing weights train: full fine-tuning,
linear probe, BitFit, partial (top-k blocks) and LN tuning (through HF peft).
The first four add no module, so there is nothing to merge."""

from __future__ import annotations

import warnings

from peft import LNTuningConfig

from peftlab.backbone import Backbone, select_layers
from peftlab.methods.base import Method, freeze, register_method
from peftlab.methods.peft_support import NORM_TYPES, PeftMethod

@register_method("full")
class Full(Method):
    """Full fine-tuning: every backbone weight trains."""

    trains = "every backbone weight"

    adds_modules = False
    family = "full"

    def __init__(self) -> None:
        pass

    def apply(self, backbone: Backbone) -> None:
        for p in backbone.parameters():
            p.requires_grad_(True)

@register_method("linear_probe")
class LinearProbe(Method):
    """Frozen backbone; only the task head trains."""

    trains = "the head only"

    adds_modules = False
    family = "frozen"

    def __init__(self) -> None:
        pass

    def apply(self, backbone: Backbone) -> None:
        freeze(backbone)

@register_method("bitfit")
class BitFit(Method):
    """BitFit (Ben Zaken et al. 2022): only bias terms train.

    Args:
        layers: restrict to some blocks (``None`` = all biases in the backbone,
            also outside the blocks, as in the paper).
    """

    trains = "every bias"

    adds_modules = False
    family = "selective"

    def __init__(self, layers: list[int] | str | None = None) -> None:
        self.layers = layers

    def apply(self, backbone: Backbone) -> None:
        freeze(backbone)
        if self.layers is None:
            scope = backbone
            params = scope.named_parameters()
        else:
            params = ((n, p) for i in select_layers(backbone.num_blocks, self.layers)
                      for n, p in backbone.blocks[i].named_parameters())
        found = 0
        for name, p in params:
            if name.endswith("bias"):
                p.requires_grad_(True)
                found += 1
        if found == 0:
            raise ValueError(f"bitfit: {type(backbone).__name__} has no bias parameters to train")

@register_method("partial")
class Partial(Method):
    """Partial fine-tuning: the top ``k`` blocks train fully, everything else
    stays frozen: the classic "unfreeze the last layers" baseline.

    Args:
        k: number of blocks, counted from the top.
    """

    trains = "the top k blocks, whole"

    adds_modules = False
    family = "selective"

    def __init__(self, k: int = 2) -> None:
        self.k = k

    def apply(self, backbone: Backbone) -> None:
        freeze(backbone)
        for i in select_layers(backbone.num_blocks, f"last:{self.k}"):
            for p in backbone.blocks[i].parameters():
                p.requires_grad_(True)


@register_method("ln_tuning")
class LNTuning(PeftMethod):
    """LN tuning (Qi et al. 2022): only the normalisation layers train (their
    scale and shift; a trained batch norm also keeps its statistics). peft
    trains a copy of each layer and swaps it in on merge.

    Args:
        layers: ``None``: every normalisation layer of the backbone (inside and
            outside the blocks, except layers the backbone keeps frozen);
            otherwise those inside the chosen blocks.
    """

    trains = "normalisation layers' scale and shift"

    family = "selective"

    def __init__(self, layers: list[int] | str | None = None) -> None:
        self.layers = layers

    def norm_layers(self, backbone: Backbone) -> list[str]:
        frozen = {id(p) for p in backbone.always_frozen()}
        if self.layers is None:
            scopes = [("", backbone)]
        else:
            names = backbone.block_names()
            scopes = [(names[i] + ".", backbone.get_submodule(names[i]))
                      for i in select_layers(len(names), self.layers)]
        found = [prefix + n for prefix, scope in scopes for n, m in scope.named_modules()
                 if isinstance(m, NORM_TYPES) and any(p.numel() for p in m.parameters())
                 and not any(id(p) in frozen for p in m.parameters())]
        if not found:
            raise ValueError(f"ln_tuning: {backbone.name} has no trainable normalisation layer in the chosen blocks")
        return found

    def apply(self, backbone: Backbone) -> None:
        with warnings.catch_warnings():  # peft calls any layer type but its own list "unsupported"
            warnings.filterwarnings("ignore", message="Unsupported layer type")
            self._inject(backbone, LNTuningConfig(target_modules=self.norm_layers(backbone)))
