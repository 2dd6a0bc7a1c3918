"""The trainer: configs, schedules, data order, Stage I end to end, exact resume after SIGKILL, DDP, faults."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from care_core.errors import TrainingConfigError, TrainingError
from care_core.train.config import config_from_dict, load_config
from care_core.train.trainer import cosine_schedule, latest_checkpoint, step_samples, train
from train_cohort import tiny_stage1, write_feature_cohort

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cohort") / "features"
    write_feature_cohort(folder, 4)
    return folder


def run_all(cfg, run_dir, **kw) -> list:
    return list(train(cfg, run_dir, **kw))


def cli(*args, env=ENV, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "care_core.cli", *map(str, args)], env=env, capture_output=True, text=True, **kw)


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


# ------------------------------------------------------------------------------------------ config
def test_config_refuses_unknown_keys_bad_types_and_impossible_values(cohort):
    with pytest.raises(TrainingConfigError, match=r"unknown Stage 1 config key\(s\) \['bacth_size'\]"):
        config_from_dict("1", {"features": str(cohort), "bacth_size": 4})
    with pytest.raises(TrainingConfigError, match="batch_size='abc' must be a number"):
        config_from_dict("1", {"features": str(cohort), "batch_size": "abc"})
    with pytest.raises(TrainingConfigError, match="warmup_epochs=5"):
        config_from_dict("1", {"features": str(cohort), "epochs": 2, "warmup_epochs": 5})
    with pytest.raises(TrainingConfigError, match="needs `features`"):
        config_from_dict("1", {})
    with pytest.raises(TrainingConfigError, match="modality='dna'"):
        config_from_dict("2", {"table": "t.csv", "modality": "dna"})


def test_config_files_toml_yaml_json_give_the_same_config(tmp_path, cohort):
    (tmp_path / "a.toml").write_text(f'features = "{cohort}"\nbatch_size = 4\n[model]\nembed_dim = 16\nheads = 2\n')
    (tmp_path / "a.yaml").write_text(f"features: {cohort}\nbatch_size: 4\nmodel:\n  embed_dim: 16\n  heads: 2\n")
    (tmp_path / "a.json").write_text(json.dumps({"features": str(cohort), "batch_size": 4, "model": {"embed_dim": 16, "heads": 2}}))
    cfgs = [load_config(tmp_path / f"a.{ext}", "1") for ext in ("toml", "yaml", "json")]
    assert cfgs[0] == cfgs[1] == cfgs[2] and cfgs[0].model == {"embed_dim": 16, "heads": 2}
    (tmp_path / "bad.toml").write_text("batch_size = = 4")
    with pytest.raises(TrainingConfigError, match=r"bad\.toml is not valid TOML: Invalid value \(at line 1, column 14\)"):
        load_config(tmp_path / "bad.toml", "1")


def test_cosine_schedule_hand_values():
    assert cosine_schedule(0, 100, 1.0, 0.0, warmup_steps=10) == 0.0
    assert cosine_schedule(5, 100, 1.0, 0.0, warmup_steps=10) == pytest.approx(0.5)
    assert cosine_schedule(10, 100, 1.0, 0.0, warmup_steps=10) == pytest.approx(1.0)
    assert cosine_schedule(55, 100, 1.0, 0.0, warmup_steps=10) == pytest.approx(0.5)
    assert cosine_schedule(100, 100, 1.0, 0.1) == pytest.approx(0.1)


def test_step_samples_cover_each_epoch_and_split_over_ranks():
    seen = np.concatenate([step_samples(s, 10, 3, seed=7)[1] for s in range(3)])
    assert len(set(seen.tolist())) == 9  # 3 steps of 3 samples, no repeats within an epoch
    assert step_samples(3, 10, 3, seed=7)[0] == 1  # step 3 opens epoch 1
    one = step_samples(2, 10, 4, seed=7)[1]
    split = [step_samples(2, 10, 4, seed=7, rank=r, world=2)[1] for r in range(2)]
    assert sorted(np.concatenate(split).tolist()) == sorted(one.tolist())


# ------------------------------------------------------------------------------------------ Stage I
def test_teacher_gets_no_gradients_and_follows_the_ema(cohort, tmp_path):
    from care_core.train.data import ViewConfig, make_views, sample_rng
    from care_core.train.ibot import IBOTObjective
    from care_core.model import CARE
    from care_core.features import load_features

    cfg = config_from_dict("1", tiny_stage1(cohort))
    obj = IBOTObjective(CARE.from_seed(0, input_dim=8, **cfg.model), cfg)
    pf = load_features(cohort / "slide0.h5")
    batch = [make_views(pf.features, pf.grid_indices(), ViewConfig(**cfg.views), sample_rng(0, 0, i)) for i in range(2)]
    loss, logs = obj(batch, {"teacher_temp": 0.04})
    loss.backward()
    assert all(p.grad is None for p in obj.teacher.parameters())
    assert all(not p.requires_grad for p in obj.teacher.parameters())
    assert obj.student["care"].proj_in.weight.grad.abs().sum() > 0
    assert obj.student["patch_head"].mlp[0].weight.grad is not None  # masked-token loss reached the patch head
    t0 = obj.teacher["care"].proj_in.weight.detach().clone()
    with torch.no_grad():
        obj.student["care"].proj_in.weight.add_(1.0)
    obj.update_teacher(0.9)
    s = obj.student["care"].proj_in.weight.detach()
    torch.testing.assert_close(obj.teacher["care"].proj_in.weight, 0.9 * t0 + 0.1 * s)
    assert {"teacher_entropy", "embedding_std", "loss_cls", "loss_mim", "loss_rsl"} <= set(logs)


def test_stage1_run_writes_metrics_checkpoints_and_a_loadable_care(cohort, tmp_path):
    from care_core.features import load_features
    from care_core.model import load_checkpoint

    cfg = config_from_dict("1", tiny_stage1(cohort))
    events = run_all(cfg, tmp_path / "run")
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    total = events[0].total_steps
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == list(range(1, total + 1))
    assert all(math.isfinite(e.metrics["loss"]) and e.samples_per_s > 0 for e in steps)
    assert steps[-1].eta_s == pytest.approx(0.0)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, total + 1))
    assert rows[0]["lr"] == 0.0 and rows[0]["teacher_temp"] == pytest.approx(cfg.warmup_teacher_temp)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [f"step_{total - 2:08d}.pt", f"step_{total:08d}.pt"]
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["stage"] == "1" and record["config"]["batch_size"] == 4
    model = load_checkpoint(tmp_path / "run" / "care")
    assert model.config.embed_dim == 16 and model.checkpoint_meta.encoder == "stain-texture"
    assert model.checkpoint_meta.feature_mpp == 0.5 and model.checkpoint_meta.extra["stage"] == "1"
    enc = model.encode(load_features(cohort / "slide1.h5"))
    assert enc.slide_embedding.shape == (16,) and np.isfinite(enc.slide_embedding).all()
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "run").rglob("*"))


def test_index_is_built_once_and_reused(cohort, tmp_path):
    cfg = config_from_dict("1", tiny_stage1(cohort, epochs=1))
    run_all(cfg, tmp_path / "a")
    index = tmp_path / "a" / "subwsi_index.h5"
    stamp = index.stat().st_mtime_ns
    cfg2 = config_from_dict("1", tiny_stage1(cohort, epochs=1, index=str(index)))
    run_all(cfg2, tmp_path / "b")
    assert index.stat().st_mtime_ns == stamp and not (tmp_path / "b" / "subwsi_index.h5").exists()


def test_new_run_refuses_a_used_folder_and_resume_refuses_another_config(cohort, tmp_path):
    cfg = config_from_dict("1", tiny_stage1(cohort, epochs=1))
    run_all(cfg, tmp_path / "run")
    with pytest.raises(TrainingConfigError, match="already holds a run; pass --resume"):
        run_all(cfg, tmp_path / "run")
    other = config_from_dict("1", tiny_stage1(cohort, epochs=1, lr=5e-3))
    with pytest.raises(TrainingConfigError, match=r"another config \(differs in \['lr'\]\)"):
        run_all(other, tmp_path / "run", resume=True)
    with pytest.raises(TrainingConfigError, match="no run to resume"):
        run_all(cfg, tmp_path / "empty", resume=True)


def test_crop_larger_than_every_subwsi_is_refused_before_training(cohort, tmp_path):
    cfg = config_from_dict("1", tiny_stage1(cohort, views={"global_size": [40, 50], "global_min_patches": 8}))
    with pytest.raises(TrainingConfigError, match="lower global_size"):
        run_all(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_mixed_encoders_refused(tmp_path):
    write_feature_cohort(tmp_path / "f", 2)
    write_feature_cohort(tmp_path / "g", 1, encoder="uni_v2")
    (tmp_path / "g" / "slide0.h5").rename(tmp_path / "f" / "other.h5")
    cfg = config_from_dict("1", tiny_stage1(tmp_path / "f"))
    with pytest.raises(Exception, match="other.h5"):
        run_all(cfg, tmp_path / "run")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    write_feature_cohort(tmp_path / "f", 4)
    cfg = config_from_dict("1", tiny_stage1(tmp_path / "f", epochs=2, checkpoint_every=1, lr=1e30, min_lr=1e29, warmup_epochs=0))
    with pytest.raises(TrainingError, match=r"step \d+: the loss is (nan|inf).*last good checkpoint .*step_\d+\.pt is intact"):
        run_all(cfg, tmp_path / "run")
    last = latest_checkpoint(tmp_path / "run")
    assert last is not None and torch.load(last, weights_only=True)["step"] >= 1
    assert not (tmp_path / "run" / "care.safetensors").exists()


# ------------------------------------------------------------------------------------------ resume, DDP
def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg))
    return path


def stopped_at_checkpoint(conf: Path, run_dir: Path, sig: int) -> subprocess.Popen:
    """A Stage I run of ``conf`` in a child process, sent ``sig`` once its first checkpoint is on disk."""
    child = subprocess.Popen([sys.executable, "-m", "care_core.cli", "pretrain", "--stage", "1", "--config", str(conf),
                              "--out", str(run_dir)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while latest_checkpoint(run_dir) is None and time.time() < deadline and child.poll() is None:
        time.sleep(0.02)
    child.send_signal(sig)
    child.wait()
    return child


def test_sigkilled_run_resumes_to_bit_identical_weights(cohort, tmp_path):
    conf = write_config(tmp_path / "c.json", tiny_stage1(cohort, epochs=3, checkpoint_every=3, keep_checkpoints=5))
    ref = cli("pretrain", "--stage", "1", "--config", conf, "--out", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    child = stopped_at_checkpoint(conf, tmp_path / "run", signal.SIGKILL)
    assert child.returncode == -signal.SIGKILL
    killed_at = torch.load(latest_checkpoint(tmp_path / "run"), weights_only=True)["step"]
    assert not (tmp_path / "run" / "care.safetensors").exists()
    res = cli("pretrain", "--resume", tmp_path / "run")
    assert res.returncode == 0, res.stderr
    a, b = weights(tmp_path / "ref" / "care.safetensors"), weights(tmp_path / "run" / "care.safetensors")
    total = json.loads((tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert a.keys() == b.keys() and 0 < killed_at < total
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, total + 1))  # lines logged after the checkpoint and before the kill are dropped


def test_a_run_moved_to_another_machine_resumes_with_its_new_paths(cohort, tmp_path):
    """A run started in one place (the napari window) and continued elsewhere (a cluster): the run folder and the
    features moved, the config names their new paths; it ends with the weights of a run never stopped."""
    import shutil

    conf = write_config(tmp_path / "c.json", tiny_stage1(cohort, epochs=2, checkpoint_every=2))
    ref = cli("pretrain", "--stage", "1", "--config", conf, "--out", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    assert stopped_at_checkpoint(conf, tmp_path / "here", signal.SIGTERM).returncode == 143
    shutil.copytree(cohort, tmp_path / "cluster" / "features")
    shutil.move(tmp_path / "here", tmp_path / "cluster" / "run")
    moved = write_config(tmp_path / "cluster" / "c.json", tiny_stage1(tmp_path / "cluster" / "features", epochs=2,
                                                                      checkpoint_every=2, device="cpu"))
    res = cli("pretrain", "--stage", "1", "--resume", tmp_path / "cluster" / "run", "--config", moved,
              env={**ENV, "PYTHONWARNINGS": "default"})
    assert res.returncode == 0, res.stderr
    assert f"warning: resuming {tmp_path / 'cluster' / 'run'} with new device, features" in res.stderr
    record = json.loads((tmp_path / "cluster" / "run" / "config.json").read_text())
    assert record["config"]["features"] == str(tmp_path / "cluster" / "features")  # a later resume uses them too
    a, b = weights(tmp_path / "ref" / "care.safetensors"), weights(tmp_path / "cluster" / "run" / "care.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    other = write_config(tmp_path / "other.json", tiny_stage1(tmp_path / "cluster" / "features", epochs=3))
    res = cli("pretrain", "--stage", "1", "--resume", tmp_path / "cluster" / "run", "--config", other)
    assert res.returncode == 2 and "differs in ['epochs']" in res.stderr  # what is trained cannot change


def test_two_gloo_processes_match_one(cohort, tmp_path):
    conf = write_config(tmp_path / "c.json", tiny_stage1(cohort, epochs=1))
    one = cli("pretrain", "--stage", "1", "--config", conf, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                          "-m", "care_core.cli", "pretrain", "--stage", "1", "--config", str(conf), "--out", str(tmp_path / "two")],
                         env=ENV, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = weights(tmp_path / "one" / "care.safetensors"), weights(tmp_path / "two" / "care.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_cli_bad_config_is_one_line_and_starts_nothing(cohort, tmp_path):
    conf = write_config(tmp_path / "c.json", {**tiny_stage1(cohort), "lr_peak": 1.0})
    res = cli("pretrain", "--stage", "1", "--config", conf, "--out", tmp_path / "run")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "c.json: unknown Stage 1 config key(s) ['lr_peak']" in lines[0]
    assert not (tmp_path / "run" / "config.json").exists()
    res = cli("pretrain", "--resume", tmp_path / "nothing")
    assert res.returncode == 2 and "holds no run to resume (no config.json)" in res.stderr
