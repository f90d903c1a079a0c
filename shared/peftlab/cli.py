"""The ``peftlab`` command: a thin dispatcher.

    peftlab fit|validate|test|predict ...   the Lightning CLI (peftlab.lightning_cli)
    peftlab sweep --config PAPER.yaml        a paper table (peftlab.sweep)
    peftlab predict-adapters ...             several adapters on one backbone (peftlab.predict_adapters)
    peftlab list [methods|backbones|data]    what can be named in a config (peftlab.catalog)

:func:`main` raises peftlab's errors (for callers and tests); the console
script :func:`console_main` explains them in one paragraph and shows the
traceback only with ``--traceback`` (or ``PEFTLAB_TRACEBACK=1``).
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

COMMANDS = {
    "fit": "train a backbone + PEFT method on a data set (writes a run folder: config, metrics, checkpoints, adapter)",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split (writes test_metrics.json in its run folder)",
    "predict": "write predictions.csv (scores and predicted labels) for a checkpoint",
    "sweep": "run a paper-style table: tasks x methods x seeds, one process per cell (configs/paper/*.yaml)",
    "predict-adapters": "several adapters on one backbone, one predictions CSV each",
    "list": "the registered methods, backbones and data modules, one line each",
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
OVERVIEW = """usage: peftlab COMMAND [options]

Parameter-efficient fine-tuning for proteins, medical imaging and speech, on Lightning.

commands:
{commands}

'peftlab COMMAND --help' shows a command's options. Configs compose left to right, e.g.
  peftlab fit --config configs/protein/backbones/esm2_tiny.yaml --config configs/methods/lora.yaml \\
              --config configs/protein/data/synthetic_motif.yaml --run_dir runs/motif-lora
  peftlab test --config ... --run_dir runs/motif-lora          # the run's selected checkpoint
Errors are one paragraph; add --traceback (or PEFTLAB_TRACEBACK=1) for the full traceback.
"""


def overview() -> str:
    return OVERVIEW.format(commands="\n".join(f"  {name:<17} {text}" for name, text in COMMANDS.items()))


def main(args: list[str] | None = None) -> int | None:
    """Run one ``peftlab`` command; returns its exit status (``None`` = 0) and raises
    peftlab's errors as they are (see :func:`console_main` for the messages)."""
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print(overview())
        return 0
    command = argv[0]
    if command == "sweep":
        from peftlab.sweep import main as sweep_main

        return sweep_main(argv[1:])
    if command == "predict-adapters":
        from peftlab.predict_adapters import main as predict_adapters_main

        return predict_adapters_main(argv[1:])
    if command == "list":
        return list_main(argv[1:])
    if command not in LIGHTNING_COMMANDS and not command.startswith("-"):
        import difflib

        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        from peftlab.errors import ConfigError

        raise ConfigError(f"unknown command {command!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                          + f" (commands: {', '.join(COMMANDS)})")
    argv = with_run_config(argv)
    from peftlab.catalog import check_class_references, import_domains, needs_domain_classes

    if needs_domain_classes(argv):  # short class names, help: the domains' classes must be known
        import_domains()
    check_class_references(argv)
    from peftlab.lightning_cli import build_cli

    try:
        build_cli(argv)
    finally:
        _leave_process_group()
    return None


def with_run_config(argv: list[str]) -> list[str]:
    """A command that names a run (``--run_dir DIR``) and no ``--config`` gets the run's own
    ``DIR/config.yaml`` (what its fit resolved), so ``peftlab test --run_dir DIR`` is enough.
    Other options on the command line still apply over it."""
    if argv[0] not in LIGHTNING_COMMANDS or any(a in ("--config", "-c") or a.startswith("--config=") for a in argv):
        return argv
    run_dir = next((a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
                    for i, a in enumerate(argv) if a == "--run_dir" or a.startswith("--run_dir=")), None)
    if not run_dir:
        return argv
    saved = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(saved):
        from peftlab.errors import RunFolderError

        raise RunFolderError(f"--run_dir {run_dir}: no config.yaml there (a fit with --run_dir {run_dir} writes "
                             f"it); give the configs with --config, or the right run folder")
    print(f"peftlab: using {saved}")
    return [argv[0], "--config", saved, *argv[1:]]


def list_main(argv: list[str]) -> int:
    """``peftlab list [methods|backbones|data ...]``: one line per registered class."""
    from peftlab.catalog import listing

    kinds = argv or ["methods", "backbones", "data"]
    unknown = [k for k in kinds if k not in ("methods", "backbones", "data")]
    if unknown:
        from peftlab.errors import ConfigError

        raise ConfigError(f"peftlab list: unknown kind(s) {unknown}; choose from methods, backbones, data")
    print(listing(kinds), end="")
    return 0


def _leave_process_group() -> None:
    """Close the process group a multi-process run opened (Lightning leaves it open).
    A gloo group still alive when the interpreter exits can abort a process at exit
    ("terminate called without an active exception", seen under torchrun on a busy CPU)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def explain(error: BaseException) -> str:
    """The paragraph the console script prints for an error: what is wrong (the
    message names the file, record or option), and how to see more."""
    from peftlab.errors import PeftlabError

    message = str(error).strip() or type(error).__name__
    if isinstance(error, PeftlabError):
        return f"peftlab: error: {message}\n(--traceback shows where it was raised)"
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return f"peftlab: error: {type(error).__name__}: {message}\n(--traceback shows where it was raised)"
    return (f"peftlab: error: {type(error).__name__}: {message}\n(an unexpected error, perhaps a bug in peftlab "
            f"or a library: run again with --traceback and report the traceback)")


def console_main(argv: list[str] | None = None) -> int:
    """The ``peftlab`` console script: :func:`main`, with errors explained in one
    paragraph on stderr (exit status 1); the traceback with ``--traceback``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--traceback" in argv or os.environ.get("PEFTLAB_TRACEBACK", "") not in ("", "0")
    argv = [a for a in argv if a != "--traceback"]
    try:
        code: Any = main(argv)
    except KeyboardInterrupt:
        print("peftlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output went to a pager or `head` that closed it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as error:  # noqa: BLE001 - the console script's one place for messages
        if show_traceback:
            traceback.print_exc()
        print(explain(error), file=sys.stderr)
        return 1
    return int(code or 0)


def __getattr__(name: str) -> Any:
    """Old import paths: ``peftlab.cli.PeftLabCLI``, ``fit_and_test``, ``recipe_main``."""
    if name in ("PeftLabCLI", "PeftLabArgumentParser"):
        from peftlab import lightning_cli

        return getattr(lightning_cli, name)
    if name in ("fit_and_test", "recipe_main"):
        from peftlab import experiment

        return getattr(experiment, name)
    raise AttributeError(f"module 'peftlab.cli' has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(console_main(sys.argv[1:]))
