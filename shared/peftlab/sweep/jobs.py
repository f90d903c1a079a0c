"""Cells as submitit jobs: ``executor: slurm`` (one SLURM job per cell, or per ``resources.cells_per_job``
cells, submitted as one job array) and ``executor: submitit_local`` (submitit's local executor: the same
machinery on this machine, no cluster needed).

A job runs its cells one after another, each as ``python -m peftlab.sweep --run-cell DIR`` (a crash ends
that cell only; peak memory is the cell's own), and skips a cell that already has its ``result.json``.
On pre-emption or timeout, SLURM signals the job ahead of time and submitit calls
:meth:`CellJob.checkpoint`: the running cell is stopped and the job requeued; the requeued job goes on
with the cells without a result, and a stopped cell resumes from its ``last.ckpt``
(:func:`peftlab.sweep.cell.run_cell`).

The sweep folder is the state: ``jobs.json`` records each cell's job id and arguments, a cell's
``result.json`` says it finished. ``peftlab sweep`` records finished cells, leaves cells whose job is
still queued or running to it, submits the rest (new, failed, changed, or whose job ended without a
result) and, unless ``--no-wait``, waits for them. The parent may exit at any time; running the same
command again collects what finished meanwhile.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from peftlab.persistence.atomic import atomic_write_text
from peftlab.sweep.cell import PARENT_ENV
from peftlab.sweep.config import Cell, Sweep
from peftlab.sweep.results import CELL_LOG, CELL_RESULT, CELL_SPEC, CELLS_DIR

JOBS_FILE = "jobs.json"
SUBMITIT_DIR = "submitit"
#: SLURM states in which a job still has work to do (it runs, waits, or was requeued after a pre-emption)
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
                 "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "PREEMPTED"}
#: the sweep's ``resources`` keys -> submitit's SlurmExecutor parameters (``#SBATCH`` options)
_SBATCH_NAMES = {"gpus": "gpus_per_node", "cpus": "cpus_per_task", "time_min": "time", "partition": "partition",
                 "slurm_additional_parameters": "additional_parameters", "slurm_setup": "setup"}
DEFAULT_TIME_MIN = 24 * 60

class CellJob:
    """What one job runs: its cells in turn, each in its own process; a cell with a result is skipped,
    so a requeued job goes on where it stopped."""

    def __init__(self, cell_dirs: list[str], cwd: str) -> None:
        self.cell_dirs, self.cwd = list(cell_dirs), cwd
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"cell_dirs": self.cell_dirs, "cwd": self.cwd, "_proc": None}

    def __call__(self) -> list[str]:
        statuses = []
        for cell_dir in self.cell_dirs:
            result = Path(cell_dir) / CELL_RESULT
            if not result.is_file():
                env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})
                with open(Path(cell_dir) / CELL_LOG, "ab") as log:
                    self._proc = subprocess.Popen([sys.executable, "-m", "peftlab.sweep", "--run-cell", cell_dir],
                                                  cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL)
                    self._proc.wait()
                self._proc = None
            statuses.append(json.loads(result.read_text())["status"] if result.is_file() else "no result")
        return statuses

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit calls this when SLURM announces a pre-emption or the time limit: stop the running cell
        (its ``last.ckpt`` stays) and requeue this job."""
        import submitit

        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        return submitit.helpers.DelayedSubmission(CellJob(self.cell_dirs, self.cwd))


def sbatch_parameters(sweep: Sweep) -> dict[str, Any]:
    """The sweep's ``resources`` as submitit's SlurmExecutor parameters."""
    params = {_SBATCH_NAMES[k]: v for k, v in sweep.resources.items() if k in _SBATCH_NAMES}
    if sweep.resources.get("mem_gb") is not None:
        params["mem"] = f"{sweep.resources['mem_gb']}GB"
    params.setdefault("time", DEFAULT_TIME_MIN)
    return {"job_name": f"peftlab-{sweep.name}", **params}


def make_executor(sweep: Sweep) -> Any:
    """A submitit executor with the sweep's ``resources``: SLURM's, or submitit's LocalExecutor (which
    takes the time limit and the GPUs, and runs every job at once)."""
    import submitit

    folder = sweep.output / SUBMITIT_DIR / "%j"
    if sweep.executor == "slurm":
        executor = submitit.SlurmExecutor(folder=folder)
        executor.update_parameters(**sbatch_parameters(sweep))
        return executor
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=sweep.resources.get("time_min", DEFAULT_TIME_MIN),
                               gpus_per_node=sweep.resources.get("gpus", 0))
    return executor

class JobBook:
    """``jobs.json``: cell folder name -> ``{"job_id", "args_hash", "submitted"}``."""

    def __init__(self, output: Path, executor: str) -> None:
        self.path, self.executor = output / JOBS_FILE, executor
        self.jobs: dict[str, dict[str, Any]] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.jobs, indent=2, sort_keys=True))

    def job_of(self, cell: Cell) -> dict[str, Any] | None:
        entry = self.jobs.get(cell.dirname)
        return entry if entry is not None and entry.get("args_hash") == cell.args_hash else None

    def state(self, entry: dict[str, Any], output: Path) -> str:
        """The job's state: a SLURM state, or for a local job RUNNING / FINISHED."""
        if self.executor == "slurm":
            import submitit

            return submitit.SlurmJob(folder=output / SUBMITIT_DIR / "%j", job_id=entry["job_id"]).state
        return "RUNNING" if _local_job_alive(int(entry["job_id"])) else "FINISHED"

    def active(self, cell: Cell, output: Path) -> bool:
        entry = self.job_of(cell)
        return entry is not None and self.state(entry, output).split()[0].rstrip("+") in ACTIVE_STATES


def _local_job_alive(pid: int) -> bool:
    """A local job is its controller process: alive unless gone or a zombie (reaped here when ours)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    if state == "Z":
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def cell_result(cell: Cell, output: Path) -> dict[str, Any] | None:
    """The cell's ``result.json`` when it belongs to the cell's current arguments."""
    cell_dir = output / CELLS_DIR / cell.dirname
    try:
        spec = json.loads((cell_dir / CELL_SPEC).read_text())
        result = json.loads((cell_dir / CELL_RESULT).read_text())
    except (OSError, ValueError):
        return None
    return result if spec.get("args_hash") == cell.args_hash else None


def submit(sweep: Sweep, cells: list[Cell], book: JobBook, prepare: Callable[[Cell, Path], None]) -> None:
    """Prepare the cells' folders and submit them, ``cells_per_job`` to a job (one job array)."""
    executor = make_executor(sweep)
    per_job = max(1, int(sweep.resources.get("cells_per_job", 1)))
    chunks = [cells[i:i + per_job] for i in range(0, len(cells), per_job)]
    for cell in cells:
        prepare(cell, sweep.output / CELLS_DIR / cell.dirname)
    jobs = []
    with executor.batch():
        for chunk in chunks:
            dirs = [str(sweep.output / CELLS_DIR / c.dirname) for c in chunk]
            jobs.append(executor.submit(CellJob(dirs, str(sweep.root))))
    now = time.time()
    for chunk, job in zip(chunks, jobs):
        for cell in chunk:
            book.jobs[cell.dirname] = {"job_id": str(job.job_id), "args_hash": cell.args_hash, "submitted": now}
    book.save()


def job_failure(entry: dict[str, Any], state: str, output: Path) -> str:
    """Why a cell has no result although its job ended: the job's state and its log's last line."""
    from submitit.core.utils import JobPaths

    paths = JobPaths(output / SUBMITIT_DIR / "%j", job_id=str(entry["job_id"]))
    last = ""
    for log in (paths.stdout, paths.stderr):
        lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
        last = next((ln.strip() for ln in reversed(lines) if ln.strip()), last)
    return f"job {entry['job_id']} ended ({state}) without a result" + (f"; last log line: {last}" if last else "")
