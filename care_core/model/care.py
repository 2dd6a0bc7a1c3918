"""CARE: Cross-modal Adaptive Region Encoder (slide level).

Zhang et al., "CARE", arXiv 2602.21637 (CVPR 2026). The reference implemented here is
``CARE_METHOD.md`` §2 of this project; its equations are named in comments where they are computed:

    Eq. 1  sub-regions: k×k squares of the patch grid and their anchors s_i
    Eq. 2  descriptors: f^Q = W F, sub-region transformer -> g^CLS, f^R; learnable query -> g^Q
    Eq. 3  soft inclusion: d_ji = ||t_j - s_i||, mu_ji = 1 - d_ji / max_j' d_j'i  (matrix C)
    Eq. 4  ARG: top-3 candidates by C, rho = mean of four softmaxed cosines, w = rho * mu, A(j) = argmax w
    Eq. 5  RSL: E = mean_j sum_i w~_ji r_j(i),  L_RSL = (E - E*)^2
    Eq. 6  ARSA: a [CLS] transformer per adaptive region -> g^AR
    Eq. 7  SPF: beta = softmax(w^T (tanh(V g) * sigmoid(U g))), alpha = coverage,
           pi = lambda alpha + (1 - lambda) beta, z = sum pi g^AR, ROI = argmax pi

Layout of the computation (all vectorised; memory linear in N):
- geometry (Eq. 1, 3) is integer-grid work in numpy, in ``subregions.py`` (no gradient flows through
  positions); the torch building blocks are in ``layers.py``; this file holds the model.
- a batch of slides is packed: patches of all slides are concatenated (canonical order: slide,
  square, row, col), sub-regions and regions get batch-global ids, transformers run over padded
  chunks of whole sub-regions / regions with key-padding masks, per-slide reductions are segment ops.

Our choices where the paper is silent (each behind a config field): centre anchors, depth 2 for both
transformers, the straight-through scale w / stopgrad(w) on tokens entering ARSA, ARSA consumes f^R,
candidates are ranked for the RSL by Euclidean distance to their anchor (ties: higher inclusion first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn

from care_core.errors import FeatureMismatchError
from care_core.model.layers import ClsEncoder, GatedAttention, QueryPool
from care_core.model.subregions import ANCHORS, SubregionGeometry, subregion_geometry

__all__ = [
    "CAREConfig",
    "CARE",
    "CAREOutput",
    "arg_scores",
    "rsl_expected_rank",
]

# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class CAREConfig:
    """Hyper-parameters of CARE. Defaults are the released configuration."""

    input_dim: int = 768  # patch-feature dimension D (CONCH v1.5)
    embed_dim: int = 512  # width of every token and of the slide embedding
    heads: int = 8  # attention heads in both transformers and the query pool
    k: int = 8  # sub-region side, in patches (k×k squares)
    subregion_depth: int = 2  # blocks of the sub-region transformer (our choice)
    arsa_depth: int = 2  # blocks of the adaptive-region transformer (our choice)
    mlp_ratio: float = 4.0  # MLP hidden width / embed_dim
    anchor: str = "center"  # sub-region anchor: "center" (our choice) or "corner" (paper)
    lambda_spf: float = 0.5  # pi = lambda * alpha + (1 - lambda) * beta
    spf_dim: int = 256  # hidden width of the gated attention (V, U)
    spf_init: str = "xavier"  # init of V, U, w: "xavier" (gated-attention MIL's; our choice) or "trunc_normal" (std
    # 0.02 like every other layer: attention logits start ~0.02 wide and Adam at a small lr widens them by ~lr per step)
    rsl_target: float = 0.5  # E*, target expected candidate rank
    lambda_rsl: float = 0.1  # weight of L_RSL in training losses
    n_candidates: int = 3  # candidate sub-regions per patch (|I_j|)
    straight_through: bool = True  # tokens entering ARSA scaled by w / stopgrad(w) (our choice)
    dropout: float = 0.0  # dropout in attention and MLPs
    fixed_regions: bool = False  # ablation: each patch stays in its own square (no ARG)
    use_gcls: bool = True  # ablation: use g^CLS in the ARG similarities
    use_gq: bool = True  # ablation: use g^Q in the ARG similarities
    use_fr: bool = True  # ablation: False uses f^Q in place of f^R in the ARG similarities
    input_norm: bool = False  # standardise each feature channel with stored cohort mean / std (our choice, for
    # encoders whose channels differ in scale, e.g. stain-texture; the trainer fills the statistics)
    chunk_tokens: int = 2048  # slots per transformer chunk (bounds inference memory; larger is faster on a GPU)

    def __post_init__(self) -> None:
        if self.anchor not in ANCHORS:
            raise ValueError(f"anchor={self.anchor!r} is not one of {ANCHORS}")
        if self.spf_init not in ("xavier", "trunc_normal"):
            raise ValueError(f"spf_init={self.spf_init!r} is not one of ('xavier', 'trunc_normal')")
        if self.embed_dim % self.heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by heads={self.heads}")
        for name in ("input_dim", "embed_dim", "heads", "k", "n_candidates", "chunk_tokens", "spf_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if not 0.0 <= self.lambda_spf <= 1.0:
            raise ValueError(f"lambda_spf={self.lambda_spf} must lie in [0, 1]")
        if not (self.fixed_regions or self.use_gcls or self.use_gq):
            raise ValueError("use_gcls=False and use_gq=False leave ARG without descriptors; keep one")

    @classmethod
    def from_dict(cls, values: dict) -> CAREConfig:
        """Build a config from a dict; an unknown key is an error that lists the valid ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown CARE config key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Pure scoring functions: Eq. 4 and Eq. 5
# --------------------------------------------------------------------------------------------------


def arg_scores(
    f_q: torch.Tensor,
    f_r: torch.Tensor,
    g_q: torch.Tensor | None,
    g_cls: torch.Tensor | None,
    valid: torch.Tensor,
) -> torch.Tensor:
    """Eq. 4: rho [N, c] = mean of the softmaxes over candidates of the available cosine similarities.

    f_q, f_r: [N, E] patch tokens; g_q, g_cls: [N, c, E] descriptors of each patch's candidates (None
    drops the two similarities that use it); valid: [N, c] bool (invalid candidates get rho = 0).
    """
    if g_q is None and g_cls is None:
        raise ValueError("arg_scores needs g_q or g_cls")
    sims = []
    with torch.autocast(f_q.device.type, enabled=False):  # cosines and softmax in float32
        for g in (g_q, g_cls):
            if g is None:
                continue
            g_hat = _safe_normalize(g.float())
            for f in (f_q, f_r):
                sims.append(torch.einsum("ne,nce->nc", _safe_normalize(f.float()), g_hat))
        neg = torch.finfo(torch.float32).min
        soft = [torch.softmax(s.masked_fill(~valid, neg), dim=1) for s in sims]
        return torch.stack(soft, 0).mean(0) * valid


def _safe_normalize(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """x / sqrt(||x||^2 + eps^2): the unit vector for tokens of norm >> eps (f^Q norms are ~0.1-10), and
    a bounded gradient (<= 1/eps) at 0.

    ``F.normalize`` clamps the norm at 1e-12, so a zero token (e.g. an all-zero mask token) gets a
    gradient of ~1e12 through every cosine it enters."""
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + eps * eps)


def rsl_expected_rank(w: torch.Tensor, rank: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 5: per patch sum_i w~_ji r_j(i), with w~ = w normalised over the valid candidates. [N]."""
    w = w.float() * valid
    w_tilde = w / w.sum(1, keepdim=True).clamp_min(1e-12)
    return (w_tilde * rank.to(w.dtype)).sum(1)


def _segment_softmax(scores: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Softmax of ``scores`` within each segment id (float32)."""
    s = scores.float()
    seg_max = torch.full((n_segments,), -torch.inf, device=s.device).scatter_reduce(0, segment, s, "amax")
    e = torch.exp(s - seg_max[segment])
    return e / torch.zeros(n_segments, device=s.device).index_add(0, segment, e)[segment]


def _straight_through_one(w: torch.Tensor) -> torch.Tensor:
    """w / stopgrad(w): exactly 1 in value (x / x == 1 in IEEE floats), gradient 1/w. Where w == 0 the
    ratio is undefined, so 1 + w - stopgrad(w) is used there: still exactly 1, gradient 1."""
    w_d = w.detach()
    return torch.where(w_d > 0, w / torch.where(w_d > 0, w_d, 1.0), 1.0 + (w - w_d))


def _size_sorted_chunks(sizes: torch.Tensor, budget: int) -> list[torch.Tensor]:
    """Group ids in chunks for padded transformer passes: groups sorted by size (largest first), each
    chunk as many groups as fit ``budget`` slots at the chunk's widest group (+1 for [CLS]). Sorting
    keeps the padding per chunk small (groups of similar size share a chunk)."""
    order = torch.argsort(sizes, descending=True, stable=True)
    sorted_sizes = sizes[order].tolist()
    chunks, a = [], 0
    while a < len(sorted_sizes):
        n = max(1, budget // (sorted_sizes[a] + 1))
        chunks.append(order[a : a + n])
        a += n
    return chunks


def _padded_groups(starts: torch.Tensor, sizes: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index [G, width] into a grouped token array and its mask, for groups [start, start + size)."""
    slot = torch.arange(width, device=starts.device)
    mask = slot[None] < sizes[:, None]
    return torch.where(mask, starts[:, None] + slot[None], starts[:, None]), mask


def _masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[G, E] mean of each group's real tokens (``tokens`` [G, W, E], ``mask`` [G, W] True where real)."""
    m = mask.to(tokens.dtype)[..., None]
    return (tokens * m).sum(1) / m.sum(1)


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


@dataclass
class CAREOutput:
    """Batched (packed) forward output; torch tensors that keep their gradient.

    Patch-level fields are in the caller's patch order, concatenated over slides (``patch_offsets``
    [B+1] delimits them); region-level fields are concatenated over slides (``region_offsets``).
    Ids (``patch_region``, ``region_subregion``, ``candidates``, ``roi``) are local to their slide.
    """

    patch_offsets: torch.Tensor  # [B+1]
    region_offsets: torch.Tensor  # [B+1]
    region_embeddings: torch.Tensor  # [R, E] g^AR
    region_slide: torch.Tensor  # [R] slide index of each region
    region_subregion: torch.Tensor  # [R] square each region came from (local id)
    region_size: torch.Tensor  # [R] patches per region
    patch_region: torch.Tensor  # [N] region id (local, 0..R_b-1)
    candidates: torch.Tensor  # [N, c] candidate squares (local ids, -1 = none)
    candidate_rank: torch.Tensor  # [N, c] spatial rank (0 = nearest)
    candidate_scores: torch.Tensor | None  # [N, c] w = rho * mu (None with fixed regions)
    rsl: torch.Tensor  # [B] E, expected candidate rank (NaN with fixed regions)
    rsl_loss: torch.Tensor  # [B] (E - E*)^2 (0 with fixed regions)
    patch_tokens: torch.Tensor | None  # [N, E] ARSA outputs per patch (for masked-token losses)
    slide_embedding: torch.Tensor | None = None  # [B, E] z (set by forward_head)
    pi: torch.Tensor | None = None  # [R]
    alpha: torch.Tensor | None = None  # [R]
    beta: torch.Tensor | None = None  # [R]
    roi: torch.Tensor | None = None  # [B] local region id of the ROI
    region_token_means: torch.Tensor | None = None  # [R] mean ARSA output of each region's patches (search)

    @property
    def n_slides(self) -> int:
        return len(self.patch_offsets) - 1


class CARE(nn.Module):
    """CARE slide encoder: patch features + grid positions -> adaptive regions, region and slide embeddings.

    ``CARE()`` is the released configuration, randomly initialised; ``CARE(k=6)`` or
    ``CARE(CAREConfig(...))`` overrides it; ``CARE.from_seed(seed, **cfg)`` gives a fixed init.
    Training calls ``forward`` (grad-carrying ``CAREOutput``); inference calls ``encode``.
    """

    def __init__(self, config: CAREConfig | dict | None = None, **overrides) -> None:
        super().__init__()
        base = config.to_dict() if isinstance(config, CAREConfig) else dict(config or {})
        self.config = CAREConfig.from_dict({**base, **overrides})
        cfg = self.config
        e = cfg.embed_dim
        if cfg.input_norm:  # per-channel standardisation, part of the checkpoint
            self.register_buffer("feature_mean", torch.zeros(cfg.input_dim))
            self.register_buffer("feature_std", torch.ones(cfg.input_dim))
        self.proj_in = nn.Linear(cfg.input_dim, e)  # Eq. 2: f^Q = W F
        self.mask_token = nn.Parameter(torch.empty(e))  # replaces masked patch tokens (iBOT student)
        self.subregion_encoder = ClsEncoder(e, cfg.subregion_depth, cfg.heads, cfg.mlp_ratio, cfg.dropout)
        self.query_pool = QueryPool(e, cfg.heads)
        self.arsa = ClsEncoder(e, cfg.arsa_depth, cfg.heads, cfg.mlp_ratio, cfg.dropout)
        self.spf = GatedAttention(e, cfg.spf_dim)
        self.apply(self._init_weights)
        for p in (self.mask_token, self.subregion_encoder.cls_token, self.arsa.cls_token, self.query_pool.query):
            nn.init.trunc_normal_(p, std=0.02)
        if cfg.spf_init == "xavier":
            for lin in (self.spf.v, self.spf.u, self.spf.w):
                nn.init.xavier_normal_(lin.weight)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    @classmethod
    def from_seed(cls, seed: int, config: CAREConfig | dict | None = None, **overrides) -> CARE:
        """A CARE whose random initialisation is fixed by ``seed`` (global RNG state untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(config, **overrides)

    @property
    def device(self) -> torch.device:
        return self.proj_in.weight.device

    # ---------------------------------------------------------------- inputs and geometry
    @torch.no_grad()
    def set_feature_statistics(self, mean, std) -> None:
        """Store the per-channel mean and std (input_norm); channels with std < 1e-6 are left unscaled."""
        if not self.config.input_norm:
            raise ValueError("this CARE has input_norm=False; build it with input_norm=True to store feature statistics")
        std = torch.as_tensor(std, dtype=torch.float32)
        self.feature_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.feature_std.copy_(torch.where(std < 1e-6, torch.ones_like(std), std))

    def geometry(self, grid) -> SubregionGeometry:
        """Eq. 1, 3: the sub-regions and candidate squares of one grid for this model's k, anchor and
        candidate count (what ``forward`` computes; data workers can compute it ahead and pass it in)."""
        cfg = self.config
        return subregion_geometry(np.asarray(grid, dtype=np.int64), cfg.k, cfg.anchor, cfg.n_candidates)

    def _prepare(self, features: Sequence[torch.Tensor], grids: Sequence, token_mask: Sequence | None,
                 geometries: Sequence | None = None) -> dict:
        cfg = self.config
        if geometries is not None and len(geometries) != len(features):
            raise ValueError(f"need one geometry per slide (got {len(geometries)} for {len(features)})")
        if len(features) != len(grids) or not len(features):
            raise ValueError(f"need one grid per feature tensor and at least one slide (got {len(features)} and {len(grids)})")
        geoms, perms, xs, masks = [], [], [], []
        n_off, m_off = [0], [0]
        for b, (x, grid) in enumerate(zip(features, grids)):
            x = torch.as_tensor(x)
            if x.ndim != 2 or x.shape[1] != cfg.input_dim:
                raise FeatureMismatchError(
                    f"slide {b}: features of shape {tuple(x.shape)} do not fit this CARE (input_dim={cfg.input_dim}); "
                    "use features from the patch encoder the model was trained on"
                )
            grid = np.asarray(torch.as_tensor(grid).cpu(), dtype=np.int64)
            if len(grid) != len(x) or len(x) == 0:
                raise ValueError(f"slide {b}: {len(x)} feature rows but grid of shape {grid.shape}; need N >= 1 of each")
            if geometries is None:
                geo = subregion_geometry(grid, cfg.k, cfg.anchor, cfg.n_candidates)
            else:
                geo = geometries[b]
                if len(geo.grid) != len(x) or geo.candidates.shape[1] != cfg.n_candidates:
                    raise ValueError(f"slide {b}: its geometry has {len(geo.grid)} patches and {geo.candidates.shape[1]} "
                                     f"candidates; compute it with CARE.geometry for these {len(x)} patches")
            # canonical order: own square (raster), then row, then col — makes results independent of input order
            perm = np.lexsort((geo.grid[:, 0], geo.grid[:, 1], geo.patch_subregion))
            geoms.append(geo)
            perms.append(perm + n_off[-1])
            xs.append(x)
            if token_mask is not None:
                masks.append(torch.as_tensor(token_mask[b], dtype=torch.bool).reshape(-1))
                if len(masks[-1]) != len(x):
                    raise ValueError(f"slide {b}: token_mask has {len(masks[-1])} entries for {len(x)} patches")
            n_off.append(n_off[-1] + len(x))
            m_off.append(m_off[-1] + geo.n_subregions)
        dev = self.device
        perm = torch.as_tensor(np.concatenate(perms), device=dev)

        def cat(name: str) -> np.ndarray:  # a geometry field of every slide, canonical order
            return np.concatenate([getattr(g, name)[q - o] for g, q, o in zip(geoms, perms, n_off)])

        def t(a: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
            return torch.as_tensor(a, device=dev, dtype=dtype)

        square_offset = np.repeat(np.array(m_off[:-1]), np.diff(n_off))  # first global square id of each patch's slide
        square = cat("patch_subregion") + square_offset
        cand_local = cat("candidates")
        cand = np.where(cand_local >= 0, cand_local + square_offset[:, None], -1)
        prep = {
            "n_off": t(np.array(n_off)),
            "m_off": t(np.array(m_off)),
            "perm": perm,
            "xs": xs,
            "square": t(square),
            "cand": t(cand),
            "cand_local": t(cand_local),
            "mu": t(cat("inclusion"), torch.float32),
            "rank": t(cat("rank")),
            "valid": t(cat("valid")),
            "patch_slide": t(np.repeat(np.arange(len(xs)), np.diff(n_off))),
            "square_slide": t(np.repeat(np.arange(len(xs)), np.diff(m_off))),
        }
        prep["token_mask"] = torch.cat(masks).to(dev)[perm] if masks else None
        return prep

    # ---------------------------------------------------------------- grouped transformer passes
    def _grouped_pass(self, encoder: ClsEncoder, tokens: torch.Tensor, sizes: torch.Tensor, *,
                      want_tokens: bool = True, pool: QueryPool | None = None):
        """Run ``encoder`` over token groups (``sizes`` [G] consecutive runs of ``tokens`` [T, E]).

        Groups are packed by size (``_size_sorted_chunks``): a chunk pads only to its widest group.
        Returns the [CLS] outputs [G, E], the token outputs [T, E] (same order as ``tokens``, or None) and
        the query-pooled outputs [G, E] of ``pool`` (or None), all in the callers' group order.
        """
        starts = torch.cumsum(sizes, 0) - sizes
        chunks = _size_sorted_chunks(sizes, self.config.chunk_tokens)
        cls_parts, tok_parts, pool_parts, tok_index = [], [], [], []
        for ids in chunks:
            s = sizes[ids]
            idx, mask = _padded_groups(starts[ids], s, int(s[0]))  # the first group of a chunk is its widest
            cls_out, tok = encoder(tokens[idx], mask)
            cls_parts.append(cls_out)
            if want_tokens:
                tok_parts.append(tok[mask])
                tok_index.append(idx[mask])
            if pool is not None:
                pool_parts.append(pool(tok, mask))
        inv = torch.empty_like(sizes)
        inv[torch.cat(chunks)] = torch.arange(len(sizes), device=sizes.device)
        cls_out = torch.cat(cls_parts)[inv]
        pooled = torch.cat(pool_parts)[inv] if pool is not None else None
        tok_out = None
        if want_tokens:
            where = torch.cat(tok_index)
            back = torch.empty_like(where)
            back[where] = torch.arange(len(where), device=where.device)
            tok_out = torch.cat(tok_parts)[back]
        return cls_out, tok_out, pooled

    # ---------------------------------------------------------------- Eq. 2: descriptors
    def _describe_subregions(self, f_q: torch.Tensor, square: torch.Tensor, n_squares: int):
        """Sub-region transformer over the square groups: f^R [N, E], g^CLS [M, E], g^Q [M, E] or None."""
        cfg = self.config
        pool = self.query_pool if cfg.use_gq and not cfg.fixed_regions else None
        g_cls, f_r, g_q = self._grouped_pass(self.subregion_encoder, f_q, torch.bincount(square, minlength=n_squares), pool=pool)
        return f_r, g_cls, g_q

    # ---------------------------------------------------------------- Eq. 4: ARG
    def _candidate_similarity(self, f_q, f_r, g_q, g_cls, cand, valid, chunk: int = 8192) -> torch.Tensor:
        """rho [N, c] for every patch, gathering candidate descriptors in patch chunks."""
        cfg = self.config
        out = []
        for a in range(0, len(f_q), chunk):
            c = cand[a : a + chunk].clamp_min(0)
            out.append(
                arg_scores(
                    f_q[a : a + chunk],
                    (f_r if cfg.use_fr else f_q)[a : a + chunk],  # ablation: f^Q in place of f^R
                    g_q[c] if cfg.use_gq else None,
                    g_cls[c] if cfg.use_gcls else None,
                    valid[a : a + chunk],
                )
            )
        return torch.cat(out)

    # ---------------------------------------------------------------- Eq. 6: ARSA
    def _encode_regions(self, grouped: torch.Tensor, sizes: torch.Tensor, want_tokens: bool, want_means: bool = False):
        """ARSA over region-grouped tokens (``sizes`` [R] consecutive runs): g^AR [R, E], optionally the per-patch
        outputs in the same grouped order, and optionally each region's mean patch output [R, E]."""
        return self._grouped_pass(self.arsa, grouped, sizes, want_tokens=want_tokens,
                                  pool=_masked_mean if want_means else None)

    def forward_features(
        self,
        features: Sequence[torch.Tensor],
        grids: Sequence,
        *,
        token_mask: Sequence | None = None,
        return_patch_tokens: bool = True,
        geometries: Sequence | None = None,
        return_region_token_means: bool = False,
    ) -> CAREOutput:
        """Sub-regions, ARG, RSL and ARSA for a batch of slides (lists of [N_b, D] features, [N_b, 2] grids).

        token_mask: optional list of [N_b] bool; True patches get ``mask_token`` in place of f^Q.
        return_region_token_means: also each region's mean ARSA patch output (what region search compares).
        geometries: optional ``self.geometry(grid)`` of each slide, computed ahead (e.g. in data workers).
        """
        cfg = self.config
        p = self._prepare(features, grids, token_mask, geometries)
        n_slides = len(p["n_off"]) - 1
        n_squares = int(p["m_off"][-1])
        w_dtype = self.proj_in.weight.dtype
        xs = [x.to(self.device, w_dtype) for x in p["xs"]]
        if cfg.input_norm:
            xs = [(x - self.feature_mean.to(w_dtype)) / self.feature_std.to(w_dtype) for x in xs]
        f_q = [self.proj_in(x) for x in xs]  # Eq. 2: f^Q
        f_q = (f_q[0] if len(f_q) == 1 else torch.cat(f_q))[p["perm"]]
        if p["token_mask"] is not None:
            f_q = torch.where(p["token_mask"][:, None], self.mask_token.to(f_q.dtype), f_q)
        f_r, g_cls, g_q = self._describe_subregions(f_q, p["square"], n_squares)

        cand, valid = p["cand"], p["valid"]
        if cfg.fixed_regions:
            assigned = p["square"]
            tokens = f_r
            scores = None
            rsl = torch.full((n_slides,), float("nan"), device=self.device)
            rsl_loss = torch.zeros(n_slides, device=self.device)
        else:
            rho = self._candidate_similarity(f_q, f_r, g_q, g_cls, cand, valid)  # Eq. 4: rho
            scores = rho * p["mu"]  # Eq. 4: w = rho * mu
            pick = scores.detach().masked_fill(~valid, -1.0).argmax(1)  # Eq. 4: A(j) = argmax w
            assigned = cand.gather(1, pick[:, None]).squeeze(1)
            tokens = f_r
            if cfg.straight_through and torch.is_grad_enabled():  # our choice: value 1, gradient of w
                tokens = f_r * _straight_through_one(scores.gather(1, pick[:, None])).to(f_r.dtype)
            per_patch = rsl_expected_rank(scores, p["rank"], valid)  # Eq. 5
            counts = torch.bincount(p["patch_slide"], minlength=n_slides).float()
            rsl = torch.zeros(n_slides, device=self.device).index_add(0, p["patch_slide"], per_patch) / counts
            rsl_loss = (rsl - cfg.rsl_target) ** 2

        # adaptive regions: non-empty assigned squares, numbered in (slide, raster) order
        used, region = torch.unique(assigned, sorted=True, return_inverse=True)
        n_regions = len(used)
        region_slide = p["square_slide"][used]
        region_offsets = torch.cat([region_slide.new_zeros(1), torch.cumsum(torch.bincount(region_slide, minlength=n_slides), 0)])
        order = torch.argsort(region, stable=True)
        grouped = tokens[order]
        del tokens, f_r, f_q, g_cls, g_q  # without autograd this frees them before ARSA
        g_ar, grouped_out, token_means = self._encode_regions(grouped, torch.bincount(region, minlength=n_regions),
                                                              return_patch_tokens, return_region_token_means)  # Eq. 6
        patch_tokens = None if grouped_out is None else grouped_out[torch.argsort(order)]

        inv = torch.empty_like(p["perm"])
        inv[p["perm"]] = torch.arange(len(inv), device=inv.device)
        slide_of_patch = p["patch_slide"]
        return CAREOutput(
            patch_offsets=p["n_off"],
            region_offsets=region_offsets,
            region_embeddings=g_ar,
            region_slide=region_slide,
            region_subregion=used - p["m_off"][region_slide],
            region_size=torch.bincount(region, minlength=n_regions),
            patch_region=(region - region_offsets[slide_of_patch])[inv],
            candidates=p["cand_local"][inv],
            candidate_rank=p["rank"][inv],
            candidate_scores=None if scores is None else scores[inv],
            rsl=rsl,
            rsl_loss=rsl_loss,
            patch_tokens=None if patch_tokens is None else patch_tokens[inv],
            region_token_means=token_means,
        )

    def forward_head(self, out: CAREOutput) -> CAREOutput:
        """Eq. 7: SPF weights, slide embedding and ROI, filled into ``out``."""
        n_slides = out.n_slides
        seg = out.region_slide
        beta = _segment_softmax(self.spf(out.region_embeddings), seg, n_slides)  # Eq. 7: beta
        n_patches = (out.patch_offsets[1:] - out.patch_offsets[:-1]).float()
        alpha = out.region_size.float() / n_patches[seg]  # Eq. 7: coverage prior
        lam = self.config.lambda_spf
        pi = lam * alpha + (1.0 - lam) * beta  # Eq. 7: fused weight
        g = out.region_embeddings
        z = torch.zeros(n_slides, g.shape[1], device=g.device, dtype=torch.float32)
        z = z.index_add(0, seg, pi[:, None] * g.float())  # Eq. 7: z = sum pi g^AR
        best = torch.full((n_slides,), -1.0, device=g.device).scatter_reduce(0, seg, pi.detach(), "amax")
        is_best = pi.detach() == best[seg]
        idx = torch.arange(len(pi), device=g.device)
        first = torch.full((n_slides,), len(pi), device=g.device).scatter_reduce(0, seg, torch.where(is_best, idx, len(pi)), "amin")
        out.slide_embedding, out.pi, out.alpha, out.beta = z, pi, alpha, beta
        out.roi = first - out.region_offsets[:-1]  # Eq. 7: ROI = argmax pi (first on ties)
        return out

    def forward(self, features: Sequence[torch.Tensor], grids: Sequence, *, token_mask: Sequence | None = None,
                return_patch_tokens: bool = True, geometries: Sequence | None = None,
                return_region_token_means: bool = False) -> CAREOutput:
        """Full CARE on a batch of slides; see ``forward_features`` for the arguments."""
        return self.forward_head(
            self.forward_features(features, grids, token_mask=token_mask, return_patch_tokens=return_patch_tokens,
                                  geometries=geometries, return_region_token_means=return_region_token_means)
        )

    # ---------------------------------------------------------------- inference
    def encode_batch(self, slides: Sequence, *, autocast: bool | None = None) -> list:
        """Encode ``PatchFeatures`` of several slides in one packed pass -> one ``SlideEncoding`` each.

        autocast: run the transformers in bfloat16 (default: on CUDA only).
        """
        from care_core.model.encoding import SlideEncoding

        for pf in slides:
            if pf.dim != self.config.input_dim:
                raise FeatureMismatchError(
                    f"features of {pf.slide_path or 'this slide'} are {pf.dim}-d (encoder {pf.encoder or 'unknown'!r}) "
                    f"but this CARE expects input_dim={self.config.input_dim}; use a matching checkpoint or re-extract features"
                )
        dev = self.device
        use_amp = dev.type == "cuda" if autocast is None else autocast
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            out = self.forward(
                [torch.from_numpy(np.ascontiguousarray(pf.features, dtype=np.float32)) for pf in slides],
                [pf.grid_indices() for pf in slides],
                return_patch_tokens=False,
                return_region_token_means=True,
            )
        return [SlideEncoding.from_output(out, b, slides[b], self.config) for b in range(len(slides))]

    def encode(self, features, *, autocast: bool | None = None):
        """Encode one slide's ``PatchFeatures`` -> ``SlideEncoding`` (numpy fields)."""
        return self.encode_batch([features], autocast=autocast)[0]

