"""Lightning checkpoints (``.ckpt``): written atomically, read in torch's
weights-only mode (tensors and plain data, never code), with errors that name
the file. Every CLI run saves and loads through :class:`AtomicCheckpointIO`.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

from peftlab.errors import CheckpointFileError
from peftlab.persistence.atomic import atomic_write
from peftlab.persistence.safe_load import first_line, unsafe_globals

#: the key of peftlab's run metadata in a checkpoint, and the version of its format (and the adapter's)
CHECKPOINT_KEY = "peftlab"
FORMAT_VERSION = 1
#: set on a loaded checkpoint dict by :func:`load_checkpoint_file`: the file, for later messages
LOADED_FROM_KEY = "_peftlab_loaded_from"

# Globals that weights-only loading of a .ckpt accepts beyond torch's own list
# (tensors, dicts, lists, tuples, primitive types, OrderedDict, torch.Size ...).
# peftlab's checkpoints need none: Lightning's parts (loops, callbacks, optimiser
# and scheduler states, hyper_parameters), the DataModule's position, our
# metadata and the random states (a torch ByteTensor, Python's state tuple) are
# all plain data. Add a class here only if a checkpoint really needs it.
SAFE_CHECKPOINT_GLOBALS: tuple[Any, ...] = ()

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
