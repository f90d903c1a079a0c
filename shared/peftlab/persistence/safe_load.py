"""Reading pretrained weights that libraries store as torch pickles, safely.

fair-esm's and torchaudio's weights come through ``torch.hub`` (its cache,
``$TORCH_HOME/hub/checkpoints``, first), timm's and transformers' through
their own loaders. ``torch.hub.load_state_dict_from_url`` unpickles with
``weights_only=False`` unless told otherwise, and unpickling runs whatever
code a tampered file holds (a ``__reduce__`` is enough). Everything here
reads in torch's weights-only mode (tensors and plain data, plus a short,
explicit allow-list where a published format needs a class, such as the
``argparse.Namespace`` in fair-esm's files) and turns a refusal into an
:class:`UnsafeWeightsError` that names the file.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import urllib.error
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

import torch

from peftlab.errors import CheckpointFileError, UnsafeWeightsError

__all__ = ["UnsafeWeightsError", "hub_cache_file", "load_hub_weights", "load_weights_file", "refusing_unsafe_pickles"]


def hub_cache_file(url_or_name: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps (and first looks for) this URL's file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url_or_name).path)


def _qualname(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _refusal_in(error: BaseException) -> pickle.UnpicklingError | None:
    """The weights-only refusal behind ``error`` (libraries re-raise it as another type)."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        if isinstance(e, pickle.UnpicklingError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def unsafe_globals(file: str | os.PathLike | BinaryIO, allowed: Iterable[Any] = ()) -> list[str]:
    """The classes / functions a torch file's pickle names beyond torch's list and
    ``allowed`` (read from the pickle's opcodes; nothing is executed). ``file``: a
    path or an open binary file."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(
            os.fspath(file) if isinstance(file, (str, os.PathLike)) else file)
    except Exception:  # too damaged to list, or not a zip checkpoint
        return []
    ok = {_qualname(a) for a in allowed}
    return [n for n in names if n not in ok]


def unsafe_weights_error(file: str | os.PathLike, refusal: BaseException, what: str,
                         allowed: Iterable[Any] = ()) -> UnsafeWeightsError:
    names = unsafe_globals(file, allowed) if Path(file).is_file() else []
    if not names:
        names = sorted(set(re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(refusal))))
    detail = ", ".join(names[:5]) or str(refusal).strip().splitlines()[0]
    in_hub_cache = Path(torch.hub.get_dir()).resolve() in Path(file).resolve().parents
    fix = ("delete it from torch.hub's cache and it is downloaded again" if in_hub_cache
           else "replace it with the published file")
    return UnsafeWeightsError(
        f"{file}: refused: this {what} holds pickled objects, not only tensors and plain data ({detail}); "
        f"unpickling them could run code from the file, so peftlab reads pretrained weights in torch's "
        f"weights-only mode only: {fix}")


@contextlib.contextmanager
def refusing_unsafe_pickles(file: str | os.PathLike, what: str = "weights file",
                            allowed: Iterable[Any] = ()) -> Iterator[None]:
    """Around a library's weights-only load: its refusal (raised as itself or wrapped in
    another error) becomes an :class:`UnsafeWeightsError` naming ``file``."""
    try:
        yield
    except Exception as e:
        refusal = _refusal_in(e)
        if refusal is None:
            raise
        raise unsafe_weights_error(file, refusal, what, allowed) from None


def first_line(error: BaseException) -> str:
    """``Type: first line of the message``, for error messages that wrap another error."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def load_weights_file(path: str | os.PathLike, what: str = "weights file", allowed: Iterable[Any] = ()) -> Any:
    """``torch.load`` of a local file in weights-only mode (plus exactly ``allowed``), on the CPU."""
    allowed = list(allowed)
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise unsafe_weights_error(path, e, what, allowed) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointFileError(f"{path}: not a readable {what}, truncated or corrupted ({first_line(e)})") from e


def load_hub_weights(url: str, what: str = "weights file", allowed: Iterable[Any] = (),
                     offline_fix: str | None = None) -> Any:
    """``torch.hub.load_state_dict_from_url`` in weights-only mode (plus exactly ``allowed``), on the CPU:
    the file in torch.hub's cache if it is there, else downloaded into it. Offline, a missing file is a
    :class:`peftlab.errors.WeightsUnavailableError` (see :mod:`peftlab.hub`) whose advice is
    ``offline_fix`` (default: where to put the file)."""
    from peftlab.hub import weights_unavailable

    allowed = list(allowed)
    file = hub_cache_file(url)
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, weights_only=True)
    except urllib.error.URLError as e:
        raise weights_unavailable(f"{what} {file.name} (from {url})", e,
                                  offline_fix or f"copy the file to {file} (torch.hub's cache)") from None
    except pickle.UnpicklingError as e:
        raise unsafe_weights_error(file, e, what, allowed) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointFileError(f"{file}: not a readable {what}, truncated or corrupted ({first_line(e)})") from e
