"""Two peftlab runs sharing the cores (issue 16): one tiny protein fit alone, then two started
together, each as its own process, with torch's default threads (every process takes every core:
``PEFTLAB_THREADS`` set to the core count) and with peftlab's policy (``peftlab.threads``: the cores
divided among the live peftlab processes). Prints wall times and the ratio of two together to two
run in turn (1.0: sharing costs nothing; above 1: the pools fight over the cores).

    python benchmarks/shared_cores.py [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["configs/protein/backbones/esm2_tiny.yaml", "configs/methods/lora.yaml",
           "configs/protein/data/synthetic_motif.yaml"]


def fit_command(epochs: int, root: str) -> list[str]:
    args = [a for c in CONFIGS for a in ("--config", str(ROOT / c))]
    return [sys.executable, "-m", "peftlab.cli", "fit", *args, f"--trainer.max_epochs={epochs}",
            "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={root}"]


def run_together(count: int, epochs: int, env: dict[str, str]) -> list[float]:
    """Start ``count`` fits at once; the wall time of each."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        procs = [subprocess.Popen(fit_command(epochs, f"{tmp}/{i}"), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for i in range(count)]
        walls = []
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode:
                raise SystemExit(f"a fit failed:\n{err[-2000:]}")
            walls.append(time.perf_counter() - start)
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    opts = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PEFTLAB_THREADS",
                                                            "PEFTLAB_THREADS_CHOSEN")}
    variants = {"torch default (every process takes every core)": {**base, "PEFTLAB_THREADS": str(cores)},
                "peftlab.threads (cores / live peftlab processes)": base}
    print(f"tiny protein LoRA fit, {opts.epochs} epochs, {cores} core(s) available; wall seconds per process")
    print(f"{'threads':<50} {'alone':>7} {'two together':>14} {'two in turn':>12} {'together / in turn':>19}")
    for name, env in variants.items():
        alone = run_together(1, opts.epochs, env)[0]
        both = run_together(2, opts.epochs, env)
        print(f"{name:<50} {alone:>7.1f} {max(both):>8.1f} each {2 * alone:>12.1f} {max(both) / (2 * alone):>19.2f}",
              flush=True)


if __name__ == "__main__":
    main()
