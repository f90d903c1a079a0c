"""One durable atomic write for every file peftlab writes (checkpoints, adapters,
run records, sweep tables, predictions).

The new content goes to a temporary file beside the target, is flushed to
disk (fsync), and is renamed over the target (``os.replace``); the directory
is synced too. A crash or a SIGKILL at any point leaves the previous file as
it was. The temporary file's name ends in neither ``.ckpt`` nor
``.safetensors``, so no checkpoint search ever picks it up.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from glob import escape as glob_escape
from pathlib import Path
from typing import Any


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists (another user's), or cannot tell: keep its file
    return True

def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files of ``path`` left by writers that were killed mid-write
    (their process is gone); a live writer's file is kept."""
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        parts = tmp.name[len(path.name) + 2 : -len(".tmp")].split(".")
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) != os.getpid() and not _alive(int(parts[0])):
            try:
                tmp.unlink()
            except OSError:
                pass

def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Write ``path`` atomically: ``write(tmp)`` writes a temporary file beside it,
    which is flushed to disk (fsync) and renamed over ``path`` (``os.replace``);
    the directory is synced too. A failure or a kill at any point leaves the
    previous ``path`` intact (a failure removes the temporary file; one left by
    a killed writer is removed by the next successful write of ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # not ending in .ckpt / .safetensors, so no checkpoint search (ModelCheckpoint's "last") ever picks it up
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        open(tmp, "xb").close()  # created with the usual permissions (mkstemp would make it 0600)
        write(str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    _remove_stale_temporaries(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of a UTF-8 text."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
