"""Class paths that outlive moves between modules.

What peftlab writes into checkpoints and ``adapter_config.json`` names a
class by its *public* path (the shortest package that exports it, e.g.
``peftlab_protein.ESM2Backbone``, ``peftlab.methods.LoRA``), not the module
it happens to be defined in; and two paths name the same class when they
import to the same object, so files written before a module moved (with
``peftlab_protein.backbones.ESM2Backbone``) still match.
"""

from __future__ import annotations

import importlib
import sys


def public_class_path(cls: type) -> str:
    """``package.Class`` for the shortest parent package of ``cls``'s module that
    exports the class itself, else ``module.Class``."""
    parts = cls.__module__.split(".")
    for i in range(1, len(parts)):
        parent = sys.modules.get(".".join(parts[:i]))
        if parent is not None and getattr(parent, cls.__name__, None) is cls:
            return f"{'.'.join(parts[:i])}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _peftlab_class(path: str) -> type | None:
    """The class a peftlab class path names (peftlab's own packages only), or None."""
    module_name, _, name = path.rpartition(".")
    top = module_name.split(".")[0]
    if not module_name or not (top == "peftlab" or top.startswith("peftlab_")):
        return None
    try:
        obj = getattr(importlib.import_module(module_name), name, None)
    except ImportError:
        return None
    return obj if isinstance(obj, type) else None


def same_class(a: str | None, b: str | None) -> bool:
    """Whether two class paths name the same class (equal, or peftlab paths that import to one class)."""
    if a == b:
        return True
    if not a or not b:
        return False
    cls_a, cls_b = _peftlab_class(a), _peftlab_class(b)
    return cls_a is not None and cls_a is cls_b
