"""A training job in a child process, watched without blocking: what the napari Train widget drives.

A job is one or more ``care`` commands run one after the other (e.g. ``care extract`` for the slides that have
no features yet, then ``care finetune``), each ``python -m care_core.cli <command> ... --events-json`` in its
own process, not a thread, because (1) the same commands can be launched under ``torchrun`` or continued on a
cluster from the same run folder, and (2) a crash, an out-of-memory kill or a hung CUDA call in the child
cannot take the viewer (the parent) down with it. Each child prints one ``TrainEvent`` per JSON line on
stdout; a driver thread runs the commands and puts the events on a queue that ``TrainingJob.poll`` drains
without waiting. The commands are written to ``<run>/job.json`` so the run folder says how it was made.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

from care_core._atomic import atomic_path
from care_core.train.trainer import TrainEvent

__all__ = ["TrainingJob", "read_job", "start_commands", "train_command"]

JOB_FILE = "job.json"


class TrainingJob:
    """Running (or finished) ``care`` commands, one child process at a time. ``poll()`` returns the events that
    arrived since the last call; ``running``, ``returncode`` and ``error`` (the failing child's one-line message)
    say how it stands; ``proc`` is the child running now; ``cancel()`` stops it and starts no further command,
    keeping the run folder's last checkpoint for a resume."""

    def __init__(self, commands: list[list[str]], run_dir: Path):
        self.commands = [list(c) for c in commands]
        self.run_dir = Path(run_dir)
        self.command_index = 0  # which command runs (or ran last)
        self.proc: subprocess.Popen | None = None
        self._events: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        self._rc: int | None = None
        self._cancel = threading.Event()
        self._started = threading.Event()
        self._driver = threading.Thread(target=self._drive, name="care-job", daemon=True)
        self._driver.start()
        self._started.wait()  # `proc` exists once the constructor returns

    def _drive(self) -> None:
        rc = 0
        try:
            for i, command in enumerate(self.commands):
                if self._cancel.is_set():
                    rc = -signal.SIGTERM
                    break
                self.command_index, self._stderr = i, []
                # its own session: a Ctrl-C or hang-up of the terminal napari runs in does not stop the training
                self.proc = subprocess.Popen([sys.executable, "-m", "care_core.cli", *command], stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True, bufsize=1, start_new_session=True,
                                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
                self._started.set()
                err = threading.Thread(target=self._read_stderr, args=(self.proc,), daemon=True)
                err.start()
                self._read_stdout(self.proc)
                rc = self.proc.wait()
                err.join()
                if rc != 0:
                    break
        finally:
            self._rc = rc  # set last: every event of the last child is on the queue before `running` turns False
            self._started.set()

    def _read_stdout(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue  # not an event (a stray print of a library)
            try:
                self._events.put(TrainEvent(**json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                continue

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self._stderr.append(line.rstrip("\n"))

    def poll(self) -> list[TrainEvent]:
        """The events received since the last call (never blocks)."""
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    @property
    def running(self) -> bool:
        return self._rc is None

    @property
    def returncode(self) -> int | None:
        """The exit status of the job (None while it runs): 0, or the failing child's (negative: killed by that
        signal, e.g. -9)."""
        return self._rc

    @property
    def error(self) -> str | None:
        """One line saying why the job failed (None while it runs or when it ended well)."""
        rc = self._rc
        if rc is None or rc == 0:
            return None
        lines = [ln.strip() for ln in self._stderr if ln.strip()]
        mine = [ln for ln in lines if ln.startswith("care ")]
        if mine:
            return mine[-1]
        if rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            return f"the training process was killed ({name}); resume {self.run_dir} to continue from its last checkpoint"
        return lines[-1] if lines else f"the training process exited with status {rc}"

    def cancel(self, timeout: float = 10.0, *, wait: bool = True) -> int | None:
        """Stop the job: no further command starts; the running child gets SIGTERM (a training run stops before its
        next step, keeping its checkpoints; about 1 s), then SIGKILL after ``timeout`` s. Returns the exit status; with
        ``wait=False`` returns None at once (a GUI thread must not wait) and a helper thread escalates."""
        self._cancel.set()
        proc = self.proc

        def stop() -> None:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()

        if not wait:
            threading.Thread(target=stop, name="care-job-cancel", daemon=True).start()
            return None
        stop()
        return self.wait()

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the job ends (for scripts and tests; the widget polls instead); None on timeout."""
        self._driver.join(timeout)
        return self._rc


def start_commands(commands: list[list[str]], run_dir: str | Path, *, job: str = "", record: dict | None = None) -> TrainingJob:
    """Run ``care <command...>`` for each of ``commands`` in turn in child processes; the first failure ends the
    job. ``job`` (its name in the window) and ``record`` (the inputs behind it) go to ``<run_dir>/job.json``
    with the commands, so that the run folder can be read back (``read_job``) or its commands rerun by hand."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / JOB_FILE) as tmp:
        tmp.write_text(json.dumps({"job": job, "commands": commands, **(record or {})}, indent=2))
    return TrainingJob(commands, run_dir)


def read_job(run_dir: str | Path) -> dict | None:
    """``<run_dir>/job.json`` as written by ``start_commands`` (None when the run was started otherwise)."""
    try:
        return json.loads((Path(run_dir) / JOB_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def train_command(command: str, *, config: str | Path | None, run_dir: str | Path, stage: str | None = None,
                  resume: bool = False) -> list[str]:
    """The argv (after ``care``) of a fine-tune or pretraining run, new or resumed."""
    argv = [command, "--events-json"]
    argv += ["--resume", str(run_dir)] if resume else ["--out", str(run_dir)]
    if config is not None:
        argv += ["--config", str(config)]
    if command == "pretrain" and stage is not None:
        argv += ["--stage", str(stage)]
    return argv
