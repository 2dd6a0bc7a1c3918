"""Molecular encoders of Stage II (CARE_METHOD.md §4): an RNA encoder over a gene panel and a protein encoder
over each sample's most abundant proteins. Each maps a sample's vector to one embedding, which a `ClipHead`
(care_core.train.clip) projects into the space shared with the slide embedding.

Tokens carry no position: a token is identity embedding + value embedding, so the encoders do not depend on
the order of the panel. Values are first standardised per gene / protein with statistics the encoder holds
as buffers (`standardise_from(training matrix)`; until then mean 0, std 1), so preprocessing travels with
the weights. Standardising matters: a gene's composition-driven change is small next to the spread of
levels across genes. On a 40-slide synthetic cohort (dim 32, 1 block, 128 sampled genes, 300 full-batch
steps, mean stain-texture features on the slide side), the RNA encoder without it did not fit its training
pairs (train top-1 0.05 / 0.20 over two seeds; held-out slide → RNA top-5 0.50 / 0.55 of 20, chance 0.25);
with it, train top-1 0.70 / 0.77 and held-out top-5 0.90 / 0.75. The value embedding of z is continuous,
not binned (bulk profiles are dense and their level carries the signal): scGPT's continuous value encoder
Linear(1 → d) · GELU · Linear(d → d) · LayerNorm. Identity tables start N(0, 1), or from a local file of
per-gene / per-protein vectors (scGPT gene embeddings, ESM-2 protein embeddings): see `load_named_vectors`.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from care_core.errors import TrainingConfigError

__all__ = ["RNAEncoder", "ProteinEncoder", "load_named_vectors"]


# ---------------------------------------------------------------- identity vectors from a file
def load_named_vectors(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """(names, vectors [N, d] float32) of a local per-gene or per-protein embedding file.

    `.npz`: arrays `names` [N] (strings) and `vectors` (or `embeddings`) [N, d], read without pickles.
    `.safetensors`: one 2-D tensor (`vectors` / `embeddings` when there are several) whose row names are
    the JSON list in the file's metadata key `names`, or come from a `vocab.json` beside it mapping
    name → row (scGPT's layout: save `encoder.embedding.weight` as safetensors next to its vocab.json).
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingConfigError(f"vector file {str(path)!r} does not exist; give a local .npz or .safetensors file")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                key = next((k for k in ("vectors", "embeddings") if k in z), None)
                if key is None or "names" not in z:
                    raise TrainingConfigError(f"{str(path)!r} holds {sorted(z.files)}; it needs arrays 'names' [N] and "
                                              "'vectors' [N, d]")
                names, vectors = [str(n) for n in z["names"]], np.asarray(z[key], np.float32)
        elif path.suffix == ".safetensors":
            names, vectors = _safetensors_vectors(path)
        else:
            raise TrainingConfigError(f"{str(path)!r}: unknown vector file type; use .npz or .safetensors")
    except TrainingConfigError:
        raise
    except Exception as exc:  # a corrupt file: the reader's own error
        raise TrainingConfigError(f"cannot read vector file {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    if vectors.ndim != 2 or len(names) != len(vectors):
        raise TrainingConfigError(f"{str(path)!r}: {len(names)} names for vectors of shape {vectors.shape}; "
                                  "need one name per row of an [N, d] array")
    return names, vectors


def _safetensors_vectors(path: Path) -> tuple[list[str], np.ndarray]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        keys = list(f.keys())
        key = next((k for k in ("vectors", "embeddings") if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise TrainingConfigError(f"{str(path)!r} holds tensors {keys}; name the [N, d] one 'vectors'")
        vectors = np.asarray(f.get_tensor(key), np.float32)
        meta = f.metadata() or {}
    if "names" in meta:
        return [str(n) for n in json.loads(meta["names"])], vectors
    vocab_path = path.with_name("vocab.json")
    if not vocab_path.is_file():
        raise TrainingConfigError(f"{str(path)!r} has no row names: put them in its metadata key 'names' (a JSON "
                                  "list) or a vocab.json beside it ({name: row})")
    vocab = json.loads(vocab_path.read_text())
    names = [""] * len(vectors)
    for name, row in vocab.items():
        if 0 <= int(row) < len(vectors):
            names[int(row)] = str(name)
    return names, vectors


def _fit_dim(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Centre `vectors` [M, d], map them to `dim` columns (PCA when d > dim, zero-padding when d < dim) and
    scale them to unit standard deviation, the scale of the N(0, 1) identity start."""
    v = vectors.astype(np.float64) - vectors.mean(axis=0, keepdims=True)
    if v.shape[1] > dim:
        _, _, vt = np.linalg.svd(v, full_matrices=False)
        v = v @ vt[:dim].T
    if v.shape[1] < dim:
        v = np.pad(v, ((0, 0), (0, dim - v.shape[1])))
    std = v.std()
    return (v / std if std > 0 else v).astype(np.float32)


# ---------------------------------------------------------------- building blocks
class _ValueEmbedding(nn.Module):
    """Continuous value embedding (scGPT): [..., 1] value → [..., dim]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2, self.norm = nn.Linear(1, dim), nn.Linear(dim, dim), nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.fc2(F.gelu(self.fc1(x))))


class _TokenEncoder(nn.Module):
    """Identity table + value embedding + `depth` pre-norm transformer blocks + a final LayerNorm."""

    def __init__(self, names: Sequence[str], kind: str, dim: int, depth: int, heads: int, mlp_ratio: float,
                 init_vectors: str | os.PathLike | None) -> None:
        super().__init__()
        names = [str(n) for n in names]
        if not names:
            raise ValueError(f"the {kind} panel is empty; give at least one name")
        if len(set(names)) < len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"the {kind} panel lists {dup!r} twice; names must be unique")
        if dim % heads:
            raise ValueError(f"dim={dim} must be a multiple of heads={heads}")
        self.names, self.kind = names, kind
        self.dim, self.depth, self.heads, self.mlp_ratio = int(dim), int(depth), int(heads), float(mlp_ratio)
        self.identity = nn.Embedding(len(names), dim)
        nn.init.normal_(self.identity.weight, std=1.0)
        self.value = _ValueEmbedding(dim)
        self.register_buffer("value_mean", torch.zeros(len(names)))
        self.register_buffer("value_std", torch.ones(len(names)))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, int(dim * mlp_ratio), dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        if init_vectors is not None:
            self.init_identity(init_vectors)

    @torch.no_grad()
    def init_identity(self, path: str | os.PathLike) -> int:
        """Start the identity rows of the panel names found in the vector file at `path` from their vectors
        (mapped to `dim` by `_fit_dim`); the others keep their random start (a warning counts them).
        Returns how many rows were set."""
        file_names, vectors = load_named_vectors(path)
        row = {n: i for i, n in enumerate(file_names) if n}
        matched = [(j, row[n]) for j, n in enumerate(self.names) if n in row]
        if not matched:
            raise TrainingConfigError(f"vector file {str(path)!r} has none of the {len(self.names)} {self.kind} names "
                                      f"(e.g. {self.names[0]!r}; file: {file_names[:3]}); use the same symbols")
        if len(matched) < len(self.names):
            warnings.warn(f"{len(self.names) - len(matched)} of {len(self.names)} {self.kind} names have no vector in "
                          f"{str(path)!r}; they keep a random start", stacklevel=3)
        ours, theirs = (list(t) for t in zip(*matched))
        fitted = torch.from_numpy(_fit_dim(vectors[theirs], self.dim))
        self.identity.weight[ours] = fitted.to(self.identity.weight)
        return len(matched)

    @torch.no_grad()
    def standardise_from(self, values: np.ndarray | Tensor) -> None:
        """Set the per-name mean and standard deviation (floored at 0.01) from a training matrix [N, P]
        aligned to the panel (e.g. the stacked `MolecularData.rna` vectors of the training samples)."""
        v = torch.as_tensor(np.asarray(values, np.float64) if not torch.is_tensor(values) else values,
                            dtype=torch.float64)
        if v.ndim != 2 or v.shape[1] != len(self.names) or len(v) < 2:
            raise ValueError(f"values {tuple(v.shape)} must be [N >= 2, {len(self.names)}] aligned to the panel")
        self.value_mean.copy_(v.mean(0).to(self.value_mean))
        self.value_std.copy_(v.std(0).clamp_min(0.01).to(self.value_std))

    def encode_tokens(self, index: Tensor | None, values: Tensor) -> Tensor:
        """[B, T, dim] contextual tokens of names `index` [B, T] (None: the whole panel) with raw `values` [B, T]."""
        if index is None:
            ident, z = self.identity.weight[None], (values - self.value_mean) / self.value_std
        else:
            ident, z = self.identity(index), (values - self.value_mean[index]) / self.value_std[index]
        h = ident + self.value(z.unsqueeze(-1).to(ident.dtype))
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    @property
    def config(self) -> dict:
        """Constructor arguments that rebuild this architecture (JSON-able; the identity file is not needed)."""
        return {"dim": self.dim, "depth": self.depth, "heads": self.heads, "mlp_ratio": self.mlp_ratio}

    def _check(self, expr: Tensor) -> None:
        if expr.ndim != 2 or expr.shape[1] != len(self.names):
            raise ValueError(f"expr {tuple(expr.shape)} must be [B, {len(self.names)}] ({self.kind} values aligned to "
                             "the encoder's panel)")


# ---------------------------------------------------------------- the encoders
class RNAEncoder(_TokenEncoder):
    """RNA encoder: one token per panel gene, a transformer over them, the mean of the tokens.

    genes: the panel (e.g. `read_gene_panel()`, or `MolecularData.genes`). `forward(expr [B, G]) -> [B, dim]`
    takes log1p expression aligned to `genes` (`load_molecular` applies log1p; this module does not) and
    standardises it per gene with the statistics of `standardise_from` (call it once with the training matrix).
    Attention is over all G genes: cost grows as G² (about 1,300 genes in the shipped panel).
    sample_genes: in training mode, each forward encodes a random subset of this many genes (one subset for
    the batch, drawn from torch's global generator), as scGPT trains on gene subsets; in eval mode, and
    when None, every gene. init_vectors: a local per-gene vector file (scGPT), see `load_named_vectors`.
    """

    def __init__(self, genes: Sequence[str], *, dim: int = 256, depth: int = 2, heads: int = 4, mlp_ratio: float = 2.0,
                 sample_genes: int | None = None, init_vectors: str | os.PathLike | None = None) -> None:
        if sample_genes is not None and sample_genes < 1:
            raise ValueError(f"sample_genes={sample_genes} must be at least 1 (or None for every gene)")
        super().__init__(genes, "gene", dim, depth, heads, mlp_ratio, init_vectors)
        self.sample_genes = None if sample_genes is None else int(sample_genes)

    @property
    def genes(self) -> list[str]:
        return self.names

    @property
    def config(self) -> dict:
        return {"genes": list(self.names), "sample_genes": self.sample_genes, **super().config}

    def forward(self, expr: Tensor) -> Tensor:
        self._check(expr)
        if self.training and self.sample_genes is not None and self.sample_genes < expr.shape[1]:
            keep = torch.randperm(expr.shape[1])[: self.sample_genes].sort().values.to(expr.device)
            return self.encode_tokens(keep.expand(len(expr), -1), expr[:, keep]).mean(dim=1)
        return self.encode_tokens(None, expr).mean(dim=1)


class ProteinEncoder(_TokenEncoder):
    """Protein encoder: the `top_k` most abundant proteins of each sample as tokens, a transformer over them,
    and expression-weighted gated pooling.

    `forward(expr [B, P]) -> [B, dim]`, values aligned to `proteins` on a log or z-score scale. The top k are
    chosen on these values; their tokens see them standardised per protein (`standardise_from`).
    Pooling weights are α = softmax(a + v) over a sample's top-k tokens: a is the gated-attention score of a
    token (w · (tanh(V h) ⊙ sigmoid(U h)), Ilse et al. 2018) and v its value, so α ∝ exp(a)·exp(v): abundant
    proteins weigh more and the gate learns which matter. Proteins outside a sample's top k do not affect
    its embedding. init_vectors: a local per-protein vector file (ESM-2), see `load_named_vectors`.
    """

    def __init__(self, proteins: Sequence[str], *, dim: int = 256, depth: int = 2, heads: int = 4, top_k: int = 10,
                 mlp_ratio: float = 2.0, init_vectors: str | os.PathLike | None = None) -> None:
        if top_k < 1:
            raise ValueError(f"top_k={top_k} must be at least 1")
        super().__init__(proteins, "protein", dim, depth, heads, mlp_ratio, init_vectors)
        self.top_k = int(top_k)
        self.gate_v, self.gate_u = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.gate_w = nn.Linear(dim, 1)

    @property
    def proteins(self) -> list[str]:
        return self.names

    @property
    def config(self) -> dict:
        return {"proteins": list(self.names), "top_k": self.top_k, **super().config}

    def forward(self, expr: Tensor) -> Tensor:
        self._check(expr)
        values, index = expr.topk(min(self.top_k, expr.shape[1]), dim=1)
        h = self.encode_tokens(index, values)
        score = self.gate_w(torch.tanh(self.gate_v(h)) * torch.sigmoid(self.gate_u(h))).squeeze(-1)  # [B, k]
        alpha = torch.softmax(score + values.to(score.dtype), dim=1)
        return (alpha.unsqueeze(-1) * h).sum(dim=1)
