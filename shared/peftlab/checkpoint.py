"""Checkpoint and adapter files: atomic writes, safe loading, adapters, merging.

An adapter directory holds ``adapter.safetensors`` (only the trained tensors,
head included) and ``adapter_config.json`` (method, head, task, label names,
and the backbone's spec and identity). Nothing here unpickles anything but
plain data: adapters are safetensors + JSON, and Lightning checkpoints
(``.ckpt``) load in torch's weights-only mode through
:func:`load_checkpoint_file`, which every CLI run uses (through
:class:`AtomicCheckpointIO`) for ``--ckpt_path``.

Every file is written atomically (:func:`atomic_write`): to a temporary file
beside the target, flushed to disk, then renamed over it, so a crash or a
SIGKILL in the middle of a write leaves the previous file as it was.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from peftlab.backbone import Backbone
from peftlab.errors import AdapterFileError
from peftlab.persistence.atomic import atomic_write
from peftlab.methods import METHODS, Method
from peftlab.module import (FORMAT_VERSION, LOADED_FROM_KEY, CheckpointFileError, NonFiniteLossError, PeftModule,
                            check_identity, shape_mismatches)
from peftlab.safe_load import first_line, unsafe_globals

WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"

# Globals that weights-only loading of a .ckpt accepts beyond torch's own list
# (tensors, dicts, lists, tuples, primitive types, OrderedDict, torch.Size ...).
# peftlab's checkpoints need none: Lightning's parts (loops, callbacks, optimiser
# and scheduler states, hyper_parameters), the DataModule's position, our
# metadata and the random states (a torch ByteTensor, Python's state tuple) are
# all plain data. Add a class here only if a checkpoint really needs it.
SAFE_CHECKPOINT_GLOBALS: tuple[Any, ...] = ()

__all__ = ["AdapterFileError", "AtomicCheckpointIO", "CheckpointFileError", "NonFiniteLossError", "atomic_write",
           "head_options", "import_class", "load_adapter", "load_checkpoint_file", "merge_adapter", "read_adapter_config",
           "read_adapter_weights", "save_adapter",
           "use_atomic_checkpoint_io"]










# ---- Lightning checkpoints (.ckpt) ----------------------------------------------------------

def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a Lightning checkpoint in torch's weights-only mode: tensors and
    plain data only, never code. A missing, truncated or corrupted file, a file
    that is not a checkpoint, and a file that holds pickled objects (which
    could run code when unpickled) are refused with a
    :class:`CheckpointFileError` that names the file."""
    name = os.fspath(path)
    if name.startswith(("http://", "https://")):
        try:
            with torch.serialization.safe_globals(list(SAFE_CHECKPOINT_GLOBALS)):
                checkpoint = torch.hub.load_state_dict_from_url(name, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointFileError(f"{name}: refused: not plain tensors and data ({first_line(e)})") from None
        except Exception as e:
            raise CheckpointFileError(f"{name}: could not load the checkpoint ({first_line(e)})") from e
        return _checked_checkpoint(checkpoint, name)
    fs = get_filesystem(name)
    if not fs.exists(name):
        raise CheckpointFileError(f"{name}: file not found")
    if fs.isdir(name):
        raise CheckpointFileError(f"{name}: is a directory, not a checkpoint file")
    try:
        with fs.open(name, "rb") as f, torch.serialization.safe_globals(list(SAFE_CHECKPOINT_GLOBALS)):
            checkpoint = torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        with fs.open(name, "rb") as f:
            unsafe = unsafe_globals(f)
        if unsafe:
            raise CheckpointFileError(
                f"{name}: refused: the file holds pickled objects, not only tensors and plain data "
                f"({', '.join(unsafe[:5])}); unpickling them could run code from the file, so peftlab loads "
                f"checkpoints in torch's weights-only mode only. peftlab never writes such objects: this file "
                f"was not written by peftlab, or it was altered") from None
        raise CheckpointFileError(f"{name}: not a readable checkpoint, truncated or corrupted "
                                  f"({first_line(e)})") from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, IndexError, TypeError, AttributeError,
            zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise CheckpointFileError(f"{name}: not a readable checkpoint, truncated or corrupted "
                                  f"({first_line(e)})") from e
    return _checked_checkpoint(checkpoint, name)


def _checked_checkpoint(checkpoint: Any, name: str) -> dict[str, Any]:
    if not isinstance(checkpoint, dict):
        raise CheckpointFileError(f"{name}: not a Lightning checkpoint (it holds a {type(checkpoint).__name__}, "
                                  f"not a dict)")
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointFileError(f"{name}: not a Lightning checkpoint (no 'state_dict')")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointFileError(f"{name}: state_dict entries that are not tensors: {bad[:3]}")
    checkpoint[LOADED_FROM_KEY] = name  # so that later checks can name the file
    return checkpoint


def _is_local(path: Any) -> bool:
    return isinstance(get_filesystem(os.fspath(path)), LocalFileSystem)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic saves and safe loads.

    ``save_checkpoint`` writes local files through :func:`atomic_write` (temp
    file beside the target, fsync, ``os.replace``). Lightning 2.6's own save
    serialises the whole checkpoint into memory, then writes it through an
    fsspec transaction whose temporary file lies in the system's temp folder
    and is moved into place with ``shutil.move``: a rename only when that
    folder is on the checkpoint's file system (a copy into the target file
    otherwise, which a kill can leave half-written), and never synced to disk.
    Remote paths (fsspec URLs) keep Lightning's save.

    ``load_checkpoint`` (``--ckpt_path``, ``trainer.fit(ckpt_path=...)``) uses
    :func:`load_checkpoint_file`: weights-only, with errors that name the file.

    Every ``peftlab`` CLI run uses it (:func:`use_atomic_checkpoint_io`) unless
    the run names a CheckpointIO of its own.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"`Trainer.save_checkpoint(..., storage_options=...)` is not supported by "
                            f"{type(self).__name__}")
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path: Any, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is False:
            raise ValueError(f"{path}: peftlab loads checkpoints in torch's weights-only mode only "
                             f"(weights_only=False could run code from the file)")
        return load_checkpoint_file(path, map_location=map_location)


def use_atomic_checkpoint_io(strategy: Any) -> None:
    """Give ``strategy`` an :class:`AtomicCheckpointIO` where it would use
    Lightning's default ``TorchCheckpointIO``, also as the base of a wrapping
    plugin (``AsyncCheckpointIO``) that names none. A CheckpointIO the user
    chose (any other class) is left alone."""
    current = getattr(strategy, "_checkpoint_io", None)
    if current is None or type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
    elif isinstance(current, _WrappingCheckpointIO):
        base = current.checkpoint_io
        if base is None:
            current.checkpoint_io = AtomicCheckpointIO()
        elif type(base) is TorchCheckpointIO:  # Lightning already filled in its default
            current._checkpoint_io = AtomicCheckpointIO()


# ---- adapters -------------------------------------------------------------------------------

def save_adapter(module: PeftModule, directory: str | os.PathLike, state: dict[str, Any] | None = None,
                 checkpoint: dict[str, Any] | None = None) -> Path:
    """Write the trained state and its config; returns the directory. ``state``:
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
        if _class_path(cls) == class_path:
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


def build_method_from_spec(spec: dict[str, Any], source: Path | None = None,
                           trusted_classes: Iterable[type] = ()) -> Method:
    if spec["name"] in METHODS:
        return METHODS[spec["name"]](**spec["init_args"])
    return import_class(spec["class_path"], Method, source or Path(CONFIG_FILE), trusted_classes)(**spec["init_args"])


def head_options(meta: dict[str, Any]) -> dict[str, Any]:
    """PeftModule's keyword arguments for the head (and labels) an adapter config records."""
    head = meta["head"]
    return dict(task_type=head["task_type"], num_outputs=head["num_outputs"], label_names=meta.get("label_names"),
                pooling=head["pooling"], head_hidden_dim=head["hidden_dim"], head_dropout=head["dropout"],
                layer_weighted_sum=head.get("layer_weighted_sum", False))


def read_adapter_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The trained tensors of an adapter directory (``adapter.safetensors``)."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise AdapterFileError(f"{path}: file not found")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise AdapterFileError(f"{path}: not a readable safetensors file ({e})") from e


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

