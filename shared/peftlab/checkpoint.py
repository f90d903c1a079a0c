"""Adapter-only save and load, and merging.

An adapter directory holds ``adapter.safetensors`` (only the trained tensors,
head included) and ``adapter_config.json`` (method, head, task, label names,
and the backbone's spec and identity). Nothing here unpickles anything.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from peftlab.backbone import Backbone
from peftlab.methods import METHODS, Method
from peftlab.module import PeftModule, check_identity

WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"


class AdapterFileError(ValueError):
    """An adapter file is missing, truncated or not what it claims to be."""


def _atomic_write(path: Path, write) -> None:
    """Write to a temporary file beside ``path`` and rename it into place, so a
    crash never leaves a half-written file under the real name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_adapter(module: PeftModule, directory: str | os.PathLike) -> Path:
    """Write the trained state and its config; returns the directory."""
    directory = Path(directory)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.trainable_state_dict().items()}
    _atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata={"format": "peftlab"}))
    config = json.dumps(module.run_metadata(), indent=2, sort_keys=True, default=str)
    _atomic_write(directory / CONFIG_FILE, lambda p: Path(p).write_text(config))
    return directory


def read_adapter_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise AdapterFileError(f"{path}: no adapter config here (expected {CONFIG_FILE} beside {WEIGHTS_FILE})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterFileError(f"{path}: not valid JSON ({e})") from e


def _import(class_path: str) -> type:
    module_name, _, name = class_path.rpartition(".")
    module = __import__(module_name, fromlist=[name])
    return getattr(module, name)


def build_method_from_spec(spec: dict[str, Any]) -> Method:
    if spec["name"] in METHODS:
        return METHODS[spec["name"]](**spec["init_args"])
    return _import(spec["class_path"])(**spec["init_args"])


def load_adapter(directory: str | os.PathLike, backbone: Backbone | None = None, force: bool = False) -> PeftModule:
    """Rebuild the trained model: the backbone (given, or built again from its
    recorded spec), the method applied to it, the head, and the trained tensors.

    Refuses a backbone whose identity differs from the one the adapter was
    trained on, unless ``force``.
    """
    directory = Path(directory)
    meta = read_adapter_config(directory)
    if backbone is None:
        backbone = _import(meta["backbone"]["class_path"])(**meta["backbone"]["init_args"])
    check_identity(meta["backbone_identity"], backbone.identity(), f"the adapter in {directory}", force=force)
    head = meta["head"]
    module = PeftModule(backbone, build_method_from_spec(meta["method"]), task_type=head["task_type"],
                        num_outputs=head["num_outputs"], label_names=meta.get("label_names"),
                        pooling=head["pooling"], head_hidden_dim=head["hidden_dim"], head_dropout=head["dropout"],
                        layer_weighted_sum=head.get("layer_weighted_sum", False))
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise AdapterFileError(f"{weights_path}: file not found")
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterFileError(f"{weights_path}: not a readable safetensors file ({e})") from e
    expected = set(module.trainable_state_dict())
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise AdapterFileError(f"{weights_path}: does not match method {meta['method']['name']}: "
                               f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    wrong = [f"{k} {tuple(tensors[k].shape)} != {tuple(v.shape)}"
             for k, v in module.trainable_state_dict().items() if tensors[k].shape != v.shape]
    if wrong:
        raise AdapterFileError(f"{weights_path}: tensor shapes do not match method {meta['method']['name']} "
                               f"{meta['method']['init_args']}: {'; '.join(wrong[:3])}")
    module.load_state_dict(tensors, strict=False)
    return module


def merge_adapter(module: PeftModule) -> PeftModule:
    """Fold a mergeable method's trained update into the backbone weights, in place."""
    if not module.method.mergeable:
        raise ValueError(f"method {module.method.name!r} cannot be merged: its trained modules stay in the model")
    module.method.merge(module.backbone)
    return module

