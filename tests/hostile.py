"""The harness of the hostile-input property tests (tests/*/test_hostile_input.py):
every example either loads (and is checked against what was written) or
raises our DataError naming the file and the record; anything else, or a
hang, fails the test."""

from __future__ import annotations

import os
import re
import signal
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from peftlab.data import DataError

EXAMPLE_SECONDS = 20  # far above any example's run time: only a hang gets here
# Examples per property test = its own count x this scale. The default profile (derandomized) draws
# the same examples on every run; HYPOTHESIS_PROFILE=explore (`make fuzz`) draws fresh ones, 10x as
# many unless PEFTLAB_FUZZ_SCALE says otherwise (`make test` ends with a fresh pass at 1x).
EXPLORING = os.environ.get("HYPOTHESIS_PROFILE") == "explore"
FUZZ_SCALE = float(os.environ.get("PEFTLAB_FUZZ_SCALE", "10" if EXPLORING else "1"))


def examples(n: int) -> int:
    """A property test's ``max_examples``: ``n`` scaled by :data:`FUZZ_SCALE`."""
    return max(1, round(n * FUZZ_SCALE))
SOME = object()  # "any record": the error must name one, whichever


class ExampleHung(BaseException):
    """Raised by :func:`time_limit` (a BaseException, so that no loader's ``except Exception`` eats it)."""


@contextmanager
def time_limit(seconds: float = EXAMPLE_SECONDS) -> Iterator[None]:
    def hung(signum: int, frame: Any) -> None:
        raise ExampleHung(f"the example ran for more than {seconds} s: a loader hangs")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per example (pytest's ``tmp_path`` is one folder for all of a test's examples)."""
    with tempfile.TemporaryDirectory(prefix="hostile-") as folder:
        yield Path(folder)


def attempt(load: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, DataError | None]:
    """``(result, None)`` or ``(None, the DataError)``; any other exception fails the test."""
    with time_limit(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel / pydicom warn about the corrupt headers they are fed
        try:
            return load(*args, **kwargs), None
        except DataError as error:
            return None, error


def assert_names(error: DataError | None, path: Path, record: Any = SOME, problem: str | None = None) -> None:
    """``error`` is a DataError whose message is ``{path}, record {record}: {problem...}``."""
    assert error is not None, f"expected a DataError naming {path}, but the input loaded"
    message = str(error)
    assert error.path == str(path), message
    if record is None:
        assert message.startswith(f"{path}: "), message
    elif record is SOME:
        assert error.record is not None and message.startswith(f"{path}, record {error.record}: "), message
    else:
        assert error.record == record and message.startswith(f"{path}, record {record}: "), message
    if problem is not None:
        assert re.search(problem, error.problem), message


def line_of(data: bytes, offset: int) -> int:
    """1-based line number of byte ``offset``."""
    return data.count(b"\n", 0, offset) + 1
