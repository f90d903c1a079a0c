"""One cell, in its own process (``python -m peftlab.sweep --run-cell DIR``): fit, then test the
selected checkpoint, with the arguments in ``DIR/cell.json``; the result goes to ``DIR/result.json``."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from peftlab.persistence.atomic import atomic_write_text
from peftlab.sweep.results import CELL_RESULT, CELL_SPEC


PARENT_ENV = "PEFTLAB_SWEEP_PARENT"

def _die_with_parent() -> None:
    """Linux: have the kernel kill this cell when the sweep process dies (even by
    SIGKILL), so a killed sweep leaves no orphan training behind."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os._exit(1)

def one_line(text: str, limit: int = 400) -> str:
    """Collapse an error message to one line for the CSV and the table."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

class _StderrTail:
    """Passes stderr through and keeps its last lines (argparse-style errors end
    in a ``SystemExit`` whose message only went to stderr)."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.text = stream, ""

    def write(self, s: str) -> int:
        self.text = (self.text + s)[-20000:]
        return self.stream.write(s)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def error_line(self) -> str | None:
        """The last ``error: ...`` message and what follows it, else the last line."""
        lines = [ln.strip() for ln in self.text.splitlines() if ln.strip()]
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].lower().startswith("error:") or ": error:" in lines[i].lower():
                return " ".join(lines[i:])
        return lines[-1] if lines else None

def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def resume_args(cell_dir: Path) -> list[str]:
    """``--ckpt_path=last`` when an earlier attempt of this cell left a ``last.ckpt`` (a job stopped by a
    pre-emption or its time limit, then requeued): the fit resumes from it instead of starting over."""
    return ["--ckpt_path=last"] if any(cell_dir.glob("lightning_logs/version_*/checkpoints/last.ckpt")) else []


def _fit_and_test(spec: dict[str, Any], cell_dir: Path) -> dict[str, Any]:
    """A cell: fit and test (:func:`peftlab.experiment.fit_and_test`); its result."""
    from peftlab.callbacks import proc_status_mb
    from peftlab.experiment import fit_and_test

    baseline_mb = proc_status_mb("VmRSS")  # torch + Lightning imported, nothing built yet
    tracking = spec.get("tracking")
    loggers = []
    if tracking:
        from peftlab.sweep.tracking import tracking_logger

        loggers.append(tracking_logger(tracking))
    summary = fit_and_test(list(spec["args"]) + [f"--trainer.default_root_dir={cell_dir}", *resume_args(cell_dir)],
                           title=f"sweep cell {spec['label']}", loggers=loggers,
                           params=tracking["params"] if tracking else None)
    metric = spec.get("metric") or summary["primary_metric"].split("/", 1)[1]
    run_dir = Path(summary["log_dir"] or cell_dir)
    adapter = run_dir / "adapter" / "adapter.safetensors"
    # StepTimer reports VmHWM on the CPU: this process image's own peak (not the forking sweep's)
    if summary["peak_memory_kind"] == "cpu_peak_rss" and baseline_mb is not None:
        summary["peak_memory_growth_mb"] = summary["peak_memory_mb"] - baseline_mb
    result = {
        "status": "ok", "error": "", "primary_metric": f"test/{metric}",
        "primary_value": summary["test"].get(f"test/{metric}"),
        "adapter_bytes": adapter.stat().st_size if adapter.is_file() else None,
        "run_dir": str(run_dir), "summary": summary,
    }
    if result["primary_value"] is None:
        result.update(status="failed", error=f"the test metrics have no test/{metric} "
                                             f"(logged: {', '.join(sorted(summary['test']))})")
    return result


def _run_trial(spec: dict[str, Any], cell_dir: Path) -> dict[str, Any]:
    from peftlab.sweep.search import run_trial

    return run_trial(spec, cell_dir)


def run_cell(cell_dir: str | os.PathLike[str]) -> int:
    """Run one cell (``python -m peftlab.sweep --run-cell DIR``): fit and test
    with the arguments in ``DIR/cell.json``; write ``DIR/result.json``."""
    _die_with_parent()
    cell_dir = Path(cell_dir)
    spec = json.loads((cell_dir / CELL_SPEC).read_text())
    tail = _StderrTail(sys.stderr)
    sys.stderr = tail
    # forked from the warm worker (peftlab.sweep.warm): the fit-and-test path is imported already
    preloaded = "peftlab.experiment" in sys.modules
    result: dict[str, Any] = {"status": "failed"}
    start = time.perf_counter()
    try:
        result = (_run_trial(spec, cell_dir) if spec.get("trial") else _fit_and_test(spec, cell_dir))
    except SystemExit as exc:  # the CLI's argument errors
        result["error"] = (one_line(tail.error_line() or f"exited with status {exc.code}")
                           if exc.code not in (0, None) else "the CLI exited before training (status 0)")
    except BaseException as exc:  # noqa: BLE001 - a cell's failure is data, not a crash
        import traceback
        traceback.print_exc()
        result["error"] = one_line(f"{type(exc).__name__}: {exc}")
    finally:
        sys.stderr = tail.stream
    result["cell_seconds"] = time.perf_counter() - start
    result["preloaded"] = preloaded
    write_json(cell_dir / CELL_RESULT, result)
    return 0 if result["status"] == "ok" else 1
