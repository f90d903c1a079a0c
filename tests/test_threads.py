"""Sharing the cores (peftlab.threads): the thread count chosen for given cores, live peftlab
processes and environment, and the registry of live processes (entries of dead ones go)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from peftlab import threads


@pytest.mark.parametrize("cores, live, env, expected", [
    (2, 1, {}, 2), (2, 2, {}, 1), (2, 3, {}, 1), (16, 3, {}, 5), (8, 0, {}, 8),
    (2, 2, {"PEFTLAB_THREADS": "3"}, 3),
    (16, 1, {"OMP_NUM_THREADS": "4"}, 4),
    (16, 1, {"OMP_NUM_THREADS": "4", "PEFTLAB_THREADS": "2"}, 2),
    (16, 4, {"OMP_NUM_THREADS": "16", threads.CHOSEN_BY_ENV: "1"}, 4),  # set by a peftlab parent, not the user
    (16, 2, {"OMP_NUM_THREADS": "many"}, 8),
])
def test_the_thread_count_for_cores_live_processes_and_environment(cores, live, env, expected):
    assert threads.choose_threads(cores, live, env)[0] == expected


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_entries_of_dead_processes_are_removed_when_counted(tmp_path):
    mine = threads.register(tmp_path)
    dead = threads.register(tmp_path, pid=_dead_pid())
    reused = tmp_path / str(os.getppid())  # a live pid whose start time is not the registered one
    reused.write_text("1")
    (tmp_path / "not-a-pid").write_text("")
    assert threads.live_processes(tmp_path) == 1
    assert mine.exists() and not dead.exists() and not reused.exists()
    assert threads.live_processes(tmp_path / "missing") == 0


def test_share_cores_sets_torchs_threads_and_the_environment_of_children(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "registry_dir", lambda: tmp_path)
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PEFTLAB_THREADS", threads.CHOSEN_BY_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(threads._state, "entry", None)
    before = torch.get_num_threads()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert threads.share_cores(force=True) == 4 and torch.get_num_threads() == 4
        threads.register(tmp_path, pid=other.pid)
        assert threads.share_cores(force=True) == 2 and torch.get_num_threads() == 2
        assert os.environ["OMP_NUM_THREADS"] == "2" and os.environ[threads.CHOSEN_BY_ENV] == "1"
        other.kill()
        other.wait()
        assert threads.share_cores(force=True) == 4  # the other one's entry is gone with it
        threads.leave()
        assert list(tmp_path.iterdir()) == []
    finally:
        other.kill()
        torch.set_num_threads(before)
