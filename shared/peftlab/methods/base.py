"""The Method base class and the registry.

A method is a small config object (a plain class with a typed ``__init__``, so
that YAML and the CLI fill it through ``class_path`` / ``init_args``) with
``apply(backbone)``: it freezes what must stay frozen and injects or unfreezes
what trains. A method registers itself once under one name; the registry
drives the test matrix, so a new method is tested without editing the tests.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

from torch import Tensor, nn

from peftlab.backbone import Backbone
from peftlab.classpath import public_class_path

METHODS: dict[str, type["Method"]] = {}
M = TypeVar("M", bound=type["Method"])


def register_method(name: str) -> Callable[[M], M]:
    def add(cls: M) -> M:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered by {METHODS[name].__qualname__}")
        cls.name = name
        METHODS[name] = cls
        return cls
    return add


def build_method(name: str, **options: Any) -> "Method":
    """A method from its registered name and options, e.g. ``build_method("lora", r=4)``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(sorted(METHODS))}")
    return METHODS[name](**options)


class Method:
    """Base class of every PEFT method."""

    name: str = "method"
    #: True when ``merge`` folds the trained part into the frozen weights (no extra modules left).
    mergeable: bool = False
    #: False for methods that only choose which existing weights train (nothing to merge, no extra modules).
    adds_modules: bool = True
    #: the method's family and what it trains, in a few words (the README's method table).
    family: str = "other"
    trains: str = ""
    #: True when ``apply`` rewrites frozen weights (PiSSA / OLoRA keep a residual of the pretrained weight).
    rewrites_frozen_weights: bool = False
    #: the ``__init__`` option that sets the method's size (LoRA's rank ``r``, an adapter's ``bottleneck``,
    #: prompt ``num_tokens``), which a sweep's ``search`` block tunes; None: the method has no size.
    size_option: str | None = None

    def apply(self, backbone: Backbone) -> None:
        """Freeze, inject and unfreeze in place."""
        raise NotImplementedError

    def merge(self, backbone: Backbone) -> None:
        raise NotImplementedError(f"method {self.name!r} cannot be merged into the backbone weights")

    # ---- training-loop hooks (PeftModule calls them; the defaults do nothing) ----------
    def param_groups(self, backbone: Backbone, lr: float) -> list[dict[str, Any]]:
        """Optimiser groups for the backbone's trainable parameters (LoRA+ gives B a higher rate)."""
        params = [p for p in backbone.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "name": "backbone"}] if params else []

    def on_fit_start(self, backbone: Backbone, total_steps: int) -> None:
        """Called once the number of optimiser steps is known (AdaLoRA's rank schedule)."""

    def regularization(self, backbone: Backbone) -> Tensor | None:
        """A term added to the training loss (AdaLoRA's orthogonality penalty), or None."""
        return None

    def after_optimizer_step(self, backbone: Backbone, step: int) -> None:
        """Called after each optimiser step, before gradients are zeroed (AdaLoRA's rank allocation);
        ``step`` is the 0-based index of that step (0 after the first update)."""

    def training_state(self) -> dict[str, Any]:
        """State the method keeps outside the parameters while training (checkpointed so
        that a resumed run continues exactly; tensors and plain data only)."""
        return {}

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`training_state` returned."""

    def options(self) -> dict[str, Any]:
        """The ``__init__`` arguments, read back from attributes of the same name."""
        params = inspect.signature(type(self).__init__).parameters
        return {k: getattr(self, k) for k in params if k != "self"}

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "class_path": public_class_path(type(self)), "init_args": self.options()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({args})"


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
