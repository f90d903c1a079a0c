"""peftlab: parameter-efficient fine-tuning pipelines on Lightning.

The core is domain-agnostic; domains (``peftlab_protein``, ...) add backbones,
data and metrics. The core never imports a domain. Importing ``peftlab``
imports nothing heavy: the names below load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from peftlab import _moved

_moved.install()  # module paths of earlier versions stay importable (peftlab._moved)

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "Backbone": "peftlab.backbone", "Features": "peftlab.backbone", "TokenHook": "peftlab.backbone",
    "resolve_targets": "peftlab.backbone", "select_layers": "peftlab.backbone",
    "PeftDataModule": "peftlab.data", "Pooling": "peftlab.model.heads", "TaskHead": "peftlab.model.heads",
    "METHODS": "peftlab.methods", "Method": "peftlab.methods", "build_method": "peftlab.methods",
    "PeftModule": "peftlab.model.module", "load_adapter": "peftlab.model.loading",
    "merge_adapter": "peftlab.model.loading", "save_adapter": "peftlab.persistence.adapter",
    "DataError": "peftlab.errors", "BackboneMismatchError": "peftlab.errors", "PeftlabError": "peftlab.errors",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'peftlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
