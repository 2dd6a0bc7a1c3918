"""Training configs: one dataclass per stage, loadable from TOML / YAML / JSON, unknown keys refused.

Defaults carry a comment each; nested sections (``model``, ``views``, ``subwsi``) are plain tables in
the file. A run writes its resolved config (``config.json``) next to its outputs, and a resume refuses a
folder whose config differs.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from care_core.errors import TrainingConfigError

__all__ = ["StageIConfig", "StageIIConfig", "FinetuneConfig", "load_config", "read_config_file", "config_from_dict", "STAGES"]


@dataclass
class _Common:
    """Fields every stage shares: optimisation, schedules, checkpoints, hardware."""

    seed: int = 0  # seeds the model init, the data order and every view
    batch_size: int = 32  # global batch (samples per optimiser step, summed over processes)
    epochs: int = 100  # passes over the data; steps = epochs * (samples // batch_size)
    lr: float = 5e-4  # peak learning rate (after warm-up)
    min_lr: float = 1e-6  # end of the cosine decay
    warmup_epochs: float = 10.0  # linear warm-up of the learning rate
    weight_decay: float = 0.04  # start of the cosine weight-decay schedule
    weight_decay_end: float = 0.4  # end of the cosine weight-decay schedule
    clip_grad: float = 3.0  # max gradient norm (0 = off)
    checkpoint_every: int = 500  # steps between training checkpoints (one is always written at the end)
    keep_checkpoints: int = 2  # training checkpoints kept on disk (the newest ones)
    log_every: int = 10  # steps between metric lines
    num_workers: int = 0  # DataLoader worker processes (0: load in the training process)
    optimizer: str = "adamw"  # adamw (decoupled weight decay) | adam (L2 penalty, as the paper's fine-tuning)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on CPU)
    model: dict = field(default_factory=dict)  # CARE config overrides (input_dim comes from the features)
    init: str = ""  # CARE checkpoint to start from ('' = random init with `seed`)
    sync_every: int = 1  # steps between reads of the loss on the host (the non-finite check); > 1 lets a GPU run
    # ahead of the host, and a non-finite loss is still caught before any checkpoint is written
    profile_steps: int = 0  # record this many steps with torch.profiler into <run>/profile/ (0 = off)
    bucket_shapes: bool = False  # pad CARE's transformer chunks to a few static shapes (for compile / CUDA graphs)
    compile: str = ""  # torch.compile CARE's transformers: '' (eager) | default | reduce-overhead | max-autotune |
    # max-autotune-no-cudagraphs | aot_eager (traced, no code generated: a check of the compiled path)

    def check(self) -> None:
        """Refuse, with one line naming the key and its value, anything that would fail or mislead mid-run."""
        check_types(self)
        _at_least(self, 1, "batch_size", "epochs", "checkpoint_every", "keep_checkpoints", "log_every")
        if not _DEVICE.fullmatch(self.device):
            raise TrainingConfigError(f"device={self.device!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        check_model_overrides(self.model)
        if not 0 < self.lr or self.min_lr < 0 or self.min_lr > self.lr:
            raise TrainingConfigError(f"lr={self.lr}, min_lr={self.min_lr}: need 0 <= min_lr <= lr and lr > 0")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise TrainingConfigError(f"warmup_epochs={self.warmup_epochs} must lie in [0, epochs={self.epochs}]")
        if self.num_workers < 0 or self.clip_grad < 0:
            raise TrainingConfigError("num_workers and clip_grad must be >= 0")
        if self.optimizer not in ("adamw", "adam"):
            raise TrainingConfigError(f"optimizer={self.optimizer!r} must be 'adamw' or 'adam'")
        _at_least(self, 1, "sync_every")
        _at_least(self, 0, "profile_steps")
        from care_core.train.static_shapes import COMPILE_MODES

        if self.compile not in COMPILE_MODES:
            raise TrainingConfigError(f"compile={self.compile!r} must be one of {', '.join(map(repr, COMPILE_MODES))}")


@dataclass
class StageIConfig(_Common):
    """Stage I: iBOT on feature grids (CARE_METHOD.md §3)."""

    features: str = ""  # folder of patch-feature .h5 files (or a .txt listing one per line)
    index: str = ""  # sub-WSI index file; built once from `features` when missing ('' = <run>/subwsi_index.h5)
    subwsi: dict = field(default_factory=dict)  # SubWSIParams overrides (max_patches 360, eps, ...)
    views: dict = field(default_factory=dict)  # ViewConfig overrides (crop sizes in grid cells, augmentations)
    out_dim: int = 4096  # prototypes of the slide-embedding (DINO) head
    patch_out_dim: int = 4096  # prototypes of the patch-token (masked-token) head
    head_hidden: int = 2048  # hidden width of both projection heads
    head_bottleneck: int = 256  # bottleneck before the prototypes
    student_temp: float = 0.1  # sharpness of the student's softmax
    teacher_temp: float = 0.07  # teacher softmax temperature after warm-up
    warmup_teacher_temp: float = 0.04  # ... and at step 0
    warmup_teacher_temp_epochs: float = 30.0  # linear teacher-temperature warm-up
    center_momentum: float = 0.9  # EMA of the teacher-output centers
    momentum_teacher: float = 0.996  # teacher EMA momentum at step 0, cosine to 1 at the end
    lambda_ibot: float = 1.0  # weight of the masked-token loss against the cross-view loss

    def check(self) -> None:
        super().check()
        _at_least(self, 1, "out_dim", "patch_out_dim", "head_hidden", "head_bottleneck")
        if not (self.features or self.index):
            raise TrainingConfigError("Stage I needs `features` (a folder of .h5 files) or an existing `index`")
        if not 0 <= self.center_momentum < 1 or not 0 <= self.momentum_teacher <= 1:
            raise TrainingConfigError("center_momentum must lie in [0, 1) and momentum_teacher in [0, 1]")
        if min(self.student_temp, self.teacher_temp, self.warmup_teacher_temp) <= 0:
            raise TrainingConfigError("temperatures must be > 0")


@dataclass
class StageIIConfig(_Common):
    """Stage II: alignment of slide embeddings to RNA or protein profiles (CARE_METHOD.md §4).

    The curriculum is two runs: ``modality = "rna"`` from the Stage I checkpoint, then
    ``modality = "protein"`` from the RNA run's checkpoint.
    """

    table: str = ""  # CSV: slide, features (.h5 path, relative to the CSV), sample_id
    rna: str = ""  # expression matrix (samples x genes): CSV, Parquet or .h5ad
    protein: str = ""  # protein matrix (samples x proteins): CSV, Parquet or .h5ad
    genes: str = ""  # gene panel: a gene list (.txt) or gene sets (.gmt); '' = the shipped Hallmark panel
    modality: str = "rna"  # rna | protein
    max_patches: int = 4096  # a slide with more patches is cut to a compact crop of this many per step
    mol_dim: int = 256  # width of the RNA / protein encoder
    mol_depth: int = 2  # transformer blocks of the molecular encoder
    mol_heads: int = 4
    proj_dim: int = 256  # shared space of the CLIP heads
    init_temperature: float = 0.07  # InfoNCE temperature at step 0 (learnable, clamped)
    gene_vectors: str = ""  # optional per-gene identity vectors (.safetensors / .npz with names)
    protein_vectors: str = ""  # optional per-protein identity vectors
    top_proteins: int = 10  # proteins per sample (the most abundant)
    sample_genes: int = 256  # genes encoded per training step, a random subset (0 = all; evaluation uses all)
    rna_log1p: bool = True  # RNA values are counts / TPM and become log1p(x); false for a matrix already on a log scale
    lr: float = 1e-4
    warmup_epochs: float = 2.0
    weight_decay: float = 0.05
    weight_decay_end: float = 0.05

    def check(self) -> None:
        super().check()
        _at_least(self, 1, "max_patches", "mol_dim", "mol_depth", "mol_heads", "proj_dim", "top_proteins")
        _at_least(self, 0, "sample_genes")
        if self.mol_dim % self.mol_heads:
            raise TrainingConfigError(f"mol_dim={self.mol_dim} must be divisible by mol_heads={self.mol_heads}")
        if not self.init_temperature > 0:
            raise TrainingConfigError(f"init_temperature={self.init_temperature} must be > 0")
        if self.modality not in ("rna", "protein"):
            raise TrainingConfigError(f"modality={self.modality!r} must be 'rna' or 'protein'")
        if not self.table:
            raise TrainingConfigError("Stage II needs `table` (CSV: slide, features, sample_id)")
        if not getattr(self, self.modality):
            raise TrainingConfigError(f"modality={self.modality!r} needs the `{self.modality}` matrix file")


@dataclass
class FinetuneConfig(_Common):
    """Fine-tuning CARE + a head on slide labels (CARE_METHOD.md §5): one fold of a split.

    Defaults are the paper's protocol: Adam lr 2e-5, weight decay 1e-5, batch 1, at most 200 epochs, early
    stopping on the validation loss (patience 15, not before epoch 20), class-weighted sampling, loss
    CE + 0.1 L_RSL, the best-on-validation weights kept. With time/event labels the loss is the negative Cox
    partial log-likelihood over each batch: a batch of 1 has no pairs, so survival needs batch_size >= 2 (16 is
    a good start; the fine-tuning refuses less).
    """

    labels: str = ""  # labels table (CSV / Parquet): slide, label[, patient] or slide, time, event[, patient]
    features: str = ""  # folder of .h5 feature files named <slide>.h5 (or a .txt list)
    splits: str = ""  # folder of split CSVs (care evaluate writes them); '' = made by patient with `seed`
    fold: int = 0  # which fold of the splits to train
    input: str = "slide"  # head input: slide (slide embedding) | roi (ROI feature)
    max_patches: int = 0  # crop larger slides to this many patches per step (0 = whole slides)
    patience: int = 15  # epochs without a better validation loss before stopping ...
    min_epochs: int = 20  # ... but never before this epoch
    batch_size: int = 1
    epochs: int = 200
    lr: float = 2e-5
    min_lr: float = 2e-5  # constant learning rate
    warmup_epochs: float = 0.0
    weight_decay: float = 1e-5
    weight_decay_end: float = 1e-5
    optimizer: str = "adam"
    checkpoint_every: int = 1000

    def check(self) -> None:
        super().check()
        if not self.labels or not self.features:
            raise TrainingConfigError("fine-tuning needs `labels` (a labels table) and `features` (a folder of .h5 files)")
        if self.input not in ("slide", "roi"):
            raise TrainingConfigError(f"input={self.input!r} must be 'slide' or 'roi'")
        _at_least(self, 1, "patience")
        _at_least(self, 0, "min_epochs", "fold", "max_patches")


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_show = reprlib.Repr()  # values in messages: a hostile value (a huge or deeply nested table) is cut short
_show.maxstring = _show.maxother = 60


def _at_least(cfg, low: int, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < low:
            raise TrainingConfigError(f"{name}={getattr(cfg, name)} must be an integer >= {low}")


def _typed(name: str, value, default):
    """``value`` of a field whose default is ``default``, as that type (an integral float becomes an int);
    TrainingConfigError naming the key and the value otherwise."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TrainingConfigError(f"{name}={_show.repr(value)} must be true or false")
    elif isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TrainingConfigError(f"{name}={_show.repr(value)} must be a number")
        if not math.isfinite(value):
            raise TrainingConfigError(f"{name}={value} must be a finite number")
        if isinstance(default, int):
            if value != int(value):
                raise TrainingConfigError(f"{name}={value} must be a whole number")
            return int(value)
        return float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise TrainingConfigError(f"{name}={_show.repr(value)} must be a string")
    elif isinstance(default, dict) and not isinstance(value, dict):
        raise TrainingConfigError(f"{name}={_show.repr(value)} must be a table of keys")
    return value


def check_types(cfg, prefix: str = "") -> None:
    """Give each field of the dataclass ``cfg`` its default's type, in place (``epochs = 2.5``, ``"abc"``, NaN
    refused with one line)."""
    for f in fields(cfg):
        default = f.default if f.default is not MISSING else f.default_factory()
        object.__setattr__(cfg, f.name, _typed(prefix + f.name, getattr(cfg, f.name), default))


def check_model_overrides(model: dict) -> None:
    """The ``model`` table as a CARE config: unknown keys, wrong types and impossible values refused before the run."""
    from care_core.model import CAREConfig

    known = {f.name: f.default for f in fields(CAREConfig)}
    unknown = sorted(set(model) - set(known))
    if unknown:
        raise TrainingConfigError(f"unknown model key(s) {_show.repr(unknown)}; valid keys: {sorted(known)}")
    typed = {k: _typed(f"model.{k}", v, known[k]) for k, v in model.items()}
    try:
        CAREConfig(**{**typed, "input_dim": 1})  # input_dim comes from the features
    except ValueError as exc:
        raise TrainingConfigError(f"model: {exc}") from None
    model.update(typed)


STAGES = {"1": StageIConfig, "2": StageIIConfig, "finetune": FinetuneConfig}


def config_from_dict(stage: str, values: dict) -> _Common:
    """Build the config of ``stage`` ('1' | '2'); unknown keys are a TrainingConfigError listing the valid ones."""
    cls = STAGES[str(stage)]
    name = {"1": "Stage 1", "2": "Stage 2", "finetune": "fine-tuning"}[str(stage)]
    if not isinstance(values, dict):
        raise TrainingConfigError(f"a {name} config must be a table of keys, got {type(values).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TrainingConfigError(f"unknown {name} config key(s) {unknown}; valid keys: {sorted(known)}")
    try:
        cfg = cls(**values)
    except TypeError as exc:
        raise TrainingConfigError(f"{name} config: {exc}") from exc
    cfg.check()
    return cfg


def _parse_yaml(text: str, path: Path) -> object:
    """YAML without aliases: an alias (``*name``) can nest a table in itself until it fills the memory (the
    billion laughs), so it is refused, with its line, before anything is built."""
    import yaml

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise TrainingConfigError(f"{path}, line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                                      "accepted in a config; write the values out")
    return yaml.safe_load(text)


def _syntax_error(path: Path, kind: str, exc: Exception) -> TrainingConfigError:
    """One line: the file, the line (where the parser says it) and the parser's reason."""
    mark = getattr(exc, "problem_mark", None)  # YAML
    if mark is not None:
        reason = " ".join(str(getattr(exc, "problem", None) or exc).split())
        return TrainingConfigError(f"{path}, line {mark.line + 1}: not valid {kind}: {reason}")
    return TrainingConfigError(f"{path} is not valid {kind}: {' '.join(str(exc).split())}")


def read_config_file(path: str | Path) -> dict:
    """The table of a TOML (``.toml``), YAML (``.yaml``/``.yml``) or JSON config file (the suffix in any case)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TrainingConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TrainingConfigError(f"{path}, line {line}: byte 0x{raw[exc.start]:02x} is not UTF-8; save the config "
                                  "as UTF-8") from None
    suffix = path.suffix.lower()
    kind = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML"}.get(suffix, "JSON")
    try:
        if kind == "TOML":
            import tomllib

            values = tomllib.loads(text)
        elif kind == "YAML":
            values = _parse_yaml(text, path)
        else:
            values = json.loads(text)
    except TrainingConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 — every parser's error becomes one line naming the file
        raise _syntax_error(path, kind, exc) from None
    if values is None and kind == "YAML":
        values = {}
    if not isinstance(values, dict):
        raise TrainingConfigError(f"{path}: a config must be a table of keys, got {type(values).__name__}")
    return values


def load_config(path: str | Path, stage: str, overrides: dict | None = None) -> _Common:
    """Read a TOML (``.toml``), YAML (``.yaml``/``.yml``) or JSON config file for ``stage``."""
    values = read_config_file(path)
    try:
        return config_from_dict(stage, {**values, **(overrides or {})})
    except TrainingConfigError as exc:
        raise TrainingConfigError(f"{path}: {exc}") from exc
