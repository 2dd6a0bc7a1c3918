"""Training under attack: two runs into one folder, kills at any moment, hostile configs, damaged run folders."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from care_core._atomic import LOCK_NAME
from test_train_trainer import ENV, cli, cohort, write_config  # noqa: F401 (cohort: a fixture)
from train_cohort import tiny_stage1


def wait_for(cond, child: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not cond() and child.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert cond(), "the child process ended before the condition held"


# ------------------------------------------------------------------------------------------ two runs, one folder
def test_a_second_run_into_a_folder_in_use_fails_with_one_line_and_a_killed_runs_lock_is_taken_over(cohort, tmp_path):
    run = tmp_path / "run"
    first = write_config(tmp_path / "first.json", tiny_stage1(cohort, epochs=200, checkpoint_every=1000))
    second = write_config(tmp_path / "second.json", tiny_stage1(cohort, epochs=1, seed=5))
    child = subprocess.Popen([sys.executable, "-m", "care_core.cli", "pretrain", "--stage", "1", "--config", str(first),
                              "--out", str(run)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (run / "metrics.jsonl").exists(), child)
        res = cli("pretrain", "--stage", "1", "--config", second, "--out", run)
        assert res.returncode == 2
        assert res.stderr.splitlines() == [
            f"care pretrain: error: output folder {run} is in use by another run (process {child.pid} on this machine); "
            "wait for it to end or choose another output folder"]
        assert json.loads((run / "config.json").read_text())["config"]["epochs"] == 200  # the first run's, untouched
        assert (run / LOCK_NAME).read_text().split()[0] == str(child.pid)
    finally:
        child.kill()
        child.wait()
    assert (run / LOCK_NAME).exists()  # a SIGKILL leaves its lock; the process is gone, so the next run takes it over
    res = cli("pretrain", "--stage", "1", "--config", second, "--out", run)
    assert res.returncode == 2 and "already holds a run; pass --resume" in res.stderr
    assert not (run / LOCK_NAME).exists()
