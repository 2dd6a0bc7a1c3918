"""A training run in a child process, watched without blocking: what the napari Train widget drives.

The run is ``python -m care_core.cli finetune|pretrain ... --events-json`` in its own process, not a thread,
because (1) the same command can be launched under ``torchrun`` or continued on a cluster, and (2) a crash,
an out-of-memory kill or a hung CUDA call in the child cannot take the viewer (the parent) down with it.
The child prints one ``TrainEvent`` per JSON line on stdout; a reader thread puts them on a queue that
``TrainingJob.poll`` drains without waiting.
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

from care_core.train.trainer import TrainEvent

__all__ = ["TrainingJob", "start_job"]

COMMANDS = ("finetune", "pretrain")


class TrainingJob:
    """A running (or finished) child training process. ``poll()`` returns the events that arrived since the
    last call; ``running``, ``returncode`` and ``error`` (the child's one-line message on failure) say how it
    stands; ``cancel()`` stops it, keeping the run folder's last checkpoint for ``start_job(..., resume=True)``."""

    def __init__(self, argv: list[str], run_dir: Path):
        self.argv = argv
        self.run_dir = run_dir
        self._events: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        # its own session: a Ctrl-C or hang-up of the terminal napari runs in does not stop the training
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                                     start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._readers:
            t.start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue  # not an event (a stray print of a library)
            try:
                self._events.put(TrainEvent(**json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                continue

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
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
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The child's exit status (None while it runs; negative: killed by that signal, e.g. -9)."""
        return self.proc.poll()

    @property
    def error(self) -> str | None:
        """One line saying why the job failed (None while it runs or when it ended well)."""
        rc = self.returncode
        if rc is None or rc == 0:
            return None
        for t in self._readers:
            t.join(timeout=2.0)  # the child has exited: its pipes close soon
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

    def cancel(self, timeout: float = 10.0) -> int:
        """Stop the child: SIGTERM (it unwinds, keeping the last checkpoint), then SIGKILL after ``timeout`` s.
        Returns the exit status."""
        if self.running:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def wait(self, timeout: float | None = None) -> int:
        """Block until the child exits (for scripts and tests; the widget polls instead)."""
        rc = self.proc.wait(timeout)
        for t in self._readers:
            t.join(timeout=2.0)
        return rc


def start_job(command: str, *, config: str | Path | None = None, run_dir: str | Path, stage: str | None = None,
              resume: bool = False) -> TrainingJob:
    """Start ``care <command>`` (``finetune`` or ``pretrain`` with ``stage`` "1" / "2") in a child process.
    A new run needs ``config``; ``resume=True`` continues ``run_dir`` from its last checkpoint."""
    if command not in COMMANDS:
        raise ValueError(f"command={command!r}: choose one of {COMMANDS}")
    run_dir = Path(run_dir)
    argv = [sys.executable, "-m", "care_core.cli", command, "--events-json"]
    argv += ["--resume", str(run_dir)] if resume else ["--out", str(run_dir)]
    if config is not None:
        argv += ["--config", str(config)]
    if command == "pretrain" and stage is not None:
        argv += ["--stage", str(stage)]
    return TrainingJob(argv, run_dir)
