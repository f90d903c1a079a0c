"""peftlab: parameter-efficient fine-tuning pipelines on Lightning.

The core is domain-agnostic; domains (``peftlab_protein``, ...) add backbones,
data and metrics. The core never imports a domain.
"""

from peftlab.backbone import Backbone, Features, TokenHook, resolve_targets, select_layers
from peftlab.data import DataError, PeftDataModule
from peftlab.heads import Pooling, TaskHead
from peftlab.methods import METHODS, Method, build_method
from peftlab.module import BackboneMismatchError, PeftModule

__version__ = "0.1.0"
__all__ = ["Backbone", "Features", "TokenHook", "resolve_targets", "select_layers", "DataError",
           "PeftDataModule", "Pooling", "TaskHead", "METHODS", "Method", "build_method",
           "BackboneMismatchError", "PeftModule", "__version__"]
