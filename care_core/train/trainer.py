"""One trainer for every stage: schedules, AdamW, checkpoints with exact resume, DDP, progress events.

``train(config, run_dir)`` is a generator of ``TrainEvent``s (the CLI's progress bar and the napari
widget consume the same events) and returns the path of the final CARE checkpoint. The stage decides
the data and the objective (``stages.py``); everything else is shared.

The run folder holds
    config.json         the resolved config and the package version (a resume must match it, except where
                        the data and the machine are: RELOCATABLE)
    metrics.jsonl       one JSON object per logged step (and TensorBoard events when installed)
    checkpoints/        step_XXXXXXXX.pt training states (model, optimiser, EMA, centres, RNG, step),
                        written atomically every ``checkpoint_every`` steps and at the end
    care.safetensors    the final CARE checkpoint (+ care.json), readable by ``load_checkpoint``

Exact resume: the data order and every view are functions of (seed, epoch, sample index), so a
checkpoint only needs the step; with the model, optimiser, EMA, centres and torch RNG states restored,
a resumed CPU run reproduces an uninterrupted one bit for bit.

Multi-GPU / multi-node: under ``torchrun`` each process takes every WORLD_SIZE-th sample of the global
batch; gradients are averaged with one all-reduce of a flattened buffer per step (no DDP wrapper: CARE's
graph changes with each batch, e.g. the mask token is unused when no patch is masked).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from care_core.errors import TrainingConfigError, TrainingError

__all__ = ["TrainEvent", "train", "resolve_config", "read_run_record", "load_run", "cosine_schedule",
           "latest_checkpoint", "step_samples"]


@dataclass
class TrainEvent:
    """Progress of a run. kind: start | step | validate (fine-tuning, after each epoch) | checkpoint | end.
    eta_s: seconds left (None before the first step)."""

    kind: str
    step: int
    total_steps: int
    epoch: int = 0
    metrics: dict = field(default_factory=dict)
    lr: float = 0.0
    samples_per_s: float = 0.0
    eta_s: float | None = None
    path: str | None = None


STOP = threading.Event()  # set (the CLI does on SIGTERM) to end a run before its next step; its checkpoints stay


class Stopped(KeyboardInterrupt):
    """A run ended on request (``STOP``) between two steps."""


def cosine_schedule(step: int, total: int, start: float, end: float, warmup_steps: int = 0, warmup_from: float = 0.0) -> float:
    """Linear warm-up from ``warmup_from`` to ``start`` over ``warmup_steps``, then cosine from ``start`` to ``end``."""
    if step < warmup_steps:
        return warmup_from + (start - warmup_from) * step / warmup_steps
    span = max(total - warmup_steps, 1)
    t = min(step - warmup_steps, span) / span
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * t))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest ``checkpoints/step_*.pt`` of a run folder (None when there is none)."""
    found = sorted(Path(run_dir, "checkpoints").glob("step_*.pt"))
    return found[-1] if found else None


# ----------------------------------------------------------------------------------------------- processes
def _fuse_on_cuda(opt, device) -> None:
    """Adam(W) in one fused kernel per step on CUDA; on the CPU the default kernels (a CPU run and its resume stay
    bit-identical to what they were)."""
    for group in opt.param_groups:
        group["fused"] = True if device.type == "cuda" else None
        group["foreach"] = None


def _dist():
    """(rank, world) of the torchrun process group, initialising it from the environment when needed."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        import torch

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingConfigError(f"device={name!r} but no CUDA device is visible; use device = 'cpu' or 'auto'")
    return torch.device(name)


def _all_reduce_grads(params: list, world: int) -> None:
    """Average the gradients of ``params`` over processes with one flattened all-reduce."""
    if world == 1:
        return
    import torch
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    a = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[a : a + n].view_as(p)
        a += n


class _FiniteWatch:
    """The first step whose loss was not finite, noted on the loss's device each step and read on the host (a
    synchronisation, and an all-reduce over processes) only in ``check``: every ``sync_every`` steps and before
    anything is written from the weights."""

    def __init__(self, world: int) -> None:
        self.world, self.first, self.value = world, None, None

    def note(self, step: int, loss) -> None:
        import torch

        loss = loss.detach().float().reshape(1)
        if self.first is None:
            self.first, self.value = torch.full_like(loss, -1, dtype=torch.int64), loss.clone()
        new = (self.first < 0) & ~torch.isfinite(loss)
        self.first = torch.where(new, step, self.first)
        self.value = torch.where(new, loss, self.value)

    def check(self, run_dir: Path, local: bool = False) -> None:
        """A TrainingError naming the first non-finite step of any process since the run (re)started (``local``:
        of this process, without a collective: where the processes may not all be, e.g. a SIGTERM's checkpoint)."""
        if self.first is None:
            return
        first = self.first
        if self.world > 1 and not local:
            import torch
            import torch.distributed as dist

            big = torch.iinfo(torch.int64).max
            first = torch.where(first < 0, big, first)
            dist.all_reduce(first, op=dist.ReduceOp.MIN)  # every process stops at the same check
            first = torch.where(first == big, -1, first)
        step = int(first)
        if step < 0:
            return
        value = float(self.value) if int(self.first) == step else float("nan")  # nan: another process's loss
        last = latest_checkpoint(run_dir)
        raise TrainingError(
            f"step {step}: the loss is {value} (not finite); the run stopped and "
            f"{'its last good checkpoint ' + str(last) + ' is intact' if last else 'no checkpoint was written yet'}; "
            "lower lr or check the features for extreme values"
        )


# ----------------------------------------------------------------------------------------------- data order
def _epoch_order(epoch: int, n_samples: int, seed: int, order=None) -> np.ndarray:
    """The sample order of one epoch: ``order(epoch, n)`` or a permutation seeded by (seed, epoch)."""
    return order(epoch, n_samples) if order else np.random.default_rng([int(seed), int(epoch), 0x5EED]).permutation(n_samples)


def step_samples(step: int, n_samples: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 order=None) -> tuple[int, np.ndarray]:
    """(epoch, sample indices of this process) for optimiser step ``step``: a seeded permutation per epoch
    (or ``order(epoch, n)``), consecutive batches of ``batch_size``, and every ``world``-th sample of a batch
    for process ``rank``."""
    per_epoch = n_samples // batch_size
    epoch, pos = divmod(step, per_epoch)
    perm = _epoch_order(epoch, n_samples, seed, order)
    return epoch, perm[pos * batch_size : (pos + 1) * batch_size][rank::world]


class _StepBatches:
    """The DataLoader's batch sampler: the (epoch, sample) pairs of steps ``start`` .. ``total`` - 1, as
    `step_samples` gives them, made one epoch at a time when the loader reaches it (memory and start-up time do
    not grow with the number of epochs; a resume starts at once)."""

    def __init__(self, start: int, total: int, n_samples: int, batch_size: int, seed: int, rank: int, world: int,
                 order=None) -> None:
        self.start, self.total, self.n, self.batch, self.seed = start, total, n_samples, batch_size, seed
        self.rank, self.world, self.order = rank, world, order

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self):
        per_epoch = self.n // self.batch
        for step in range(self.start, self.total):
            epoch, pos = divmod(step, per_epoch)
            if step == self.start or pos == 0:
                perm = _epoch_order(epoch, self.n, self.seed, self.order)
            yield [(epoch, int(i)) for i in perm[pos * self.batch : (pos + 1) * self.batch][self.rank :: self.world]]


class _StepData:
    """Map-style dataset over (epoch, sample) pairs; a DataLoader batch sampler lists the pairs of each step."""

    def __init__(self, make_sample) -> None:
        self.make_sample = make_sample

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        return self.make_sample(int(i), int(epoch))


def _loader(setup, start: int, total: int, cfg, rank: int, world: int):
    import torch
    from torch.utils.data import DataLoader

    batches = _StepBatches(start, total, setup.n_samples, cfg.batch_size, cfg.seed, rank, world, setup.epoch_order)
    return DataLoader(  # its own generator: the loader's seed draw leaves the global RNG (checkpointed) alone
        _StepData(setup.make_sample), batch_sampler=batches, collate_fn=list, num_workers=cfg.num_workers,
        persistent_workers=False, prefetch_factor=2 if cfg.num_workers else None,
        generator=torch.Generator().manual_seed(cfg.seed),
    )


# ----------------------------------------------------------------------------------------------- checkpoints
def _save_state(path: Path, state: dict) -> None:
    import torch

    from care_core._atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_state(path: Path) -> dict:
    import torch

    try:  # weights_only: tensors, numbers, strings and containers only, never code
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — a truncated or foreign file gets one line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TrainingConfigError(f"{path}: not a readable training checkpoint ({reason}); delete it to resume from "
                                  "the one before") from None
    if not isinstance(state, dict):
        raise TrainingConfigError(f"{path}: not a training checkpoint (a {type(state).__name__}); delete it to resume "
                                  "from the one before")
    return state


def _restore(path: Path, state: dict, keys: tuple[str, ...], modules: dict) -> None:
    """Load ``state[name]`` into each of ``modules`` (name -> module or optimiser); one line when the checkpoint
    lacks a part or holds another model (another size, another stage)."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise TrainingConfigError(f"{path}: not a training checkpoint of this run (no {', '.join(missing)}); delete it to "
                                  "resume from the one before")
    for name, module in modules.items():
        try:
            module.load_state_dict(state[name])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            reason = " ".join(str(exc).split())
            raise TrainingConfigError(f"{path}: its {name} does not fit the run's config ({reason[:200]}); resume with "
                                      "the run's own config or delete the checkpoint") from None


def _prune(run_dir: Path, keep: int) -> None:
    for old in sorted(Path(run_dir, "checkpoints").glob("step_*.pt"))[:-keep]:
        old.unlink(missing_ok=True)


def _config_record(cfg, stage: str) -> dict:
    from care_core import __version__

    return {"stage": stage, "config": asdict(cfg), "package_version": __version__}


# where the data and the machine are, not what is trained: a run may be resumed elsewhere (a job started in the
# napari window continued on a cluster) with these changed; the others must equal the run's own config
RELOCATABLE = ("labels", "features", "splits", "init", "index", "table", "rna", "protein", "genes", "gene_vectors",
               "protein_vectors", "device", "num_workers", "sync_every", "profile_steps", "bucket_shapes", "compile")


def read_run_record(run_dir: Path) -> dict:
    """The run's ``config.json`` ({"stage", "config", "package_version"}), checked: one TrainingConfigError line
    for a folder without one, or with one that is damaged (not JSON, not a table, no config, an unknown stage)."""
    from care_core.train.config import STAGES

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise TrainingConfigError(f"{run_dir} holds no run to resume (no config.json); start it without --resume")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainingConfigError(f"{path} is unreadable ({exc}); it cannot be resumed") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise TrainingConfigError(f"{path} is not a run's config (a table with 'stage' and 'config'); it cannot be "
                                  "resumed: start a new run folder")
    if str(record.get("stage")) not in STAGES:
        raise TrainingConfigError(f"{path}: stage {record.get('stage')!r} is not one of {sorted(STAGES)}; it cannot be "
                                  "resumed: start a new run folder")
    return {**record, "stage": str(record["stage"])}


def _check_run_dir(run_dir: Path, record: dict, resume: bool) -> list[str]:
    """Refuse a run folder that does not fit; on resume, return the RELOCATABLE keys given new values."""
    if resume:
        old = read_run_record(run_dir)
        if old["stage"] != record["stage"]:
            raise TrainingConfigError(f"{run_dir} is a Stage {old['stage']} run, not Stage {record['stage']}; resume it "
                                      "with its own stage")
        diff = sorted(k for k in set(old["config"]) | set(record["config"]) if old["config"].get(k) != record["config"].get(k))
        fixed = [k for k in diff if k not in RELOCATABLE]
        if fixed:
            raise TrainingConfigError(
                f"{run_dir} was started with another config (differs in {fixed}); resume it with its own config.json "
                "or start a new run folder"
            )
        if diff:
            warnings.warn(f"resuming {run_dir} with new {', '.join(diff)} (data moved or another machine); the "
                          "run's config.json now records them", stacklevel=3)
        return diff
    elif (run_dir / "config.json").exists() or latest_checkpoint(run_dir) is not None:
        raise TrainingConfigError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another folder")
    return []


def resolve_config(config, run_dir: str | Path, *, stage: str | None = None, resume: bool = False):
    """(stage, config object) of ``config``: a StageIConfig / StageIIConfig / FinetuneConfig; a dict of config
    keys (with ``stage``) or a run record ``{"stage": ..., "config": {...}}`` as config.json holds; the path of a
    config file (with ``stage``); or None to resume ``run_dir`` with its own config. A resume takes its stage
    from the run folder, so ``stage`` may be left out."""
    from care_core.train.config import STAGES, config_from_dict, load_config

    kinds = {cls: name for name, cls in STAGES.items()}
    if type(config) in kinds:
        named = kinds[type(config)]
        if stage is not None and str(stage) != named:
            raise TrainingConfigError(f"a {type(config).__name__} is a stage {named!r} config, not stage {stage!r}")
        return named, config
    if isinstance(config, dict) and "config" in config and "stage" in config:  # a run record
        stage, config = (stage or config["stage"]), config["config"]
    if stage is None and resume:
        stage = read_run_record(run_dir)["stage"]
    if config is None:
        if not resume:
            raise TrainingConfigError("a new run needs a config (--config FILE)")
        record = read_run_record(run_dir)
        if stage is not None and str(stage) != record["stage"]:
            raise TrainingConfigError(f"{run_dir} is a Stage {record['stage']} run, not Stage {stage}")
        return record["stage"], config_from_dict(record["stage"], record["config"])
    if stage is None or str(stage) not in STAGES:
        raise TrainingConfigError(f"stage={stage!r}: give the stage of the config, one of {sorted(STAGES)} (--stage 1 or 2)")
    if isinstance(config, dict):
        return str(stage), config_from_dict(str(stage), config)
    if isinstance(config, (str, os.PathLike)):
        return str(stage), load_config(config, str(stage))
    raise TrainingConfigError(f"config={type(config).__name__}: give a config object, a dict or a config file path")


# ----------------------------------------------------------------------------------------------- the loop
def train(config, run_dir: str | Path, *, stage: str | None = None, resume: bool = False,
          overrides: dict | None = None) -> Iterator[TrainEvent]:
    """Run (or resume) a training job in ``run_dir``; yields ``TrainEvent``s and returns the final CARE checkpoint path.

    config: a config object (its type gives the stage), a dict of config keys or a config file path (with
    ``stage`` '1' | '2' | 'finetune'), a run record as config.json holds, or None with ``resume`` (the run's own
    config); see `resolve_config`. Everything that can be wrong with the config, the data or the run folder is a
    TrainingConfigError before the first step; a NaN/Inf loss stops with a TrainingError and leaves the last good
    checkpoint in place. A run that finished (or stopped early) is done: resuming it only writes the outputs it lacks.
    overrides: config keys replaced after the config is read (``care pretrain --profile-steps N``).
    """
    from care_core._atomic import check_output_dir, folder_lock

    run_dir = Path(run_dir)
    stage, cfg = resolve_config(config, run_dir, stage=stage, resume=resume)
    if overrides:
        unknown = sorted(set(overrides) - {f.name for f in fields(cfg)})
        if unknown:
            raise TrainingConfigError(f"unknown config key(s) {unknown} to override")
        cfg = replace(cfg, **overrides)
    cfg.check()
    rank, world = _dist()
    if cfg.batch_size % world:
        raise TrainingConfigError(f"batch_size={cfg.batch_size} must be a multiple of the {world} processes")
    device = _device(cfg.device)
    check_output_dir(run_dir)
    if rank != 0:  # the processes of one torchrun job share the folder; rank 0 holds its lock
        return (yield from _train(cfg, run_dir, stage, resume, rank, world, device))
    with folder_lock(run_dir):
        return (yield from _train(cfg, run_dir, stage, resume, rank, world, device))


def _train(cfg, run_dir: Path, stage: str, resume: bool, rank: int, world: int, device) -> Iterator[TrainEvent]:
    import torch

    from care_core._atomic import atomic_path
    from care_core.model import save_checkpoint
    from care_core.train.stages import build_stage

    record = _config_record(cfg, stage)
    moved = _check_run_dir(run_dir, record, resume)
    torch.manual_seed(cfg.seed)  # heads and encoders built by the stage: the same init on every process and run
    setup = build_stage(stage, cfg, run_dir)  # data, objective (model inside), export metadata
    n_samples = setup.n_samples
    if n_samples < cfg.batch_size:
        raise TrainingConfigError(f"{setup.source}: {n_samples} training samples, fewer than batch_size={cfg.batch_size}; lower batch_size")
    per_epoch = n_samples // cfg.batch_size
    total = cfg.epochs * per_epoch
    warmup = int(round(cfg.warmup_epochs * per_epoch))
    objective = setup.objective.to(device)
    student = objective.trainable()
    params = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2 and p.numel() > p.shape[-1]]  # weights; not biases, norms, tokens
    no_decay = [p for p in params if not (p.ndim >= 2 and p.numel() > p.shape[-1])]
    optim = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    opt = optim([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    _fuse_on_cuda(opt, device)

    start, finished = 0, False
    early = {"best": math.inf, "best_epoch": -1, "bad": 0, "metrics": {}}  # early stopping on val_loss
    if resume and (ckpt := latest_checkpoint(run_dir)) is not None:
        state = _load_state(ckpt)
        _restore(ckpt, state, ("step", "objective", "optimizer", "torch_rng"), {"objective": objective, "optimizer": opt})
        early = json.loads(state.get("early", json.dumps(early)))
        finished = bool(state.get("finished", False))  # trained to the end or stopped early: nothing left to train
        _fuse_on_cuda(opt, device)  # the checkpoint holds the choice of the machine that wrote it
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and state.get("cuda_rng"):
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        start = int(state["step"])
    if rank == 0 and (not resume or moved):
        with atomic_path(run_dir / "config.json") as tmp:
            tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    metrics_path = run_dir / "metrics.jsonl"
    if rank == 0 and resume and metrics_path.exists():  # drop the lines logged after the checkpoint we resume from
        lines = metrics_path.read_text().splitlines()
        kept = [ln for ln in lines if ln.strip() and _logged_step(ln) <= start]
        if kept != lines:
            with atomic_path(metrics_path) as tmp:
                tmp.write_text("".join(ln + "\n" for ln in kept))
    tb = _tensorboard(run_dir) if rank == 0 and not finished else None
    use_amp = device.type == "cuda" and cfg.amp

    saved = start  # the step of the newest checkpoint on disk
    watch = _FiniteWatch(world)
    from care_core.train.static_shapes import restore, speed_up

    speed_up(objective, bucket_shapes=cfg.bucket_shapes, compile_mode=cfg.compile)
    prof = None
    if cfg.profile_steps and rank == 0 and not finished:
        from care_core.train.profile import StepProfiler

        prof = StepProfiler(run_dir, cfg.profile_steps, device.type == "cuda")

    def phase(name: str):
        return prof.phase(name) if prof is not None else contextlib.nullcontext()

    def checkpoint(step: int, finished: bool = False, local_check: bool = False) -> Path:
        nonlocal saved
        watch.check(run_dir, local_check)  # never a checkpoint of weights a non-finite loss has touched
        path = run_dir / "checkpoints" / f"step_{step:08d}.pt"
        if rank == 0:
            _save_state(path, {
                "step": step,
                "objective": objective.state_dict(),
                "optimizer": opt.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "early": json.dumps(early),
                "finished": finished,
            })
            _prune(run_dir, cfg.keep_checkpoints)
        saved = step
        return path

    yield TrainEvent("start", start, total, start // per_epoch, metrics=dict(setup.counts))
    t0, done_at_t0 = time.perf_counter(), start
    objective.train()
    done = start
    batches = iter(_loader(setup, start, total, cfg, rank, world) if not finished else ())
    for step in range(start, total):
        with phase("data"):
            batch = next(batches, None)
        if batch is None:
            break
        if STOP.is_set():  # a SIGTERM: keep what was trained since the last checkpoint, then stop
            if done > saved:
                checkpoint(done, local_check=True)
            raise Stopped(f"stopped before step {step + 1} of {total}")
        epoch = step // per_epoch
        lr = cosine_schedule(step, total, cfg.lr, cfg.min_lr, warmup)
        wd = cosine_schedule(step, total, cfg.weight_decay, cfg.weight_decay_end)
        opt.param_groups[0]["lr"], opt.param_groups[1]["lr"] = lr, lr
        opt.param_groups[0]["weight_decay"] = wd
        sched = setup.schedule(step, total, per_epoch)
        with phase("forward"), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, logs = objective(batch, sched)
        watch.note(step, loss)
        if (step + 1 - start) % cfg.sync_every == 0:
            watch.check(run_dir)
        with phase("backward"):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _all_reduce_grads(params, world)
        with phase("optimizer"):
            if cfg.clip_grad > 0:
                logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            opt.step()
        if hasattr(objective, "update_teacher"):
            with phase("teacher_ema"):
                objective.update_teacher(sched["momentum"])
        if prof is not None:
            prof.step()
        done = step + 1
        rate = (done - done_at_t0) * cfg.batch_size / max(time.perf_counter() - t0, 1e-9)
        eta = (total - done) * cfg.batch_size / rate if rate > 0 else None
        if done % cfg.log_every == 0 or done == total or done == start + 1:
            logs = {k: float(v) for k, v in logs.items()}  # tensors are read here, on the logged steps only
            row = {"step": done, "epoch": epoch, "lr": lr, "weight_decay": wd, "samples_per_s": rate, **logs,
                   **{k: v for k, v in sched.items() if isinstance(v, float)}}
            if rank == 0:
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                if tb is not None:
                    for k, v in row.items():
                        tb.add_scalar(k, v, done)
            yield TrainEvent("step", done, total, epoch, logs, lr, rate, eta)
        stop = False
        if setup.validate is not None and done % per_epoch == 0:
            watch.check(run_dir)
            val = setup.validate(objective)
            if val["val_loss"] < early["best"]:
                early.update(best=val["val_loss"], best_epoch=epoch, bad=0, metrics=val)
                if rank == 0:
                    _save_state(run_dir / "best.pt", {"student": student.state_dict(), "epoch": epoch})
            else:
                early["bad"] += 1
            stop = epoch + 1 >= cfg.min_epochs and early["bad"] >= cfg.patience
            if rank == 0:
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps({"step": done, "epoch": epoch, **val, "best_epoch": early["best_epoch"]}) + "\n")
            yield TrainEvent("validate", done, total, epoch, {**val, "best_epoch": early["best_epoch"]}, lr, rate, eta)
        if stop:
            break
        if done % cfg.checkpoint_every == 0 and done < total:
            yield TrainEvent("checkpoint", done, total, epoch, path=str(checkpoint(done)))
    if prof is not None:
        prof.close()
    restore(objective)
    if not finished:
        checkpoint(done, finished=True)  # the run is done: a resume only writes the outputs below that it lacks
    out, head = run_dir / "care", run_dir / "head"
    if rank == 0:
        from care_core.model import read_checkpoint_meta

        sha = _output_sha(out, read_checkpoint_meta)
        if sha is None:
            if setup.validate is not None:  # the best-on-validation weights, not the last ones
                student.load_state_dict(_load_state(run_dir / "best.pt")["student"])
            model = objective.export_model()
            save_checkpoint(model, out, **setup.export_meta, extra={"stage": stage, "steps": done, "run": run_dir.name})
            sha = read_checkpoint_meta(out).tensors_sha256
        if setup.export_head is not None:
            if not all(head.with_suffix(x).is_file() for x in (".safetensors", ".json")):
                if setup.validate is not None:
                    student.load_state_dict(_load_state(run_dir / "best.pt")["student"])
                setup.export_head(objective, head, sha, {**early["metrics"], "best_epoch": early["best_epoch"]})
            yield TrainEvent("checkpoint", done, total, cfg.epochs, path=str(head.with_suffix(".safetensors")))
    if tb is not None:
        tb.close()
    yield TrainEvent("end", done, total, cfg.epochs, path=str(out) + ".safetensors")
    return out.with_suffix(".safetensors")


def _output_sha(out: Path, read_meta) -> str | None:
    """The tensors hash of the CARE checkpoint ``out`` when it is complete and readable, else None (to be written)."""
    if not all(out.with_suffix(x).is_file() for x in (".safetensors", ".json")):
        return None
    try:
        return read_meta(out).tensors_sha256
    except Exception:  # noqa: BLE001 — a damaged export is written again from the run's final state
        return None


def _logged_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # a line cut by a kill
        return 1 << 62


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def load_run(run_dir: str | Path):
    """(config, objective) of a run folder at its newest checkpoint, in eval mode: the trained heads and
    encoders beside CARE (e.g. Stage II's molecular encoder and projections, for retrieval)."""
    from care_core.train.config import config_from_dict
    from care_core.train.stages import build_stage

    run_dir = Path(run_dir)
    record = read_run_record(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise TrainingConfigError(f"{run_dir} has no training checkpoint yet")
    cfg = config_from_dict(record["stage"], record["config"])
    objective = build_stage(record["stage"], cfg, run_dir).objective
    _restore(ckpt, _load_state(ckpt), ("objective",), {"objective": objective})
    return cfg, objective.eval()
