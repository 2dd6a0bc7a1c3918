"""Training in a child process: events arrive in order, a bad config is reported in one line, cancel and
SIGKILL leave a run that resumes to the end."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from care_core.train.jobs import start_commands, train_command
from train_cohort import TINY_MODEL, write_labelled_cohort

TIMEOUT = 120.0


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two classes x 5 slides (the 5 folds need 5 per class) of small feature grids, a labels table and a config file (json)."""
    root = tmp_path_factory.mktemp("jobs")
    write_labelled_cohort(root, 5)
    cfg = {"labels": str(root / "labels.csv"), "features": str(root / "features"), "model": dict(TINY_MODEL),
           "epochs": 3, "min_epochs": 3, "patience": 3, "lr": 1e-3, "min_lr": 1e-3, "batch_size": 1,
           "log_every": 1, "checkpoint_every": 1}
    (root / "finetune.json").write_text(json.dumps(cfg))
    return root


def start_job(command: str, *, run_dir, config=None, resume=False):
    """``care <command>`` in a child process, as the Train widget starts it."""
    return start_commands([train_command(command, config=config, run_dir=run_dir, resume=resume)], run_dir)


def collect(job, until=None, timeout=TIMEOUT):
    """Poll ``job`` until it exits (or ``until(events)`` holds); all events seen."""
    events, t0 = [], time.monotonic()
    while time.monotonic() - t0 < timeout:
        events += job.poll()
        if until is not None and until(events):
            return events
        if not job.running:
            job.wait()
            return events + job.poll()
        time.sleep(0.05)
    job.cancel()
    raise AssertionError(f"job did not finish in {timeout} s; stderr: {job._stderr[-5:]}")


def has_checkpoint(events):
    return any(e.kind == "checkpoint" for e in events)


def test_finetune_job_runs_to_the_end_with_events_in_order(cohort, tmp_path):
    job = start_job("finetune", config=cohort / "finetune.json", run_dir=tmp_path / "run")
    events = collect(job)
    assert job.returncode == 0 and job.error is None and not job.running, job.error
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert set(kinds) <= {"start", "step", "validate", "checkpoint", "end"}
    steps = [e.step for e in events if e.kind == "step"]
    assert steps == list(range(1, events[0].total_steps + 1))  # every step once, in order
    assert [e.epoch for e in events if e.kind == "validate"] == [0, 1, 2]  # 0-based, one per epoch
    assert events[-1].path == str(tmp_path / "run" / "care.safetensors")
    assert [e.path for e in events if e.kind == "checkpoint" and "head" in e.path] == [str(tmp_path / "run" / "head.safetensors")]
    assert (tmp_path / "run" / "head.json").is_file()


def test_bad_config_gives_one_line_and_starts_nothing(cohort, tmp_path):
    bad = dict(json.loads((cohort / "finetune.json").read_text()), epochs=0)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    job = start_job("finetune", config=tmp_path / "bad.json", run_dir=tmp_path / "run")
    events = collect(job)
    assert events == [] and job.returncode == 2
    assert job.error.startswith("care finetune: error:") and "epochs" in job.error and "\n" not in job.error
    assert not (tmp_path / "run" / "config.json").exists()


def test_cancel_then_resume_reaches_the_end(cohort, tmp_path):
    job = start_job("finetune", config=cohort / "finetune.json", run_dir=tmp_path / "run")
    first = collect(job, until=has_checkpoint)
    assert job.cancel() == 143 and "terminated" in job.error
    assert list((tmp_path / "run" / "checkpoints").glob("step_*.pt"))
    job = start_job("finetune", run_dir=tmp_path / "run", resume=True)
    events = collect(job)
    assert job.returncode == 0, job.error
    assert events[0].kind == "start" and events[0].step >= 1 and events[-1].kind == "end"
    assert events[-1].step == first[0].total_steps


def test_sigkilled_child_is_reported_and_the_run_resumes(cohort, tmp_path):
    job = start_job("finetune", config=cohort / "finetune.json", run_dir=tmp_path / "run")
    collect(job, until=has_checkpoint)
    os.kill(job.proc.pid, signal.SIGKILL)
    job.wait(TIMEOUT)
    assert job.returncode == -9 and "SIGKILL" in job.error and "resume" in job.error
    job = start_job("finetune", run_dir=tmp_path / "run", resume=True)
    events = collect(job)
    assert job.returncode == 0, job.error
    assert events[-1].kind == "end"


def test_child_trains_on_when_its_watcher_goes_away(cohort, tmp_path):
    """napari quits mid-run: the child's stdout / stderr pipes close, and it still finishes the run."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "care_core.cli", "finetune", "--events-json", "--config",
                             str(cohort / "finetune.json"), "--out", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert json.loads(proc.stdout.readline())["kind"] == "start"
    proc.stdout.close()
    proc.stderr.close()
    assert proc.wait(TIMEOUT) == 0
    assert (tmp_path / "run" / "care.safetensors").is_file() and (tmp_path / "run" / "head.json").is_file()
