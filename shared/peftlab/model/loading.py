"""A trained model back from its adapter directory: the backbone (rebuilt
from its recorded spec, or given), the method applied to it, the head and the
trained tensors; and folding a mergeable method into the backbone weights."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from peftlab.backbone import Backbone
from peftlab.errors import AdapterFileError
from peftlab.methods import METHODS, Method
from peftlab.model.module import PeftModule
from peftlab.persistence.adapter import (CONFIG_FILE, WEIGHTS_FILE, check_identity, head_options, import_class,
                                         read_adapter_config, read_adapter_weights, shape_mismatches)

def build_method_from_spec(spec: dict[str, Any], source: Path | None = None,
                           trusted_classes: Iterable[type] = ()) -> Method:
    if spec["name"] in METHODS:
        return METHODS[spec["name"]](**spec["init_args"])
    return import_class(spec["class_path"], Method, source or Path(CONFIG_FILE), trusted_classes)(**spec["init_args"])

def load_adapter(directory: str | os.PathLike, backbone: Backbone | None = None, force: bool = False,
                 method_options: dict[str, Any] | None = None, trusted_classes: Iterable[type] = ()) -> PeftModule:
    """Rebuild the trained model: the backbone (given, or built again from its
    recorded spec), the method applied to it, the head, and the trained tensors.

    Refuses a backbone whose identity differs from the one the adapter was
    trained on, unless ``force``. A missing, truncated or altered file gives an
    :class:`AdapterFileError` naming it. ``method_options`` override recorded
    options that do not change the trained tensors, e.g. ``{"quantize": None}``
    to put a QLoRA adapter on the full-precision backbone (on a CPU), or
    ``{"dropout": 0.0}``. The config may name backbone and method classes of
    peftlab's own packages only; ``trusted_classes`` adds your own (e.g.
    ``trusted_classes=[MyBackbone]``), see :func:`import_class`. The model
    comes back in eval mode (dropout off).
    """
    directory = Path(directory)
    meta = read_adapter_config(directory)
    if method_options:
        meta["method"]["init_args"] = {**meta["method"]["init_args"], **method_options}
    config_path = directory / CONFIG_FILE
    if backbone is None:
        backbone_class = import_class(meta["backbone"]["class_path"], Backbone, config_path, trusted_classes)
        try:
            backbone = backbone_class(**meta["backbone"]["init_args"])
        except TypeError as e:
            raise AdapterFileError(f"{config_path}: backbone init_args do not fit {backbone_class.__name__} ({e})") from e
    check_identity(meta["backbone_identity"], backbone.identity(), f"the adapter in {directory}", force=force)
    try:
        module = PeftModule(backbone, build_method_from_spec(meta["method"], config_path, trusted_classes),
                            **head_options(meta))
    except AdapterFileError:
        raise
    except (TypeError, ValueError, KeyError) as e:
        raise AdapterFileError(f"{config_path}: the method or head it describes cannot be built ({e})") from e
    weights_path = directory / WEIGHTS_FILE
    tensors = read_adapter_weights(directory)
    expected = module.trainable_state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterFileError(f"{weights_path}: does not match method {meta['method']['name']}: "
                               f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    wrong = shape_mismatches(expected, tensors)
    if wrong:
        raise AdapterFileError(f"{weights_path}: tensor shapes do not match method {meta['method']['name']} "
                               f"{meta['method']['init_args']}: {'; '.join(wrong[:3])}")
    kinds = [f"{k} {tensors[k].dtype} for {v.dtype}" for k, v in expected.items()
             if tensors[k].is_floating_point() != v.is_floating_point()]
    if kinds:
        raise AdapterFileError(f"{weights_path}: tensor types do not match: {'; '.join(kinds[:3])}")
    module.load_state_dict(tensors, strict=False)
    #: which checkpoint of its run the adapter holds, and why it was selected (None for older adapters)
    module.adapter_checkpoint = meta.get("checkpoint")
    return module.eval()  # for inference: dropout off (train() turns it back on)

def merge_adapter(module: PeftModule) -> PeftModule:
    """Fold a mergeable method's trained update into the backbone weights, in place."""
    if not module.method.mergeable:
        raise ValueError(f"method {module.method.name!r} cannot be merged: its trained modules stay in the model")
    module.method.merge(module.backbone)
    return module
