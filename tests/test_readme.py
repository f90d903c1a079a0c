"""Every command in the README runs here, as written, in README order, so the
README cannot drift from the code.

Each command of a ``bash`` or ``python`` block is one of:

* **run**: executed in a scratch folder (``configs/`` and ``domains/`` linked
  in, ``../shared/data`` read as ``$PEFTLAB_DATA``), with only flags that
  shorten training added (one epoch, a few batches); its outputs are checked
  by the commands after it (a test reads the run a fit wrote, ...);
* **parse**: needs what this machine cannot have (published weights from a
  hub, a data set outside ``../shared/data``, a GPU): run with
  ``--print_config``, which composes every config and resolves every class
  without building the model, so a wrong path, key or class still fails;
* **skip**: not a peftlab command that can start here (the test command
  itself, ``pip install``, SLURM's ``sbatch`` / ``srun``, a two-node
  ``torchrun``, a CUDA-only benchmark); the reason is listed below.

A README command that matches no rule runs, so a new command is tested by default.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHORT = ["--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2",
         "--trainer.limit_predict_batches=2", "--trainer.enable_progress_bar=false"]
# the demo sweep: every cell one epoch of two batches (its 18 cells still run, each in its own process)
DEMO_ARGS = ("--set trainer.max_epochs=1 --set trainer.limit_train_batches=2 --set trainer.limit_val_batches=1 "
             "--set trainer.limit_test_batches=1")

SKIP = {  # a command's start -> why it cannot run here
    "make test": "the command that runs this test",
    "pip install": "installs a package from the internet (deepspeed, bitsandbytes)",
    "sbatch": "submits a SLURM job (no cluster here)",
    "LAUNCHER=torchrun sbatch": "submits a SLURM job (no cluster here)",
    "STRATEGY=fsdp sbatch": "submits a SLURM job (no cluster here)",
    "srun": "a SLURM job step (no cluster here)",
    "torchrun --nnodes 2": "two nodes with four GPUs each (tests/test_scaling.py runs torchrun on one CPU node)",
    "python benchmarks/qlora_memory.py": "needs CUDA and bitsandbytes (tests/test_scaling.py checks its refusal)",
}
PARSE = {  # a text in the command -> what it needs that this machine cannot have
    "$BASE": "the published ESM-2 650M weights (2.6 GB from fair-esm) and, for most lines, GPUs",
    "$FSDP": "the published ESM-2 3B weights and several GPUs (FSDP needs CUDA)",
    "esm2_t12_35M": "the published ESM-2 35M weights (fair-esm downloads them)",
    "--setup sledzieski2024": "the published ESM-2 650M weights",
    "--setup schmirler2024": "the published ESM-2 650M weights",
    "--setup melo": "the published ViT-B/16 weights (timm, from the Hugging Face Hub)",
    "--setup chen2022_hubert_adapters": "the HuBERT base weights (torchaudio) and the Speech Commands download",
    "chen2022_hubert_asr": "the HuBERT base weights (torchaudio) and the LibriSpeech download (60 GB)",
    "samed_synapse": "SAM ViT-B's weights (timm, from the Hugging Face Hub) and Synapse (registration on synapse.org)",
}


@dataclass
class Command:
    kind: str      # bash | python | assign
    text: str      # as in the README (continuations joined, comments removed)
    line: int      # README line


def readme_commands() -> list[Command]:
    """The commands of the README's ``bash`` and ``python`` blocks, in order."""
    text = README.read_text()
    commands: list[Command] = []
    for block in re.finditer(r"```(bash|python)\n(.*?)```", text, re.S):
        first_line = text[: block.start()].count("\n") + 2
        if block.group(1) == "python":
            commands.append(Command("python", block.group(2), first_line))
            continue
        pending, start = "", first_line
        for offset, raw in enumerate(block.group(2).splitlines()):
            line = _strip_comment(raw).rstrip()
            if not pending:
                start = first_line + offset
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            whole = (pending + line).strip()
            pending = ""
            if whole:
                kind = "assign" if re.match(r"^[A-Z_]+=\"", whole) else "bash"
                commands.append(Command(kind, " ".join(whole.split()) if kind == "bash" else whole, start))
    return commands


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a ``#`` inside quotes stays)."""
    quote = None
    for i, ch in enumerate(line):
        if ch in "\"'" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def how(command: Command) -> tuple[str, str]:
    """``(run | parse | skip, reason)``."""
    if command.kind in ("python", "assign"):
        return "run", ""
    for start, reason in SKIP.items():
        if command.text.startswith(start):
            return "skip", reason
    for needle, reason in PARSE.items():
        if needle in command.text:
            return "parse", reason
    return "run", ""


def test_every_readme_command_is_classified_and_most_run():
    commands = readme_commands()
    kinds = [how(c)[0] for c in commands]
    assert len(commands) >= 40
    assert kinds.count("run") >= 15, "most of the README must run as written"
    peftlab_skipped = [c.text for c, k in zip(commands, kinds) if k == "skip" and "peftlab" in c.text
                       and not c.text.startswith(("srun", "torchrun"))]
    assert peftlab_skipped == []  # a peftlab command that cannot run here is at least parsed


@pytest.fixture
def workdir(tmp_path, data_root) -> Path:
    """A scratch folder that looks like the repository to the README's commands."""
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("configs", "domains", "scripts", "benchmarks"):
        (work / name).symlink_to(ROOT / name)
    return work


def _environment(data_root: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1",
            "PEFTLAB_DATA": str(data_root), "DEMO_ARGS": ""}


def _argv(text: str, variables: dict[str, str], data_root: Path) -> list[str]:
    text = text.replace("../shared/data", str(data_root))
    for name, value in variables.items():
        text = text.replace(f"${name}", value)
    return shlex.split(text)


def _shortened(argv: list[str]) -> list[str]:
    trains = argv[:2] == ["peftlab", "fit"] or any(a.endswith("finetune.py") for a in argv)
    evaluates = argv[0] == "peftlab" and argv[1] in ("test", "predict", "validate")
    extra = list(SHORT) if trains or evaluates else []
    if trains and not any(a.startswith("--trainer.max_epochs") for a in argv):
        extra.append("--trainer.max_epochs=1")
    return argv + extra


def _in_process(argv: list[str], cwd: Path) -> tuple[int, str]:
    """``peftlab ...`` (the console script's function) or ``python SCRIPT ...`` (the
    script as ``__main__``) in this process, from ``cwd``: the same entry points as the
    commands, without an interpreter start-up (several seconds) per README line."""
    from peftlab.cli import console_main

    out = io.StringIO()
    previous, saved_argv = os.getcwd(), sys.argv
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                if argv[0] == "peftlab":
                    code = console_main(argv[1:])
                elif argv[0] == "python" and argv[1].endswith(".py"):
                    sys.argv = argv[1:]
                    runpy.run_path(argv[1], run_name="__main__")
                    code = 0
                elif argv[0] == "python":
                    exec(compile(argv[1], "README.md", "exec"), {"__name__": "__main__"})
                    code = 0
                else:
                    raise AssertionError(f"no in-process runner for {argv[0]!r}")
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        os.chdir(previous)
        sys.argv = saved_argv
    return code, out.getvalue()


def test_the_readme_runs_as_written(workdir, data_root, tmp_path):
    env = _environment(data_root)
    variables: dict[str, str] = {}
    ran, parsed, skipped = [], [], []
    for command in readme_commands():
        mode, reason = how(command)
        where = f"README.md line {command.line}: {command.text[:120]}"
        if command.kind == "assign":
            name, _, value = command.text.partition("=")
            variables[name] = " ".join(shlex.split(value)[0].split()) if value else ""
            continue
        if mode == "skip":
            skipped.append((command.text, reason))
            continue
        if command.kind == "python":
            code, output = _in_process(["python", command.text], workdir)
        elif command.text.startswith("make demo"):
            demo = dict(env, DEMO_ARGS=f"--output {tmp_path / 'demo'} {DEMO_ARGS}")
            result = subprocess.run(["make", "-C", str(ROOT), "--no-print-directory", "demo"], env=demo,
                                    capture_output=True, text=True, timeout=900)
            code, output = result.returncode, result.stdout + result.stderr
        elif "&&" in command.text or command.text.startswith(("mkdir", "unzip")):
            result = subprocess.run(["bash", "-c", command.text.replace("../shared/data", str(data_root))],
                                    cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
            code, output = result.returncode, result.stdout + result.stderr
        else:
            argv = _argv(command.text, variables, data_root)
            code, output = _in_process(argv + ["--print_config"] if mode == "parse" else _shortened(argv), workdir)
        assert code == 0, f"{where}\nexit {code}\n{output[-4000:]}"
        (parsed if mode == "parse" else ran).append(command.text)
        _check_outputs(command, output, workdir, tmp_path)
    assert len(ran) >= 15 and len(parsed) >= 10 and len(skipped) <= 10


def _check_outputs(command: Command, output: str, work: Path, tmp_path: Path) -> None:
    """What each README command promises, checked right after it ran."""
    text = command.text
    if text.startswith("make demo"):
        results = (tmp_path / "demo" / "results.csv").read_text().splitlines()
        assert len(results) == 1 + 18 and all(",ok," in row for row in results[1:])
        assert "the test metric is that of the checkpoint selected on validation" in \
            (tmp_path / "demo" / "results.md").read_text()
    elif text.startswith("peftlab fit") and "--run_dir runs/motif-lora" in text and "--ckpt_path last" not in text:
        run = work / "runs" / "motif-lora"
        assert {"config.yaml", "metrics.csv", "checkpoints", "adapter"} <= {p.name for p in run.iterdir()}
    elif text == "peftlab test --run_dir runs/motif-lora":
        assert (work / "runs" / "motif-lora" / "test_metrics.json").is_file()
    elif text == "peftlab predict --run_dir runs/motif-lora":
        header = (work / "runs" / "motif-lora" / "predictions.csv").read_text().splitlines()[0]
        assert header == "id,probability,predicted"
    elif "--ckpt_path last --trainer.max_epochs 4" in text:
        assert "resuming the run in runs/motif-lora from last.ckpt" in output
        assert not (work / "lightning_logs").exists()  # no new run folder anywhere
    elif text.startswith("peftlab predict-adapters"):
        assert sorted(p.name for p in (work / "runs" / "predictions").iterdir()) == ["dora.csv", "lora.csv"]
    elif text == "peftlab predict --run_dir runs/msd-tiny":
        run = work / "runs" / "msd-tiny"
        rows = (run / "predictions.csv").read_text().splitlines()
        assert rows[0].startswith("id,mask,dice/background,dice/Anterior,dice/Posterior,hd95/background")
        assert len(rows) == 1 + 4 and len(list((run / "masks").glob("hippocampus_*.nii.gz"))) == 4  # 2 batches of 2
    elif text.startswith("peftlab test --run_dir runs/gb1-tiny"):
        record = (work / "runs" / "gb1-tiny" / "test_metrics.json").read_text()
        assert '"split_size": 8309' in record and '"examples": 32' in record  # 2 batches of 16 (limit_test_batches)
    elif text == "peftlab test --run_dir runs/chezod-tiny":
        record = (work / "runs" / "chezod-tiny" / "test_metrics.json").read_text()
        assert '"split_size": 117' in record and '"test/spearman"' in record
    elif "recipes/finetune.py" in text and "--print_config" not in text and "--setup" not in text:
        assert "tested          " in output and "<- primary metric" in output
