"""The sweep's parent process: runs every cell not yet recorded as ok, each in a subprocess (a crash,
a timeout or a kill ends that cell only), keeps ``results.csv`` current, then writes the tables and plots."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftlab.persistence.atomic import atomic_write_text
from peftlab.sweep.cell import PARENT_ENV, one_line, write_json
from peftlab.sweep.config import Cell, Sweep
from peftlab.sweep.report import make_plots, render_markdown, show_path
from peftlab.sweep.tracking import tracking_spec
from peftlab.sweep.warm import WarmStarter, cold_requested, preload_modules
from peftlab.sweep.results import (CELL_LOG, CELL_RESULT, CELL_SPEC, CELLS_DIR, RESULTS_CSV, RESULTS_MD, read_results,
                                   row_from_result, row_key, write_results)


@dataclass
class SweepReport:
    """What one invocation did: which cells it launched and which it skipped."""
    output: Path
    launched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # cells still in their jobs (``--no-wait``)
    markdown: Path | None = None
    plots: list[Path] = field(default_factory=list)

class _Interrupted(Exception):
    pass

def prepare_cell(cell: Cell, sweep: Sweep, cell_dir: Path) -> None:
    """A clean cell folder (an earlier attempt's is removed) with ``cell.json``: what the cell runs."""
    if cell_dir.exists():
        shutil.rmtree(cell_dir)  # a failed or stale earlier attempt
    cell_dir.mkdir(parents=True)
    write_json(cell_dir / CELL_SPEC, {
        "label": cell.label, "task": cell.task, "backbone": cell.backbone, "method": cell.method,
        "seed": cell.seed, "metric": cell.metric, "args": list(cell.args), "cwd": str(sweep.root),
        "args_hash": cell.args_hash, "tracking": tracking_spec(sweep, cell),
        "equivalent_command": "peftlab fit " + shlex.join([*cell.args, f"--trainer.default_root_dir={cell_dir}"])
                              + "  # then test",
    })


def run_prepared(sweep: Sweep, cell_dir: Path, warm: WarmStarter | None = None) -> dict[str, Any]:
    """Run the cell (or search trial) that ``cell_dir/cell.json`` describes; its result."""
    proc = _start(sweep, cell_dir, warm)
    try:
        if isinstance(proc, subprocess.Popen):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=sweep.cell_timeout_s)
        else:
            proc.join(sweep.cell_timeout_s)
    except BaseException:
        _kill(proc)
        raise
    return _ended(proc, cell_dir, sweep)


def _start(sweep: Sweep, cell_dir: Path, warm: WarmStarter | None) -> subprocess.Popen | Any:
    """The cell's process: forked from the warm worker (in its own session), else a new interpreter
    (``--cold``; its own session too: a Ctrl-C reaches only the sweep, which then stops the cell)."""
    if warm is not None:
        return warm.start(cell_dir, sweep.root, cell_dir / CELL_LOG)
    env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})
    command = [sys.executable, "-m", "peftlab.sweep", "--run-cell", str(cell_dir)]
    with open(cell_dir / CELL_LOG, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, cwd=sweep.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _exit_code(proc: subprocess.Popen | Any) -> int | None:
    """The process's exit status, None while it runs."""
    return proc.poll() if isinstance(proc, subprocess.Popen) else proc.exitcode


def _ended(proc: subprocess.Popen | Any, cell_dir: Path, sweep: Sweep) -> dict[str, Any]:
    """The result of a cell whose wait is over: a process still running has timed out and is killed;
    one that died without writing its result gets an error result."""
    code = _exit_code(proc)
    if code is None:
        _kill(proc)
        return {"status": "failed", "error": f"timed out after {sweep.cell_timeout_s:g} s (cell_timeout_s)"}
    result_path = cell_dir / CELL_RESULT
    if result_path.is_file():
        return json.loads(result_path.read_text())
    why = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
    return {"status": "failed", "error": one_line(f"the cell process {why} without a result; "
                                                  f"last output: {_last_line(cell_dir / CELL_LOG)}")}


def _kill(proc: subprocess.Popen | Any) -> None:
    """SIGKILL a cell (a cold ``Popen`` or a warm ``multiprocessing.Process``) with its process group
    (data loader workers), else the process alone, then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (AttributeError, ProcessLookupError, PermissionError):  # no groups (Windows), not yet its own group, or gone
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    if isinstance(proc, subprocess.Popen):
        proc.wait()
    else:
        proc.join()

def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"

def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"

class _Progress:
    """The sweep's state while it runs: ``results.csv``'s rows, what this invocation did, timing."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep, self.out = sweep, sweep.output
        self.csv_path = self.out / RESULTS_CSV
        self.rows = read_results(self.csv_path)
        self.by_key = {row_key(r): r for r in self.rows}
        self.report = SweepReport(output=self.out)
        self.start, self.durations = time.perf_counter(), []

    def state(self, cell: Cell) -> str:
        row = self.by_key.get(cell.key)
        if row is None:
            return "pending"
        if row.get("status") != "ok":
            return "failed, will retry"
        return "done" if row.get("args_hash") == cell.args_hash else "config changed, will rerun"

    def record(self, cell: Cell, result: dict[str, Any]) -> dict[str, Any]:
        """A finished cell's row goes into ``results.csv`` at once (atomically)."""
        row = row_from_result(cell, result, self.out)
        self.by_key[cell.key] = row
        self.rows = [r for r in self.rows if row_key(r) != cell.key] + [row]
        write_results(self.csv_path, self.rows)
        if row["status"] != "ok":
            self.report.failed.append(cell.dirname)
        return row

    def elapsed(self) -> str:
        return _fmt_seconds(time.perf_counter() - self.start)


def run_sweep(sweep: Sweep, dry_run: bool = False, cold: bool | None = None, wait: bool = True) -> SweepReport:
    """Run (or, with ``dry_run``, list) every cell not yet recorded as ok, then
    write the tables and plots. Cells fork from a warm worker (:mod:`peftlab.sweep.warm`);
    ``cold`` (default: ``PEFTLAB_SWEEP_COLD``) starts each as a new interpreter. With a ``search``
    block, the studies run first (:mod:`peftlab.sweep.search`) and the cells use what they chose.
    With ``executor: slurm`` / ``submitit_local`` the cells are jobs (:mod:`peftlab.sweep.jobs`);
    ``wait=False`` submits them and returns (a later call collects them)."""
    cold = cold_requested() if cold is None else cold
    if sweep.search is not None:
        from peftlab.sweep.search import run_search

        run_search(sweep, dry_run=dry_run, cold=cold)
    cells = sweep.cells()
    progress = _Progress(sweep)
    n_axes = " x ".join([f"{len(sweep.tasks)} task(s)"]
                        + ([f"{len(sweep.backbones)} backbone(s)"] if sweep.backbones else [])
                        + [f"{len(sweep.methods)} method(s)", f"{len(sweep.seeds)} seed(s)"])
    n_excluded = len(sweep.tasks) * max(1, len(sweep.backbones)) * len(sweep.methods) * len(sweep.seeds) - len(cells)
    print(f"peftlab sweep {sweep.name}: {len(cells)} cells ({n_axes}"
          f"{f', {n_excluded} excluded' if n_excluded else ''}) -> {sweep.output}"
          + (f", executor {sweep.executor}" if sweep.executor != "local" else ""), flush=True)
    if dry_run:
        _list_cells(sweep, cells, progress)
        return progress.report
    sweep.output.mkdir(parents=True, exist_ok=True)
    if sweep.executor != "local":
        with _sigterm_interrupts():
            _run_jobs(sweep, cells, progress, wait)
        _write_report(sweep, cells, progress)
        return progress.report
    todo = [c for c in cells if progress.state(c) != "done"]
    warm = None if cold or not todo else WarmStarter(preload_modules([c.args for c in todo], sweep.root))
    try:
        with _sigterm_interrupts():
            _run_cells(sweep, cells, progress, warm)
    finally:
        if warm is not None:
            warm.close()
    _write_report(sweep, cells, progress)
    return progress.report


def _list_cells(sweep: Sweep, cells: list[Cell], progress: _Progress) -> None:
    for k, cell in enumerate(cells, 1):
        print(f"[{k}/{len(cells)}] {cell.label}  ({progress.state(cell)})  -> {CELLS_DIR}/{cell.dirname}")
        print("    peftlab fit " + shlex.join(show_path(Path(a), sweep.root) if os.path.isabs(a) else a
                                              for a in cell.args))
    for task, backbone, method, reason in sweep.excluded_cells():
        print(f"excluded: {' / '.join(p for p in (task, backbone, method) if p)}  ({reason})")


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (and Ctrl-C) stop the sweep between writes: results.csv keeps every finished cell."""
    interrupted = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:  # signal handlers can only be set there
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    except (KeyboardInterrupt, _Interrupted) as exc:
        print(f"\nsweep interrupted ({exc or 'Ctrl-C'}); {RESULTS_CSV} holds every finished cell, "
              "run the same command again to resume", flush=True)
        raise SystemExit(130) from None
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, interrupted)


def _run_cells(sweep: Sweep, cells: list[Cell], progress: _Progress, warm: WarmStarter | None) -> None:
    """Every cell not yet done, ``parallel_cells`` at a time (one after another by default), each its own
    process (a crash, a timeout or a kill ends that cell only); each records its row as it ends. Cells
    running together count each other through :mod:`peftlab.threads` and split the cores between them."""
    todo = [c for c in cells if progress.state(c) != "done"]
    queue = list(enumerate(cells, 1))
    running: list[tuple[int, Cell, Any, float]] = []  # (position, cell, process, start)
    at_once = sweep.parallel_cells
    try:
        while queue or running:
            while queue and len(running) < at_once:
                k, cell = queue.pop(0)
                if cell not in todo:
                    progress.report.skipped.append(cell.dirname)
                    print(f"[{k}/{len(cells)}] {cell.label}: ok in {RESULTS_CSV}, skipped", flush=True)
                    continue
                together = f", {len(running) + 1} of {at_once} at once" if at_once > 1 else ""
                print(f"[{k}/{len(cells)}] {cell.label}: running ({progress.state(cell)}{together}) ...", flush=True)
                t0 = time.perf_counter()
                cell_dir = sweep.output / CELLS_DIR / cell.dirname
                prepare_cell(cell, sweep, cell_dir)
                progress.report.launched.append(cell.dirname)
                running.append((k, cell, _start(sweep, cell_dir, warm), t0))
            time.sleep(0.1)
            for item in list(running):
                k, cell, proc, t0 = item
                late = sweep.cell_timeout_s is not None and time.perf_counter() - t0 > sweep.cell_timeout_s
                if _exit_code(proc) is None and not late:
                    continue
                running.remove(item)
                result = _ended(proc, sweep.output / CELLS_DIR / cell.dirname, sweep)
                progress.durations.append(time.perf_counter() - t0)
                result["cell_seconds"] = progress.durations[-1]  # wall time, process start (or fork) included
                left = len(todo) - len(progress.durations)
                _finished(progress, cell, result, f"[{k}/{len(cells)}]", left, parallel=at_once)
    except BaseException:
        for _, _, proc, _ in running:
            _kill(proc)
        raise


def _finished(progress: _Progress, cell: Cell, result: dict[str, Any], position: str, left: int,
              eta: bool = True, parallel: int = 1) -> None:
    """Record a finished cell and print its line: the metric or the error, elapsed time and (one cell
    after another) the ETA."""
    row = progress.record(cell, result)
    what = (f"ok, {row['primary_metric']} = {row['primary_value']:.4f}" if row["status"] == "ok"
            else f"FAILED: {row['error']}")
    took = f" ({progress.durations[-1]:.1f} s)" if progress.durations else ""
    estimate = left * sum(progress.durations) / max(1, len(progress.durations)) / parallel
    print(f"{position} {cell.label}: {what}{took} | elapsed {progress.elapsed()}"
          + (f", ETA {_fmt_seconds(estimate)}" if eta else "") + f" ({left} cell(s) left)", flush=True)


def _run_jobs(sweep: Sweep, cells: list[Cell], progress: _Progress, wait: bool) -> None:
    """The cells as submitit jobs (:mod:`peftlab.sweep.jobs`): record the finished ones, submit those
    neither finished nor in a live job, then (``wait``) record each as its result appears."""
    from peftlab.sweep import jobs

    book = jobs.JobBook(sweep.output, sweep.executor)
    waiting, submit = [], []
    for cell in cells:
        if progress.state(cell) == "done":
            progress.report.skipped.append(cell.dirname)
        elif ((result := jobs.cell_result(cell, sweep.output)) is not None and result.get("status") == "ok"
              and book.job_of(cell) is not None):  # finished in its job since the last call
            _finished(progress, cell, result, "[collected]", 0, eta=False)
        elif book.active(cell, sweep.output):
            waiting.append(cell)
        else:
            submit.append(cell)
    if submit:
        jobs.submit(sweep, submit, book, lambda cell, cell_dir: prepare_cell(cell, sweep, cell_dir))
        print(f"submitted {len(submit)} cell(s) ({sweep.executor}); job ids in {sweep.output / jobs.JOBS_FILE}",
              flush=True)
    progress.report.launched += [c.dirname for c in submit]
    pending = waiting + submit
    if not wait:
        progress.report.pending = [c.dirname for c in pending]
        print(f"{len(pending)} cell(s) in jobs; run the same command again to collect them", flush=True)
        return
    _collect(sweep, pending, progress, book)


def _collect(sweep: Sweep, pending: list[Cell], progress: _Progress, book: Any) -> None:
    """Wait for the jobs: record each cell as its result appears, or as failed when its job ended without one."""
    from peftlab.sweep import jobs

    poll_s = float(sweep.resources.get("poll_s", 2.0 if sweep.executor == "submitit_local" else 30.0))
    states: dict[str, str] = {}
    shown = ""
    while pending:
        for cell in list(pending):
            result = jobs.cell_result(cell, sweep.output)
            entry = book.job_of(cell)
            if result is None and entry is not None:
                state = book.state(entry, sweep.output)
                if state.split()[0].rstrip("+") in jobs.ACTIVE_STATES:
                    states[cell.dirname] = state
                    continue
                result = jobs.cell_result(cell, sweep.output) or {
                    "status": "failed", "error": jobs.job_failure(entry, state, sweep.output)}
            if result is None:
                continue
            pending.remove(cell)
            states.pop(cell.dirname, None)
            progress.durations.append(float(result.get("cell_seconds") or 0.0))
            _finished(progress, cell, result, f"[job {entry['job_id'] if entry else '?'}]", len(pending), eta=False)
        summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(Counter(states.values()).items()))
        if pending and summary != shown:  # one line when the jobs' states change, not one per poll
            print(f"jobs of the {len(pending)} cell(s) left: {summary}", flush=True)
            shown = summary
        if pending:
            time.sleep(poll_s)


def _write_report(sweep: Sweep, cells: list[Cell], progress: _Progress) -> None:
    report, by_key = progress.report, progress.by_key
    planned = [by_key[c.key] for c in cells if c.key in by_key]
    others = set(by_key) - {c.key for c in cells}
    if others:
        print(f"note: {RESULTS_CSV} also keeps {len(others)} row(s) of cells that are no longer in the sweep; "
              "the tables leave them out")
    report.markdown = sweep.output / RESULTS_MD
    markdown = render_markdown(sweep, planned)
    atomic_write_text(report.markdown, markdown)
    report.plots = make_plots(sweep, planned, sweep.output)
    print("\n" + markdown)
    print(f"results:  {progress.csv_path}\ntables:   {report.markdown}")
    for p in report.plots:
        print(f"plot:     {p}")
    print(f"{len(report.launched)} cell(s) run, {len(report.skipped)} skipped (done), "
          f"{sum(r.get('status') != 'ok' for r in planned)} failed; total {progress.elapsed()}")
