"""Resume under attack: a fine-tune SIGKILLed at any moment ends with the files of one never stopped, a finished
run trains no more, a SIGTERM leaves a checkpoint, damaged run folders get one line, and the documented entry
points (`care pretrain --resume RUN --config FILE`, `care_core.train.train`) work as written."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from care_core.errors import TrainingConfigError
from test_faults_train import wait_for
from test_train_finetune import config, labelled  # noqa: F401 (labelled: a fixture)
from test_train_trainer import ENV, cli, cohort, write_config  # noqa: F401 (cohort: a fixture)
from train_cohort import tiny_stage1

# MKL's results may depend on how a process's buffers happen to be aligned; its strict mode makes two processes agree
EXACT = {**ENV, "MKL_CBWR": "COMPATIBLE"}

# a child `care` whose process SIGKILLs itself at one moment of the export (after the run's final checkpoint)
KILLER = """
import os, signal, sys
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[1] == "before-export":
    import care_core.model
    care_core.model.save_checkpoint = die
elif sys.argv[1] == "before-head":
    from care_core.evaluate.heads import Head
    Head.save = die
from care_core.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def files_of(run: Path) -> dict[str, object]:
    """{relative path: content} of every file of a run folder: the sha256 of its bytes, or for a torch .pt file
    (whose zip holds a random serialisation id) what it holds; for metrics.jsonl its lines without the speed."""
    class Pt:
        def __init__(self, path: Path) -> None:
            self.state = torch.load(path, weights_only=True)

        def __eq__(self, other) -> bool:
            return _same(self.state, other.state)

        def __repr__(self) -> str:
            return f"<{sorted(self.state)}>"

    def content(p: Path):
        if p.suffix == ".pt":
            return Pt(p)
        if p.name == "metrics.jsonl":  # every logged value but the speed
            return [{k: v for k, v in json.loads(line).items() if k != "samples_per_s"} for line in p.read_text().splitlines()]
        return hashlib.sha256(p.read_bytes()).hexdigest()

    return {str(p.relative_to(run)): content(p) for p in sorted(run.rglob("*")) if p.is_file()}


def killed(moment: str, conf: Path, run: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILLER, moment, "finetune", "--config", str(conf), "--out", str(run)],
                          env=EXACT, capture_output=True, text=True)


# ------------------------------------------------------------------------------------------ a finished run is done
def test_a_fine_tune_killed_at_any_moment_ends_with_the_files_of_one_never_stopped(labelled, tmp_path):
    """Early stopping at epoch < 30; SIGKILL mid-run, after the final checkpoint, and between the CARE and head
    exports; each resumed run ends with the reference's files, byte for byte, and a finished run trains no more."""
    conf = write_config(tmp_path / "c.json", config(labelled, epochs=30, min_epochs=3, patience=2, lr=0.3, min_lr=0.3,
                                                    checkpoint_every=3, keep_checkpoints=50))
    ref = cli("finetune", "--config", conf, "--out", tmp_path / "ref" / "run", env=EXACT)
    assert ref.returncode == 0, ref.stderr
    want = files_of(tmp_path / "ref" / "run")
    last = torch.load(sorted((tmp_path / "ref" / "run" / "checkpoints").glob("step_*.pt"))[-1], weights_only=True)
    assert last["finished"] and last["step"] < 30 * 3  # stopped early, and says it is done

    again = cli("finetune", "--resume", tmp_path / "ref" / "run", env=EXACT)  # a finished run: nothing to train, nothing to write
    assert again.returncode == 0, again.stderr
    assert files_of(tmp_path / "ref" / "run") == want

    for moment, absent in (("before-export", ["care.json", "care.safetensors", "head.json", "head.safetensors"]),
                           ("before-head", ["head.json", "head.safetensors"])):
        run = tmp_path / moment / "run"
        assert killed(moment, conf, run).returncode == -signal.SIGKILL
        assert [n for n in absent if (run / n).exists()] == []
        kept = {n: (run / n).stat().st_mtime_ns for n in ("care.json", "care.safetensors") if n not in absent}
        res = cli("finetune", "--resume", run, env=EXACT)
        assert res.returncode == 0, res.stderr
        assert files_of(run) == want, moment
        assert {n: (run / n).stat().st_mtime_ns for n in kept} == kept  # what was there is not written again

    run = tmp_path / "mid" / "run"  # an asynchronous kill once the second checkpoint is on disk
    child = subprocess.Popen([sys.executable, "-m", "care_core.cli", "finetune", "--config", str(conf), "--out", str(run)],
                             env=EXACT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: len(list((run / "checkpoints").glob("step_*.pt"))) >= 2, child)
    child.kill()
    child.wait()
    assert not (run / "head.json").exists()
    res = cli("finetune", "--resume", run, env=EXACT)
    assert res.returncode == 0, res.stderr
    assert files_of(run) == want


# ------------------------------------------------------------------------------------------ SIGTERM
def test_a_short_stage1_stopped_by_sigterm_leaves_a_checkpoint_and_resumes_bit_identical(cohort, tmp_path):
    """checkpoint_every 500 (the default) is never reached by a short run: the SIGTERM itself writes one."""
    conf = write_config(tmp_path / "c.json", tiny_stage1(cohort, epochs=30, checkpoint_every=500))
    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-m", "care_core.cli", "pretrain", "--stage", "1", "--config", str(conf),
                              "--out", str(run)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 3, child)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate()
    assert child.returncode == 143, err
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    assert len(ckpts) == 1 and not (run / "care.safetensors").exists()
    state = torch.load(ckpts[0], weights_only=True)
    assert 3 <= state["step"] < 30 and not state["finished"]
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1] == state["step"]  # the checkpoint holds every step that was logged


# ------------------------------------------------------------------------------------------ damaged run folders
@pytest.fixture(scope="module")
def finished_runs(cohort, tmp_path_factory) -> Path:
    """A finished one-epoch Stage I run (``run``) and one of a wider CARE (``wide``)."""
    root = tmp_path_factory.mktemp("runs")
    wide = tiny_stage1(cohort, epochs=1)
    wide["model"] = {**wide["model"], "embed_dim": 32}
    for name, values in (("run", tiny_stage1(cohort, epochs=1)), ("wide", wide)):
        res = cli("pretrain", "--stage", "1", "--config", write_config(root / f"{name}.json", values), "--out", root / name)
        assert res.returncode == 0, res.stderr
    return root


def _damage(run: Path, how: str, wide: Path) -> str:
    cfg, ckpt = run / "config.json", sorted((run / "checkpoints").glob("step_*.pt"))[-1]
    record = json.loads(cfg.read_text())
    not_a_run = f"{cfg} is not a run's config (a table with 'stage' and 'config'); it cannot be resumed: start a new run folder"
    if how == "config []":
        cfg.write_text("[]")
        return not_a_run
    if how == "no config":
        cfg.write_text(json.dumps({"stage": "1"}))
        return not_a_run
    if how == "stage 7":
        cfg.write_text(json.dumps({**record, "stage": "7"}))
        return f"{cfg}: stage '7' is not one of ['1', '2', 'finetune']; it cannot be resumed: start a new run folder"
    source = ckpt if how == "no objective" else sorted((wide / "checkpoints").glob("step_*.pt"))[-1]
    state = torch.load(source, weights_only=True)
    state["finished"] = False  # something left to do, so the checkpoint is read
    if how == "no objective":
        del state["objective"]
        torch.save(state, ckpt)
        return f"{ckpt}: not a training checkpoint of this run (no objective); delete it to resume from the one before"
    torch.save(state, ckpt)  # "another size": the checkpoint of a run with a wider CARE
    return f"{ckpt}: its objective does not fit the run's config (Error(s) in loading state_dict for IBOTObjective:"


@pytest.mark.parametrize("how", ["config []", "no config", "stage 7", "no objective", "another size"])
def test_resume_of_a_damaged_run_folder_is_one_line(finished_runs, tmp_path, how):
    import shutil

    run = shutil.copytree(finished_runs / "run", tmp_path / "run")
    message = _damage(run, how, finished_runs / "wide")
    before = files_of(run)
    res = cli("pretrain", "--resume", run)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith(f"care pretrain: error: {message}"), res.stderr
    assert files_of(run) == before  # nothing written


# ------------------------------------------------------------------------------------------ the documented entry points
def test_resume_with_a_config_needs_no_stage_and_threads_are_applied(cohort, tmp_path):
    """docs/training.md: `care pretrain --resume RUN --config here.json` (a run moved to a cluster)."""
    from care_core.cli import main

    conf = write_config(tmp_path / "c.json", tiny_stage1(cohort, epochs=2, checkpoint_every=2))
    here = tmp_path / "here"
    child = subprocess.Popen([sys.executable, "-m", "care_core.cli", "pretrain", "--stage", "1", "--config", str(conf),
                              "--out", str(here)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: any((here / "checkpoints").glob("step_*.pt")), child)
    child.kill()
    child.wait()
    threads = torch.get_num_threads()
    try:
        assert main(["pretrain", "--resume", str(here), "--config", str(conf), "--threads", "1", "--events-json"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert (here / "care.safetensors").is_file()


def test_train_takes_a_config_object_a_dict_a_record_or_a_path(cohort, tmp_path):
    """docs/training.md: `care_core.train.train(config, run_dir)`; each form gives the same weights."""
    from safetensors.torch import load_file

    from care_core.train import train
    from care_core.train.config import config_from_dict

    values = tiny_stage1(cohort, epochs=1)
    path = write_config(tmp_path / "c.json", values)
    forms = {"object": (config_from_dict("1", values), {}), "dict": (values, {"stage": "1"}),
             "record": ({"stage": "1", "config": values}, {}), "path": (str(path), {"stage": "1"})}
    out = {name: list(train(cfg, tmp_path / name, **kw))[-1].path for name, (cfg, kw) in forms.items()}
    ref = load_file(out["object"])
    for name, p in out.items():
        assert all(torch.equal(ref[k], v) for k, v in load_file(p).items()), name
    with pytest.raises(TrainingConfigError, match=r"stage=None: give the stage of the config, one of \['1', '2', 'finetune'\]"):
        list(train(values, tmp_path / "nostage"))
    with pytest.raises(TrainingConfigError, match="a StageIConfig is a stage '1' config, not stage '2'"):
        list(train(config_from_dict("1", values), tmp_path / "wrong", stage="2"))


# ------------------------------------------------------------------------------------------ survival, data order
def test_survival_fine_tune_refuses_batch_1_and_learns_with_pairs(tmp_path):
    from care_core.features import load_features
    from care_core.train import train
    from train_cohort import TINY_MODEL, write_feature_cohort

    files = write_feature_cohort(tmp_path / "features", 16, seed=4, n_side=8, slide_shift=2.0)
    risk = np.array([load_features(f).features.mean(0)[:2].sum() for f in files])
    with open(tmp_path / "labels.csv", "w") as fh:  # higher risk, shorter time; every third slide censored
        fh.write("slide,time,event\n" + "".join(f"{f.stem},{np.exp(-r) * 100:.3f},{int(i % 3 != 2)}\n"
                                                 for i, (f, r) in enumerate(zip(files, risk))))
    values = {"labels": str(tmp_path / "labels.csv"), "features": str(tmp_path / "features"), "model": dict(TINY_MODEL),
              "epochs": 12, "min_epochs": 12, "lr": 3e-3, "min_lr": 3e-3, "log_every": 1}
    with pytest.raises(TrainingConfigError) as err:
        list(train({**values, "batch_size": 1}, tmp_path / "one", stage="finetune"))
    assert str(err.value) == (f"labels {values['labels']!r} are survival times: the Cox loss ranks the slides of a batch, "
                              "so batch_size=1 learns nothing; set batch_size >= 2 (16 is a good start)")
    assert not (tmp_path / "one" / "config.json").exists()
    events = list(train({**values, "batch_size": 4}, tmp_path / "four", stage="finetune"))
    losses = [e.metrics["loss_task"] for e in events if e.kind == "step"]
    assert np.mean(np.array(losses) > 0) > 0.8  # 0 only in a batch whose one event outlives the rest (or without events)
    assert np.mean(losses[-6:]) < np.mean(losses[:6])


def test_the_step_order_is_made_one_epoch_at_a_time(tmp_path):
    """10**12 steps: the loader's batches start at once and match `step_samples`, also from a resume mid-epoch."""
    import tracemalloc

    from care_core.train.trainer import _StepBatches, step_samples

    tracemalloc.start()
    batches = iter(_StepBatches(0, 10**12, 1000, 8, 3, 0, 1))
    first = [next(batches) for _ in range(300)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000  # a list of every step would need terabytes
    for step in range(300):
        epoch, idx = step_samples(step, 1000, 8, 3)
        assert first[step] == [(epoch, int(i)) for i in idx]
    order = lambda epoch, n: np.random.default_rng([epoch, 7]).choice(n, size=n)  # noqa: E731 (a class-weighted order)
    resumed = list(_StepBatches(5, 12, 10, 4, 1, 1, 2, order))  # rank 1 of 2, from step 5 (mid-epoch)
    assert len(resumed) == 7
    for step, got in zip(range(5, 12), resumed):
        epoch, idx = step_samples(step, 10, 4, 1, 1, 2, order)
        assert got == [(epoch, int(i)) for i in idx]
