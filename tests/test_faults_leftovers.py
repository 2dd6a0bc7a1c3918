"""Fault 7: temp files of a SIGKILLed writer are removed by a later run; nobody else's are touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from care_core._atomic import remove_stale_temps, temp_sibling

WRITER = """
import sys, time
from care_core._atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp, open(tmp, "wb") as fh:
    fh.write(b"half")
    fh.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def killed_writer(target) -> None:
    """Run a real writer process and SIGKILL it while its temp file is open."""
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "writing\n"
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL


def test_sigkilled_writer_leaves_a_temp_that_the_next_run_removes(tmp_path):
    killed_writer(tmp_path / "s.h5")
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".s.h5.") and left.name.endswith(".tmp") and left.read_bytes() == b"half"
    alive = temp_sibling(tmp_path / "t.h5")  # this process's own temp: its writer is alive
    alive.write_bytes(b"busy")
    for name in (".u.h5.123.tmp", "v.h5", ".w.h5.1.0123456789abcdef.tmp"):  # not ours / no host tag of ours
        (tmp_path / name).write_bytes(b"keep")
    assert remove_stale_temps(tmp_path) == [left]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [alive.name, ".u.h5.123.tmp", "v.h5", ".w.h5.1.0123456789abcdef.tmp"])
    assert remove_stale_temps(tmp_path / "missing") == []


def test_temp_name_records_pid_and_host():
    name = temp_sibling(__import__("pathlib").Path("x.npy")).name
    assert name.startswith(f".x.npy.{os.getpid()}.") and len(name.split(".")[-2]) == 16


def test_only_the_named_outputs_temps_are_removed(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)  # a pid that has exited
    host = temp_sibling(tmp_path / "x").name.split(".")[-2][:8]
    a, b = (tmp_path / f".{n}.{dead}.{host}0123abcd.tmp" for n in ("a.h5", "b.h5"))
    a.write_bytes(b"")
    b.write_bytes(b"")
    assert remove_stale_temps(tmp_path, name="a.h5") == [a] and b.exists()
