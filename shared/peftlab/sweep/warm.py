"""Warm cells: every cell forks from one process that has already imported peftlab, Lightning and
the domains the sweep names (a ``multiprocessing`` fork server), instead of starting a new
interpreter that imports them again (seconds per cell on a small machine).

Each cell is still its own process, in its own session: a crash, a timeout (the sweep kills its
process group) or an out-of-memory kill ends that cell only, and a cell dies with the fork server,
which dies with the sweep. A cell's memory is measured against the worker it forked from (its peak
resident set is reset at the fork, ``/proc/self/clear_refs``), so the table shows what the cell
added on top of the imports. CUDA is never initialised in the fork server (importing torch does not
do it), and each cell chooses its torch threads after the fork (``peftlab.threads``).

``peftlab sweep --cold`` (or ``PEFTLAB_SWEEP_COLD=1``) runs every cell as a new interpreter instead.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

COLD_ENV = "PEFTLAB_SWEEP_COLD"
#: what every cell imports, whatever its field (the fit-and-test path, every method family)
CORE_PRELOAD = ("peftlab.sweep.cell", "peftlab.experiment", "peftlab.callbacks", "peftlab.model.metrics",
                "peftlab.methods.lora", "peftlab.methods.reparameterisation", "peftlab.methods.scaling",
                "peftlab.methods.selective", "peftlab.methods.adapters", "peftlab.methods.prompts",
                "peftlab.methods.reft", "peftlab.methods.combined")
DOMAIN_MODULES = ("backbones", "data", "synthetic", "metrics")


def cold_requested(env: dict[str, str] | None = None) -> bool:
    return (os.environ if env is None else env).get(COLD_ENV, "") not in ("", "0")


def preload_modules(cell_args: Iterable[Sequence[str]], cwd: Path) -> list[str]:
    """The modules the fork server imports: the core's, and those of the domains the cells name
    (every installed domain when a cell names a class by its short name)."""
    from peftlab.catalog import class_references, domain_packages

    packages: set[str] = set()
    here = Path.cwd()
    try:
        os.chdir(cwd)  # the cells' config paths are relative to the sweep's root
        for args in cell_args:
            for _, _, name in class_references(list(args)):
                top = name.split(".")[0]
                if "." not in name:
                    packages.update(domain_packages())
                elif top.startswith("peftlab_"):
                    packages.add(top)
    finally:
        os.chdir(here)
    return [*CORE_PRELOAD, *(f"{p}.{m}" for p in sorted(packages) for m in DOMAIN_MODULES)]


class WarmStarter:
    """Starts cells as forks of one warm worker; :meth:`close` stops the worker."""

    def __init__(self, preload: Sequence[str]) -> None:
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(list(preload))

    def start(self, cell_dir: Path, cwd: Path, log: Path) -> Any:
        proc = self.context.Process(target=warm_cell, args=(str(cell_dir), str(cwd), str(log), os.getpid()),
                                    name=f"peftlab-cell-{cell_dir.name}", daemon=False)
        proc.start()
        return proc

    def close(self) -> None:
        from multiprocessing import forkserver

        stop = getattr(forkserver._forkserver, "_stop", None)  # private; a new sweep gets its own preload
        if stop is not None:
            stop()


def _die_with_fork_server(sweep_pid: int) -> None:
    """First thing in a forked cell (Linux): the kernel kills it when its parent, the fork server,
    dies, which the fork server does when the sweep dies. A sweep killed while the fork was under
    way may already be gone (and the fork server with it, so that the parent this cell would read
    later is the reaper): then the cell ends here instead of training as an orphan."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    try:
        os.kill(sweep_pid, 0)
    except ProcessLookupError:
        os._exit(1)


def warm_cell(cell_dir: str, cwd: str, log: str, sweep_pid: int) -> None:
    """The body of a forked cell: bound to the fork server's life, its own session, output to the
    cell's log, the sweep's root as working directory, its peak memory counted from here; then
    :func:`peftlab.sweep.cell.run_cell`."""
    _die_with_fork_server(sweep_pid)
    os.setsid()  # the sweep kills the cell's process group (data loader workers included)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.chdir(cwd)
    from peftlab.sweep.cell import PARENT_ENV, run_cell

    os.environ[PARENT_ENV] = str(os.getppid())  # the fork server, which dies with the sweep
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # peak RSS := current RSS: the cell's peak then starts at the worker's size
    except OSError:
        pass
    code = 1
    try:
        code = run_cell(cell_dir)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
