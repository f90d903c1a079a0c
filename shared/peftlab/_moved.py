"""Module paths of earlier peftlab versions, kept importable.

Configs, ``adapter_config.json`` files and user code written before the core
was regrouped name modules such as ``peftlab.module`` or
``peftlab.methods.peft_methods``. :data:`MOVED` maps each former module to the
module(s) that now hold its names; :class:`MovedModuleFinder` (installed by
``import peftlab``) makes ``import peftlab.module`` give the module that holds
``PeftModule`` now (a module holding the same objects), and a former module
split in several gives one module holding all their names. Nothing is
imported until a former path is used.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

#: former module -> the module(s) that now hold its names
MOVED: dict[str, tuple[str, ...]] = {
    "peftlab.module": ("peftlab.errors", "peftlab.persistence.checkpoint_io", "peftlab.persistence.adapter",
                       "peftlab.model.module"),
    "peftlab.heads": ("peftlab.model.heads",),
    "peftlab.metrics": ("peftlab.model.metrics",),
    "peftlab.cache": ("peftlab.model.cache",),
    "peftlab.safe_load": ("peftlab.persistence.safe_load",),
    "peftlab.checkpoint": ("peftlab.errors", "peftlab.persistence.atomic", "peftlab.persistence.checkpoint_io",
                           "peftlab.persistence.adapter", "peftlab.model.loading"),
    "peftlab.methods.peft_methods": ("peftlab.methods.peft_support", "peftlab.methods.lora",
                                     "peftlab.methods.reparameterisation", "peftlab.methods.scaling",
                                     "peftlab.methods.selective"),
    "peftlab.methods.simple": ("peftlab.methods.selective",),
    "peftlab.methods.ssf": ("peftlab.methods.scaling",),
    "peftlab.methods.compacter": ("peftlab.methods.adapters",),
    "peftlab.methods.prompt": ("peftlab.methods.prompts",),
    "peftlab.methods.prefix": ("peftlab.methods.prompts",),
}


class _MovedModuleLoader(importlib.abc.Loader):
    """A module under the former name holding every name of the module(s) that replaced it
    (the same objects: ``peftlab.module.PeftModule is peftlab.model.module.PeftModule``)."""

    def __init__(self, targets: tuple[str, ...]) -> None:
        self.targets = targets

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # the default: a fresh module

    def exec_module(self, module: types.ModuleType) -> None:
        for target in self.targets:
            source = importlib.import_module(target)
            module.__dict__.update({n: v for n, v in vars(source).items() if not n.startswith("__")})
        module.__doc__ = f"Former module, now {', '.join(self.targets)}."


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the former modules of :data:`MOVED`."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        targets = MOVED.get(fullname)
        if targets is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedModuleLoader(targets))


def install() -> None:
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
