"""The adapter format, and the checks that bind trained state to its backbone.

An adapter directory holds ``adapter.safetensors`` (only the trained tensors,
head included) and ``adapter_config.json`` (method, head, task, label names,
the backbone's spec and identity, and which checkpoint of the run it holds).
Nothing here unpickles anything: safetensors and JSON only. A config may name
backbone and method classes of peftlab's own packages (or ones the caller
trusts), never another callable. Rebuilding a model from an adapter is
:func:`peftlab.model.loading.load_adapter`.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from peftlab.classpath import public_class_path, same_class
from peftlab.errors import AdapterFileError, BackboneMismatchError
from peftlab.persistence.atomic import atomic_write
from peftlab.persistence.checkpoint_io import FORMAT_VERSION

WEIGHTS_FILE = "adapter.safetensors"

CONFIG_FILE = "adapter_config.json"

def save_adapter(module: Any, directory: str | os.PathLike, state: dict[str, Any] | None = None,
                 checkpoint: dict[str, Any] | None = None) -> Path:
    """Write ``module``'s trained state and its config (``module``: a PeftModule, or anything with its
    ``trainable_state_dict()`` and ``run_metadata()``); returns the directory. ``state``:
    the trained tensors when the caller gathered them (FSDP, DeepSpeed ZeRO-3:
    :func:`peftlab.distributed.gather_trainable_state`) or read them from the
    selected checkpoint, else the module's own. ``checkpoint``: which checkpoint
    of the run the tensors come from and why (recorded as ``checkpoint`` in
    ``adapter_config.json``)."""
    directory = Path(directory)
    state = module.trainable_state_dict() if state is None else state
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata={"format": "peftlab"}))
    metadata = module.run_metadata()
    if checkpoint is not None:
        metadata["checkpoint"] = checkpoint
    config = json.dumps(metadata, indent=2, sort_keys=True, default=str)
    atomic_write(directory / CONFIG_FILE, lambda p: Path(p).write_text(config))
    return directory

def read_adapter_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The adapter's ``adapter_config.json``, checked for the fields loading needs."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise AdapterFileError(f"{path}: no adapter config here (expected {CONFIG_FILE} beside {WEIGHTS_FILE})")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterFileError(f"{path}: not valid JSON ({e})") from e
    _check_adapter_config(meta, path)
    return meta

# field -> the type(s) its value must have
_CONFIG_FIELDS: dict[str, Any] = {
    "format_version": int, "method": dict, "method.name": str, "method.class_path": str, "method.init_args": dict,
    "backbone": dict, "backbone.class_path": str, "backbone.init_args": dict, "backbone_identity": dict,
    "head": dict, "head.task_type": str, "head.num_outputs": int, "head.pooling": str,
    "head.hidden_dim": (int, type(None)), "head.dropout": (int, float),
}

def _check_adapter_config(meta: Any, path: Path) -> None:
    if not isinstance(meta, dict):
        raise AdapterFileError(f"{path}: not an adapter config (a JSON object is expected)")
    for field, kind in _CONFIG_FIELDS.items():
        value: Any = meta
        for part in field.split("."):
            value = value.get(part, KeyError) if isinstance(value, dict) else KeyError
        if value is KeyError:
            raise AdapterFileError(f"{path}: field {field!r} is missing")
        if isinstance(value, bool) or not isinstance(value, kind):
            raise AdapterFileError(f"{path}: field {field!r} has a wrong type ({type(value).__name__})")
    if meta["format_version"] > FORMAT_VERSION:
        raise AdapterFileError(f"{path}: written by a newer peftlab (format {meta['format_version']}, "
                               f"this one reads up to {FORMAT_VERSION})")

def _trusted_module(module_name: str) -> bool:
    """peftlab and its domain packages (``peftlab_*``): the only modules whose
    classes an adapter config may name (and make peftlab import)."""
    top = module_name.split(".")[0]
    return top == "peftlab" or top.startswith("peftlab_")

def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"

def import_class(class_path: str, base: type, source: Path, trusted_classes: Iterable[type] = ()) -> type:
    """The class ``class_path`` names, which must subclass ``base`` and be defined
    in peftlab's own packages (``peftlab``, ``peftlab_*``), or be one of
    ``trusted_classes``, the caller's explicit allow-list. An adapter config is
    data: it may name one of these backbone or method classes, never another
    callable (``os.system`` ...) nor a class of some other module, imported or
    not (any module's subclass could run code in its constructor)."""
    module_name, _, name = class_path.rpartition(".")
    if not module_name or not name.isidentifier():
        raise AdapterFileError(f"{source}: {class_path!r} is not a class path")
    for cls in trusted_classes:
        if class_path in (_class_path(cls), public_class_path(cls)):
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise AdapterFileError(f"{source}: {class_path!r} (in trusted_classes) is not a {base.__name__} class")
            return cls
    if not _trusted_module(module_name):
        raise AdapterFileError(f"{source}: names {class_path!r}, which is not a class of peftlab's packages "
                               f"(peftlab, peftlab_*); if you trust it, pass the class in trusted_classes "
                               f"(or pass the {base.__name__.lower()} yourself)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise AdapterFileError(f"{source}: cannot import {module_name!r} for {class_path!r} ({e})") from e
    obj = getattr(module, name, None)
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise AdapterFileError(f"{source}: {class_path!r} is not a {base.__name__} class")
    if not _trusted_module(obj.__module__):  # a peftlab module's name for a class defined elsewhere
        raise AdapterFileError(f"{source}: {class_path!r} is {_class_path(obj)}, not a class of peftlab's packages; "
                               f"if you trust it, pass the class in trusted_classes")
    return obj

def head_options(meta: dict[str, Any]) -> dict[str, Any]:
    """PeftModule's keyword arguments for the head (and labels) an adapter config records."""
    head = meta["head"]
    return dict(task_type=head["task_type"], num_outputs=head["num_outputs"], label_names=meta.get("label_names"),
                pooling=head["pooling"], head_hidden_dim=head["hidden_dim"], head_dropout=head["dropout"],
                layer_weighted_sum=head.get("layer_weighted_sum", False), pairs=head.get("pairs", False),
                pair_combination=head.get("pair_combination", "symmetric"), task_options=head.get("task_options"))

def read_adapter_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The trained tensors of an adapter directory (``adapter.safetensors``)."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise AdapterFileError(f"{path}: file not found")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise AdapterFileError(f"{path}: not a readable safetensors file ({e})") from e


def shape_mismatches(expected: dict[str, Tensor], given: dict[str, Tensor]) -> list[str]:
    """``"name (given shape) != (expected shape)"`` for every tensor of ``expected`` that
    ``given`` holds with another shape (checkpoint and adapter loading)."""
    return [f"{k} {tuple(given[k].shape)} != {tuple(v.shape)}"
            for k, v in expected.items() if k in given and given[k].shape != v.shape]

def check_identity(expected: dict[str, Any], actual: dict[str, Any], source: str, force: bool = False) -> None:
    """Refuse to put trained state onto a different backbone, unless forced."""
    diffs = [f"{k}: trained on {expected.get(k)!r}, given {actual.get(k)!r}"
             for k in ("class_path", "name", "config", "fingerprint")
             if not (same_class(expected.get(k), actual.get(k)) if k == "class_path" else expected.get(k) == actual.get(k))]
    if diffs and not force:
        raise BackboneMismatchError(f"{source} was trained on a different backbone ("
                                    + "; ".join(diffs) + "). Load it onto the backbone it was trained on, "
                                    "or pass force=True if you know the weights are compatible.")
