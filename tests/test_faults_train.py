"""Training under attack: two runs into one folder, kills at any moment, hostile configs, damaged run folders."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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


# ------------------------------------------------------------------------------------------ hostile configs
STAGE2 = {"table": "cohort.csv", "rna": "rna.csv"}


@pytest.mark.parametrize("stage, values, message", [
    ("1", {"epochs": 2.5}, "epochs=2.5 must be a whole number"),
    ("1", {"epochs": float("inf")}, "epochs=inf must be a finite number"),
    ("1", {"epochs": float("nan")}, "epochs=nan must be a finite number"),
    ("1", {"lr": float("nan")}, "lr=nan must be a finite number"),
    ("1", {"batch_size": 2.5}, "batch_size=2.5 must be a whole number"),
    ("1", {"model": "abc"}, "model='abc' must be a table of keys"),
    ("1", {"model": {"embed_dim": "abc"}}, "model.embed_dim='abc' must be a number"),
    ("1", {"model": {"embed_dim": 16, "heads": 3}}, "model: embed_dim=16 is not divisible by heads=3"),
    ("1", {"model": {"depth": 3}}, "unknown model key(s) ['depth']; valid keys: ["),
    ("1", {"device": "tpu"}, "device='tpu' must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ("1", {"amp": "yes"}, "amp='yes' must be true or false"),
    ("1", {"out_dim": 0}, "out_dim=0 must be an integer >= 1"),
    ("1", {"head_hidden": -3}, "head_hidden=-3 must be an integer >= 1"),
    ("2", {"max_patches": 0}, "max_patches=0 must be an integer >= 1"),
    ("2", {"sample_genes": -5}, "sample_genes=-5 must be an integer >= 0"),
    ("2", {"top_proteins": 0}, "top_proteins=0 must be an integer >= 1"),
    ("2", {"mol_dim": 30, "mol_heads": 4}, "mol_dim=30 must be divisible by mol_heads=4"),
    ("2", {"rna_log1p": "no"}, "rna_log1p='no' must be true or false"),
    ("finetune", {"labels": "l.csv", "features": "f", "patience": 0}, "patience=0 must be an integer >= 1"),
    ("finetune", {"labels": "l.csv", "features": "f", "fold": -1}, "fold=-1 must be an integer >= 0"),
])
def test_config_values_that_would_crash_mid_run_are_refused_up_front(tmp_path, cohort, stage, values, message):
    from care_core.errors import TrainingConfigError
    from care_core.train.config import load_config

    base = {"1": tiny_stage1(cohort), "2": STAGE2, "finetune": {}}[stage]
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**base, **values}))  # NaN / inf as JSON's NaN / Infinity
    with pytest.raises(TrainingConfigError) as err:
        load_config(path, stage)
    assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value)


def test_a_huge_epoch_count_in_the_file_and_a_bad_value_on_the_cli_are_one_line(cohort, tmp_path):
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps(tiny_stage1(cohort)).replace('"epochs": 2', '"epochs": 1e400'))
    res = cli("pretrain", "--stage", "1", "--config", conf, "--out", tmp_path / "run")
    assert res.returncode == 2
    assert res.stderr.splitlines() == [f"care pretrain: error: {conf}: epochs=inf must be a finite number"]
    assert not (tmp_path / "run").exists()


def test_config_file_faults_are_one_line_with_the_file_and_line(tmp_path, cohort):
    from care_core.errors import TrainingConfigError
    from care_core.train.config import load_config, read_config_file

    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'features = "x"\n# caf\xe9\n')
    yaml_bad = tmp_path / "bad.yaml"
    yaml_bad.write_text("features: x\nmodel:\n  embed_dim: 16\n heads: 2\n")
    laughs = tmp_path / "laughs.yml"
    laughs.write_text('a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
                      + "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
                      + "features: x\nmodel:\n  embed_dim: *i\n")
    cases = {
        latin: f"{latin}, line 2: byte 0xe9 is not UTF-8; save the config as UTF-8",
        yaml_bad: f"{yaml_bad}, line 4: not valid YAML: expected <block end>, but found '<block mapping start>'",
        laughs: f"{laughs}, line 2: YAML aliases (*a) are not accepted in a config; write the values out",
    }
    for path, message in cases.items():
        with pytest.raises(TrainingConfigError) as err:
            read_config_file(path)
        assert str(err.value) == message
    upper = {"c.TOML": f'features = "{cohort}"\nbatch_size = 4\n', "c.YAML": f"features: {cohort}\nbatch_size: 4\n"}
    for name, text in upper.items():  # capitals are the same format, not JSON
        (tmp_path / name).write_text(text)
        assert load_config(tmp_path / name, "1").batch_size == 4


# ------------------------------------------------------------------------------------------ Stage II matrices
def test_a_log_scale_rna_matrix_is_used_as_the_error_advises_and_a_nan_column_is_named(tmp_path):
    import pandas as pd

    from care_core.errors import TrainingConfigError
    from care_core.train.config import config_from_dict
    from care_core.train.trainer import train
    from test_train_stage2 import GENES, stage2, write_pairs

    write_pairs(tmp_path, drop_last=False)
    np_log = np.log(pd.read_csv(tmp_path / "rna.csv", index_col=0))
    np_log.to_csv(tmp_path / "rna.csv")  # log-scale: negative values
    with pytest.raises(TrainingConfigError, match=r"negative values .* set rna_log1p = false in the Stage II config"):
        list(train(config_from_dict("2", stage2(tmp_path, epochs=1)), tmp_path / "a"))
    events = list(train(config_from_dict("2", stage2(tmp_path, epochs=1, rna_log1p=False)), tmp_path / "b"))
    assert events[-1].kind == "end" and (tmp_path / "b" / "care.safetensors").is_file()
    np_log[GENES[3]] = float("nan")  # one gene missing everywhere
    np_log.to_csv(tmp_path / "rna.csv")
    with pytest.raises(TrainingConfigError) as err:
        list(train(config_from_dict("2", stage2(tmp_path, epochs=1, rna_log1p=False)), tmp_path / "c"))
    assert str(err.value) == (f"RNA matrix {str(tmp_path / 'rna.csv')!r}: every sample with a slide has a missing (NaN) "
                              "value, in column(s) ['G3']; fill them or drop the column(s)")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == []  # nothing written before the refusal
