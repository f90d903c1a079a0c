"""Methods that only choose which existing weights train: full, linear probe,
BitFit, partial (top-k blocks). They add no module, so there is nothing to merge."""

from __future__ import annotations

from peftlab.backbone import Backbone, select_layers
from peftlab.methods.base import Method, freeze, register_method


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
