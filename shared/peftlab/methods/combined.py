"""Combinations of methods on one backbone (e.g. LoRA + BitFit, adapters +
prompts): each part is applied in turn, and everything any part trains keeps
training. (The SUPERB weighted layer sum is a head option, not a method:
combine it with any method through ``model.layer_weighted_sum``.)"""

from __future__ import annotations

from typing import Any

from peftlab.backbone import Backbone
from peftlab.methods.base import Method, build_method, register_method


@register_method("combined")
class Combined(Method):
    """Several methods applied together.

    Args:
        parts: the methods, in the order they are applied, each as
            ``{name: <registered method>, <option>: <value>...}``, e.g.
            ``[{name: lora, r: 8}, {name: bitfit}]``.
    """

    trains = "whatever its parts train"

    family = "combination"

    def __init__(self, parts: list[dict[str, Any]]) -> None:
        if len(parts) < 2:
            raise ValueError(f"combined needs at least two parts, got {len(parts)}")
        self.parts = [dict(p) for p in parts]
        self.methods = []
        for i, part in enumerate(self.parts):
            options = dict(part)
            name = options.pop("name", None)
            if name is None:
                raise ValueError(f"combined: part {i} ({part}) has no 'name'")
            if name == "combined":
                raise ValueError("combined: parts cannot themselves be combinations")
            self.methods.append(build_method(name, **options))
        # merged when every part that adds modules merges (e.g. LoRA + BitFit; not LoRA + prompt)
        self.mergeable = all(m.mergeable or not m.adds_modules for m in self.methods)
        self.rewrites_frozen_weights = any(m.rewrites_frozen_weights for m in self.methods)

    def apply(self, backbone: Backbone) -> None:
        trained: set[int] = set()
        for method in self.methods:
            method.apply(backbone)  # may freeze what an earlier part unfroze
            trained |= {id(p) for p in backbone.parameters() if p.requires_grad}
        for p in backbone.parameters():
            if id(p) in trained:
                p.requires_grad_(True)

    def merge(self, backbone: Backbone) -> None:
        for method in self.methods:
            if method.mergeable:
                method.merge(backbone)

    def on_fit_start(self, backbone: Backbone, total_steps: int) -> None:
        for method in self.methods:
            method.on_fit_start(backbone, total_steps)

    def regularization(self, backbone: Backbone):
        terms = [t for m in self.methods if (t := m.regularization(backbone)) is not None]
        return sum(terms) if terms else None

    def after_optimizer_step(self, backbone: Backbone, step: int) -> None:
        for method in self.methods:
            method.after_optimizer_step(backbone, step)

    def __repr__(self) -> str:
        return "Combined(" + " + ".join(repr(m) for m in self.methods) + ")"
