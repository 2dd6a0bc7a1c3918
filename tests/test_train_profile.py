"""The step's fixed costs: the profiler hook (`profile_steps`, `care pretrain --profile-steps`), the non-finite check
every `sync_every` steps, metrics read only on logged steps, and the teacher EMA in a few foreach kernels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from care_core.errors import TrainingConfigError, TrainingError
from care_core.train.config import config_from_dict
from care_core.train.trainer import latest_checkpoint, train
from test_train_trainer import ENV, cohort  # noqa: F401 — the trainer tests' cohort fixture and child environment
from train_cohort import tiny_stage1, write_feature_cohort


def test_profile_steps_from_the_cli_writes_a_trace_and_the_top_items_per_step(cohort, tmp_path):
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps(tiny_stage1(cohort, epochs=1)))
    res = subprocess.run([sys.executable, "-m", "care_core.cli", "pretrain", "--stage", "1", "--config", str(conf),
                          "--out", str(tmp_path / "run"), "--profile-steps", "2"], env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "run" / "profile"
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "top.txt", "trace.json"]
    trace = json.loads((out / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"care/forward", "care/backward", "care/optimizer", "care/teacher_ema", "care/data"} <= names
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and len(summary["wall_ms_per_step"]) == 2
    assert summary["device"] == []  # a CPU run
    assert 0 < len(summary["host"]) <= 15 and all(r["ms_per_step"] > 0 for r in summary["host"])
    assert "aten::addmm" in {r["name"] for r in summary["host"]} or "aten::mm" in {r["name"] for r in summary["host"]}
    assert set(summary["phases_host_ms_per_step"]) == {"care/data", "care/forward", "care/backward", "care/optimizer",
                                                       "care/teacher_ema"}
    top = (out / "top.txt").read_text()
    assert top.startswith("2 steps recorded, wall ") and "host (self time):" in top and "care/forward" in top
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["profile_steps"] == 2
    assert not list(out.glob("*.tmp*"))  # written through temp files, none left


def test_profiling_and_deferred_syncs_leave_the_training_bit_identical(cohort, tmp_path):
    from safetensors.torch import load_file

    list(train(config_from_dict("1", tiny_stage1(cohort, epochs=1)), tmp_path / "plain"))
    list(train(config_from_dict("1", tiny_stage1(cohort, epochs=1, profile_steps=1, sync_every=3, log_every=2)),
               tmp_path / "profiled"))
    a = load_file(str(tmp_path / "plain" / "care.safetensors"))
    b = load_file(str(tmp_path / "profiled" / "care.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    plain = [json.loads(x) for x in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (tmp_path / "profiled" / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in plain}
    for r in rows:  # the logged steps hold the same numbers, read from tensors on those steps only
        assert {k: v for k, v in r.items() if k != "samples_per_s"} == {k: v for k, v in by_step[r["step"]].items()
                                                                        if k != "samples_per_s"}
    assert isinstance(rows[0]["teacher_entropy"], float) and isinstance(rows[0]["grad_norm"], float)
    assert (tmp_path / "profiled" / "profile" / "summary.json").is_file()


def test_a_non_finite_loss_found_late_names_its_step_and_leaves_the_same_checkpoints(tmp_path):
    write_feature_cohort(tmp_path / "f", 4)
    base = tiny_stage1(tmp_path / "f", epochs=4, checkpoint_every=2, keep_checkpoints=10, lr=1e30, min_lr=1e29,
                       warmup_epochs=1)  # the loss of step 2 is not finite; deferred, the check sees it in step 3
    errors, last = {}, {}
    for name, every in (("each", 1), ("deferred", 4)):
        with pytest.raises(TrainingError) as err:
            list(train(config_from_dict("1", {**base, "sync_every": every}), tmp_path / name))
        errors[name] = str(err.value).split(";")[0]
        last[name] = torch.load(latest_checkpoint(tmp_path / name), weights_only=True)
    assert errors["each"] == errors["deferred"]  # the first non-finite step and its loss, found at a later check
    assert errors["each"].startswith("step ") and errors["each"].endswith(("nan (not finite)", "inf (not finite)"))
    assert last["each"]["step"] == last["deferred"]["step"] >= 1  # nothing written after the bad step
    for k, v in last["each"]["objective"].items():
        assert torch.equal(v, last["deferred"]["objective"][k]), k
        assert torch.isfinite(v.float()).all(), k
    assert not (tmp_path / "deferred" / "care.safetensors").exists()


@pytest.mark.parametrize("key, value, message", [
    ("sync_every", 0, "sync_every=0 must be an integer >= 1"),
    ("profile_steps", -1, "profile_steps=-1 must be an integer >= 0"),
    ("compile", "fast", "compile='fast' must be one of '', 'default', 'reduce-overhead'"),
    ("bucket_shapes", "yes", "bucket_shapes='yes' must be true or false"),
])
def test_bad_speed_settings_are_one_line(cohort, key, value, message):
    with pytest.raises(TrainingConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        config_from_dict("1", tiny_stage1(cohort, **{key: value}))


def test_teacher_ema_in_foreach_kernels_is_the_loop_it_replaced(cohort):
    from care_core.model import CARE
    from care_core.train.ibot import IBOTObjective

    cfg = config_from_dict("1", tiny_stage1(cohort, model={**tiny_stage1(cohort)["model"], "input_norm": True}))
    obj = IBOTObjective(CARE.from_seed(0, input_dim=8, **cfg.model), cfg)
    with torch.no_grad():
        for p in obj.student.parameters():
            p.add_(torch.randn_like(p))
        obj.student["care"].feature_mean.fill_(0.5)
    want = [t.clone() for t in obj.teacher.parameters()]
    for t, s in zip(want, obj.student.parameters()):  # the per-parameter loop update_teacher ran before
        t.mul_(0.9).add_(s.detach(), alpha=1 - 0.9)
    obj.update_teacher(0.9)
    for t, w in zip(obj.teacher.parameters(), want):
        assert torch.equal(t, w)
    assert torch.equal(obj.teacher["care"].feature_mean, torch.full((8,), 0.5))  # buffers copied
