"""Sharing the cores between peftlab processes.

torch sizes its thread pool to every core of the machine, so two runs started
together (a fit beside a test, two sweep cells) each start a full pool: on a
small machine the pools oversubscribe the cores, spin-wait on each other and
each run takes several times as long as alone. Each training process here
announces itself with a file ``<registry>/<pid>`` (``$TMPDIR/peftlab-<uid>/procs``),
counts the live peftlab processes and takes ``max(1, cores // live)`` threads,
where ``cores`` are the cores this process may run on (``os.sched_getaffinity``);
it counts again every few seconds while it trains, so a run that started alone
gives back cores when another starts, and takes them again when it ends.
Entries of processes that died (even by SIGKILL) are removed when counted.

An explicit setting wins: ``PEFTLAB_THREADS=N``, else ``OMP_NUM_THREADS=N``
set by the user. The chosen number also goes to ``OMP_NUM_THREADS`` and
``MKL_NUM_THREADS`` for child processes (data loader workers).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

#: an explicit thread count for every peftlab process (wins over everything else)
THREADS_ENV = "PEFTLAB_THREADS"
#: set next to OMP_NUM_THREADS when peftlab (not the user) chose it, so that children do not take it as explicit
CHOSEN_BY_ENV = "PEFTLAB_THREADS_CHOSEN"
#: how often (seconds) a training process counts the others again
RECOUNT_S = 2.0

_state: dict[str, float | Path | None] = {"entry": None, "last_count": 0.0}


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def registry_dir() -> Path:
    """``$TMPDIR/peftlab-<uid>/procs``: one file per live peftlab training process of this user."""
    uid = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    return Path(tempfile.gettempdir()) / f"peftlab-{uid}" / "procs"


def explicit_threads(env: Mapping[str, str]) -> tuple[int, str] | None:
    """The thread count the user set, and where: ``PEFTLAB_THREADS``, else ``OMP_NUM_THREADS``
    (unless peftlab itself set it for a parent process); ``None`` when neither is set."""
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = env.get(name, "").strip()
        if not value or (name == "OMP_NUM_THREADS" and env.get(CHOSEN_BY_ENV)):
            continue
        try:
            return max(1, int(value)), name
        except ValueError:
            continue  # a malformed value: torch would ignore it too
    return None


def choose_threads(cores: int, live: int, env: Mapping[str, str]) -> tuple[int, str]:
    """The intra-op thread count for one of ``live`` peftlab processes sharing ``cores`` cores, and why."""
    explicit = explicit_threads(env)
    if explicit is not None:
        return explicit[0], f"{explicit[1]}={explicit[0]}"
    live = max(1, live)
    return max(1, cores // live), f"{cores} core(s) shared by {live} peftlab process(es)"


def _process_start(pid: int) -> str:
    """The start time of a process (``/proc/<pid>/stat`` field 22), so that a reused pid is not taken
    for the process that registered; empty where /proc is missing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process with that pid: cannot tell, count it
    return not start or _process_start(pid) in ("", start)


def register(directory: Path | None = None, pid: int | None = None) -> Path:
    """Announce a peftlab process (this one by default); returns its entry."""
    directory = directory or registry_dir()
    pid = os.getpid() if pid is None else pid
    directory.mkdir(parents=True, exist_ok=True)
    entry = directory / str(pid)
    entry.write_text(_process_start(pid))
    return entry


def live_processes(directory: Path | None = None) -> int:
    """How many registered processes are alive; removes the entries of dead ones."""
    directory = directory or registry_dir()
    live = 0
    for entry in directory.glob("*") if directory.is_dir() else []:
        try:
            pid, start = int(entry.name), entry.read_text().strip()
        except (ValueError, OSError):
            continue
        if _alive(pid, start):
            live += 1
        else:
            entry.unlink(missing_ok=True)
    return live


def share_cores(force: bool = False) -> int:
    """Register this process (once; again after a fork), count the live ones and set torch's
    intra-op threads; returns the count. Between calls less than :data:`RECOUNT_S` apart it does
    nothing (``force`` counts anyway)."""
    now = time.monotonic()
    entry = _state["entry"]
    if not force and entry is not None and entry.name == str(os.getpid()) and now - _state["last_count"] < RECOUNT_S:
        return 0
    import torch

    if entry is None or entry.name != str(os.getpid()):  # first call, or a forked child
        _state["entry"] = register()
    _state["last_count"] = now
    threads, _ = choose_threads(available_cores(), live_processes(), os.environ)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if explicit_threads(os.environ) is None:
        os.environ.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), CHOSEN_BY_ENV: "1"})
    return threads


def leave() -> None:
    """Withdraw this process's entry (at the end of a run; a dead process's entry is removed anyway)."""
    entry = _state["entry"]
    if entry is not None and entry.name == str(os.getpid()):
        entry.unlink(missing_ok=True)
        _state["entry"] = None
