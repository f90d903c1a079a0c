"""Every error type peftlab raises on purpose, in one place at the bottom of the core.

Each is a :class:`PeftlabError` (so the ``peftlab`` command can tell a problem
with the user's input, files or machine, which it explains in one paragraph,
from a bug, whose traceback matters) and also a subclass of the built-in type
a caller would expect (``ValueError``, ``OSError``...), so ``except ValueError``
keeps working. This module imports nothing heavy: backbones, data and
persistence can raise these without importing Lightning.
"""

from __future__ import annotations

from typing import Any


class PeftlabError(Exception):
    """Base of the errors peftlab raises about input, files, configs or the machine."""


class ConfigError(PeftlabError, ValueError):
    """A config or command line names something that does not exist or does not fit
    (an unknown class, a backbone that cannot read the data's batches, ...)."""


class DataError(PeftlabError, ValueError):
    """Bad input data: the message names the file, the record and what is wrong."""

    def __init__(self, path: Any, record: Any, problem: str):
        self.path, self.record, self.problem = str(path), record, problem
        where = f"{path}" if record is None else f"{path}, record {record}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # so the error survives DataLoader workers (they pickle exceptions)
        return type(self), (self.path, self.record, self.problem)


class BackboneMismatchError(PeftlabError, ValueError):
    """An adapter or checkpoint was trained on another backbone than the one given."""


class CheckpointFileError(PeftlabError, ValueError):
    """A checkpoint file is missing, truncated, altered, unsafe or not peftlab's."""


class UnsafeWeightsError(CheckpointFileError):
    """A weights file holds pickled objects that weights-only loading refuses (they could run code)."""


class AdapterFileError(PeftlabError, ValueError):
    """An adapter file is missing, truncated or not what it claims to be."""


class NonFiniteLossError(PeftlabError, FloatingPointError):
    """Training produced a NaN or infinite loss (or non-finite trained weights)."""


class WeightsUnavailableError(PeftlabError, OSError):
    """Pretrained weights are neither on this machine nor downloadable (offline); the
    message says where to put the file or which option names a local copy."""


class QuantizationUnavailableError(PeftlabError, RuntimeError):
    """4-bit quantisation (QLoRA) was asked for where it cannot run (no CUDA, no bitsandbytes)."""


class SweepConfigError(PeftlabError, ValueError):
    """The sweep YAML is malformed (names the file and the key)."""


class RunFolderError(PeftlabError, FileNotFoundError):
    """A run folder or the checkpoint a command asks for in it does not exist (or a new
    fit would overwrite a finished run)."""


__all__ = ["AdapterFileError", "BackboneMismatchError", "CheckpointFileError", "ConfigError", "DataError",
           "NonFiniteLossError", "PeftlabError", "QuantizationUnavailableError", "RunFolderError",
           "SweepConfigError", "UnsafeWeightsError", "WeightsUnavailableError"]
