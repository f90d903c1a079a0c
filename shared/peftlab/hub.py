"""Pretrained weights from hubs, and what to do without a network: one
explanation for every backbone family (fair-esm and torchaudio through
``torch.hub``, timm and transformers through the Hugging Face Hub).

A missing file is a :class:`peftlab.errors.WeightsUnavailableError` that says
what was looked for, why it could not be had, and the option that takes a
local copy instead. The Hugging Face client retries an unreachable host for
about a minute before it gives up; when the host cannot even be looked up or
connected to, :func:`hf_offline_when_unreachable` switches the client to its
offline mode for the call, so that cached files still load and a missing one
fails at once.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

from peftlab.errors import WeightsUnavailableError

HF_ENDPOINT_DEFAULT = "https://huggingface.co"


def weights_unavailable(what: str, cause: BaseException | str, fix: str) -> WeightsUnavailableError:
    """The one message for pretrained weights that are neither here nor downloadable:
    ``<what>: not on this machine and could not be downloaded (<cause>). Offline: <fix>``."""
    reason = cause if isinstance(cause, str) else _reason(cause)
    return WeightsUnavailableError(f"{what}: not on this machine and could not be downloaded ({reason}). "
                                   f"Offline: {fix}")


def _reason(error: BaseException) -> str:
    inner = getattr(error, "reason", None)
    text = str(inner if inner is not None else error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    if not host:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", HF_ENDPOINT_DEFAULT)


@contextlib.contextmanager
def hf_offline_when_unreachable() -> Iterator[bool]:
    """Around a Hugging Face download: when the Hub's host cannot be reached,
    the client runs in offline mode (its cache only) for the duration. Yields
    whether it is offline."""
    import huggingface_hub.constants as constants

    offline = bool(constants.HF_HUB_OFFLINE) or not host_reachable(hf_endpoint())
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline
    try:
        yield offline
    finally:
        constants.HF_HUB_OFFLINE = before


def hf_cache_dir() -> str:
    import huggingface_hub.constants as constants

    return str(constants.HF_HUB_CACHE)


@contextlib.contextmanager
def transformers_download(what: str, name_or_path: str, is_local: bool, fix: str) -> Iterator[None]:
    """Around a transformers ``from_pretrained`` of a hub name: offline (the Hub cannot be reached) it
    reads the Hugging Face cache only, and a missing model is a WeightsUnavailableError whose
    ``Offline:`` part is ``fix``. A local directory is read as it is."""
    if is_local:
        yield
        return
    with hf_offline_when_unreachable() as offline:
        try:
            yield
        except OSError:
            if not offline:
                raise
            raise weights_unavailable(f"{what} {name_or_path!r}", "the Hugging Face Hub cannot be reached, and "
                                      f"the model is not in its cache ({hf_cache_dir()})", fix) from None
