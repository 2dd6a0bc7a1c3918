"""Where a training step's time goes: torch.profiler over a few steps (the `profile_steps` config field).

The first step of the run is skipped (lazy initialisation, compilation), the second warms the profiler up,
then ``steps`` steps are recorded. The run folder gets

    profile/trace.json     Chrome / Perfetto trace of the recorded steps (host ops, device kernels, the
                           step's phases: care/data, care/forward, care/backward, care/optimizer, care/teacher_ema)
    profile/summary.json   wall ms per step and the top host and device items, in ms and calls per step
    profile/top.txt        the same items as a table
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

__all__ = ["StepProfiler"]

_TOP = 15  # items listed per table


class StepProfiler:
    """``phase(name)`` around the parts of a step and ``step()`` after each one; writes its files when done."""

    def __init__(self, run_dir: Path, steps: int, cuda: bool) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile, schedule

        self.out, self.steps, self.cuda = Path(run_dir) / "profile", int(steps), cuda
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        self._prof = profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=self.steps, repeat=1),
                             on_trace_ready=self._write)
        self._seen, self._times, self._t = 0, [], None
        self._torch = torch
        self._prof.start()

    @property
    def active(self) -> bool:
        return self._prof is not None

    def phase(self, name: str):
        """A labelled range in the trace while recording (a no-op context otherwise)."""
        if self._prof is None:
            return contextlib.nullcontext()
        return self._torch.profiler.record_function(f"care/{name}")

    def step(self) -> None:
        """One training step is over (the device synchronised while recording, so the wall times are the steps')."""
        if self._prof is None:
            return
        if self.cuda:
            self._torch.cuda.synchronize()
        now = time.perf_counter()
        if self._seen >= 2:  # a recorded step ends
            self._times.append(now - self._t)
        self._t = now
        self._seen += 1
        self._prof.step()
        if self._seen == 2 + self.steps:
            self.close()

    def close(self) -> None:
        """Stop recording (at the run's end if it had fewer steps); the files are written when steps were recorded."""
        if self._prof is not None:
            prof, self._prof = self._prof, None
            prof.stop()

    def _write(self, prof) -> None:
        from care_core._atomic import atomic_path

        if not self._times:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        n = len(self._times)
        with atomic_path(self.out / "trace.json") as tmp:
            prof.export_chrome_trace(str(tmp))
        events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]

        def top(attr: str) -> list[dict]:
            rows = sorted((e for e in events if getattr(e, attr, 0) > 0), key=lambda e: -getattr(e, attr))[:_TOP]
            return [{"name": e.key, "ms_per_step": getattr(e, attr) / 1000 / n, "calls_per_step": e.count / n}
                    for e in rows]

        summary = {
            "steps": n,
            "wall_ms_per_step": [1000 * t for t in self._times],
            "host": top("self_cpu_time_total"),
            "device": top("self_device_time_total") if self.cuda else [],
            "phases_host_ms_per_step": {e.key: e.cpu_time_total / 1000 / n for e in events if e.key.startswith("care/")},
        }
        with atomic_path(self.out / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
        with atomic_path(self.out / "top.txt") as tmp:
            tmp.write_text(_table(summary))


def _table(summary: dict) -> str:
    wall = summary["wall_ms_per_step"]
    lines = [f"{summary['steps']} steps recorded, wall {sum(wall) / len(wall):.1f} ms per step "
             f"(min {min(wall):.1f}, max {max(wall):.1f})", ""]
    for title, key in (("step phases (host, inclusive)", None), ("host (self time)", "host"),
                       ("device (self time)", "device")):
        if key is None:
            rows = [{"name": k, "ms_per_step": v, "calls_per_step": 1.0}
                    for k, v in summary["phases_host_ms_per_step"].items()]
        else:
            rows = summary[key]
        if not rows:
            continue
        lines += [f"{title}:", f"  {'ms/step':>9} {'calls/step':>10}  name"]
        lines += [f"  {r['ms_per_step']:9.2f} {r['calls_per_step']:10.1f}  {r['name'][:100]}" for r in rows]
        lines.append("")
    return "\n".join(lines)
