"""CARE model: geometry (Eq. 1, 3), ARG scoring (Eq. 4), RSL (Eq. 5), SPF/ROI (Eq. 7), batching, gradients."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from care_core.errors import FeatureMismatchError
from care_core.features import PatchFeatures
from care_core.model import CARE, CAREConfig, arg_scores, rsl_expected_rank, soft_inclusion_dense, subregion_geometry

SMALL = dict(input_dim=16, embed_dim=32, heads=4, spf_dim=16)
SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "care_sample_conch_v15_19579.npy"


def blob_grid(n_side: int = 30, seed: int = 0, keep: float = 0.6) -> np.ndarray:
    """Irregular tissue-like grid: cells of an n_side² square kept by a smooth random threshold."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((n_side, n_side)), 3)
    rows, cols = np.nonzero(field > np.quantile(field, 1 - keep))
    return np.stack([cols, rows], 1).astype(np.int64)


def small_inputs(n_side: int = 30, seed: int = 0):
    grid = blob_grid(n_side, seed)
    x = torch.from_numpy(np.random.default_rng(seed + 1).standard_normal((len(grid), 16)).astype(np.float32))
    return x, grid


# ------------------------------------------------------------------------------------------ geometry
def test_soft_inclusion_hand_case():
    grid = np.array([[0, 0], [9, 0], [0, 9]])
    geo = subregion_geometry(grid, k=8, anchor="center")
    np.testing.assert_array_equal(geo.square_ij, [[0, 0], [1, 0], [0, 1]])  # raster order
    np.testing.assert_array_equal(geo.anchors, [[3.5, 3.5], [11.5, 3.5], [3.5, 11.5]])
    d00, d10, d20 = math.hypot(3.5, 3.5), math.hypot(5.5, 3.5), math.hypot(3.5, 5.5)
    col_max0 = max(d00, d10, d20)
    col_max1 = max(math.hypot(11.5, 3.5), math.hypot(2.5, 3.5), math.hypot(11.5, 5.5))
    np.testing.assert_allclose(geo.col_max, [col_max0, col_max1, col_max1])
    C = soft_inclusion_dense(grid, 8, "center")
    assert C[0, 0] == pytest.approx(1 - d00 / col_max0)
    assert C[0, 1] == pytest.approx(1 - math.hypot(11.5, 3.5) / col_max1)
    # column normalisation: each column's farthest patch has mu = 0
    np.testing.assert_allclose(C.min(axis=0), 0.0, atol=1e-12)
    # patch 0: own square first, then squares 1 and 2 tie on mu -> lower id first; ranks by distance
    np.testing.assert_array_equal(geo.candidates[0], [0, 1, 2])
    np.testing.assert_array_equal(geo.rank[0], [0, 1, 2])
    np.testing.assert_allclose(geo.inclusion[0], C[0, [0, 1, 2]])


@pytest.mark.parametrize("anchor", ["center", "corner"])
@pytest.mark.parametrize("seed", range(6))
def test_sparse_candidates_equal_dense_reference(anchor, seed):
    rng = np.random.default_rng(seed)
    if seed % 2:  # scattered patches (exercises the wider searches)
        grid = np.unique(rng.integers(0, 60, size=(80, 2)), axis=0)
    else:
        grid = blob_grid(40, seed)
    geo = subregion_geometry(grid, k=8, anchor=anchor, n_candidates=3)
    C = soft_inclusion_dense(grid, 8, anchor)
    d = np.sqrt(((geo.grid[:, None] - geo.anchors[None]) ** 2).sum(-1))
    np.testing.assert_array_equal(geo.col_max, d.max(axis=0))
    top = np.argsort(-C, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(geo.candidates, top)
    np.testing.assert_array_equal(geo.inclusion, np.take_along_axis(C, top, 1))


def test_far_apart_patches_use_exhaustive_search():
    grid = np.array([[0, 0], [1, 1], [300, 5], [2, 290], [301, 290], [150, 150]])
    geo = subregion_geometry(grid, k=8)
    C = soft_inclusion_dense(grid, 8, "center")
    np.testing.assert_array_equal(geo.candidates, np.argsort(-C, axis=1, kind="stable")[:, :3])


def test_fewer_squares_than_candidates():
    geo = subregion_geometry(np.array([[0, 0], [1, 0], [9, 0]]), k=8, n_candidates=3)
    np.testing.assert_array_equal(geo.valid, [[True, True, False]] * 3)
    assert (geo.candidates[:, 2] == -1).all()


def test_corner_anchor_can_lose_own_square_center_cannot():
    cols, rows = np.meshgrid(np.arange(16), np.arange(16))
    grid = np.stack([cols.ravel(), rows.ravel()], 1)
    j = int(np.flatnonzero((grid[:, 0] == 7) & (grid[:, 1] == 7))[0])  # bottom-right patch of square 0
    corner = subregion_geometry(grid, anchor="corner")
    center = subregion_geometry(grid, anchor="center")
    np.testing.assert_array_equal(corner.anchors[0], [0, 0])
    assert 0 not in corner.candidates[j]
    assert center.candidates[j, 0] == 0
    np.testing.assert_array_equal(center.patch_subregion[j], 0)


# ------------------------------------------------------------------------------------------ scoring
def _softmax(v):
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


def test_arg_scores_hand_computation():
    f_q = torch.tensor([[1.0, 0.0]])
    f_r = torch.tensor([[0.0, 2.0]])  # norm does not matter: cosines
    g_q = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    g_cls = torch.tensor([[[3.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    cos = {"qq": [1, 0, -1], "rq": [0, 1, 0], "qc": [1, 1, 0], "rc": [0, 0, 1]}
    expected = [sum(col) / 4 for col in zip(*(_softmax(v) for v in cos.values()))]
    np.testing.assert_allclose(arg_scores(f_q, f_r, g_q, g_cls, valid)[0].numpy(), expected, rtol=1e-6)
    only_q = [sum(col) / 2 for col in zip(_softmax(cos["qq"]), _softmax(cos["rq"]))]
    np.testing.assert_allclose(arg_scores(f_q, f_r, g_q, None, valid)[0].numpy(), only_q, rtol=1e-6)
    two = torch.tensor([[True, True, False]])
    masked = [sum(col) / 4 for col in zip(*(_softmax(v[:2]) for v in cos.values()))] + [0.0]
    np.testing.assert_allclose(arg_scores(f_q, f_r, g_q, g_cls, two)[0].numpy(), masked, rtol=1e-6, atol=1e-7)


def test_rsl_hand_computation():
    w = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.2]])
    rank = torch.tensor([[0, 1, 2], [2, 0, 1]])
    per_patch = rsl_expected_rank(w, rank, torch.ones(2, 3, dtype=torch.bool))
    np.testing.assert_allclose(per_patch.numpy(), [0.7, 1.0], rtol=1e-6)  # 0.3+0.4 ; (2·0.1+0·0.1+1·0.2)/0.4
    e = per_patch.mean().item()
    assert (e - 0.5) ** 2 == pytest.approx(0.1225)


# ------------------------------------------------------------------------------------------ model
@pytest.fixture(scope="module")
def model():
    return CARE.from_seed(0, **SMALL).eval()


@pytest.fixture(scope="module")
def out(model):
    x, grid = small_inputs()
    with torch.no_grad():
        return model([x], [grid]), x, grid


def test_config_defaults_and_unknown_key():
    cfg = CARE().config
    assert (cfg.input_dim, cfg.embed_dim, cfg.heads, cfg.k, cfg.anchor, cfg.n_candidates) == (768, 512, 8, 8, "center", 3)
    assert (cfg.lambda_spf, cfg.rsl_target, cfg.lambda_rsl) == (0.5, 0.5, 0.1)
    with pytest.raises(ValueError, match=r"unknown CARE config key\(s\) \['kk'\]"):
        CARE(kk=3)
    with pytest.raises(ValueError, match="anchor='middle'"):
        CAREConfig(anchor="middle")


def test_from_seed_is_deterministic():
    a, b = CARE.from_seed(3, **SMALL), CARE.from_seed(3, **SMALL)
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), na


def test_assignment_is_argmax_of_scores(out):
    o, x, grid = out
    geo = subregion_geometry(grid)
    scores = o.candidate_scores.masked_fill(o.candidates < 0, -1)
    chosen = o.candidates.gather(1, scores.argmax(1, keepdim=True)).squeeze(1)
    np.testing.assert_array_equal(o.region_subregion[o.patch_region].numpy(), chosen.numpy())
    np.testing.assert_array_equal(o.candidates.numpy(), geo.candidates)
    n_regions = len(o.pi)
    assert sorted(set(o.patch_region.tolist())) == list(range(n_regions))  # contiguous, none empty
    assert (np.diff(o.region_subregion.numpy()) > 0).all()  # raster order of origin squares


def test_rsl_value_matches_scores(out):
    o, _, _ = out
    e = rsl_expected_rank(o.candidate_scores, o.candidate_rank, o.candidates >= 0).mean()
    assert o.rsl[0].item() == pytest.approx(e.item(), rel=1e-5)
    assert o.rsl_loss[0].item() == pytest.approx((e.item() - 0.5) ** 2, rel=1e-5)
    assert 0.0 <= o.rsl[0].item() <= 2.0


def test_spf_weights_slide_embedding_and_roi(out):
    o, x, _ = out
    pi, alpha, beta = o.pi.double(), o.alpha.double(), o.beta.double()
    assert pi.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert beta.sum().item() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(alpha.numpy(), np.bincount(o.patch_region.numpy()) / len(x), rtol=1e-6)
    np.testing.assert_allclose(pi.numpy(), (0.5 * alpha + 0.5 * beta).numpy(), rtol=1e-6)
    z = (o.pi[:, None] * o.region_embeddings).sum(0)
    np.testing.assert_allclose(o.slide_embedding[0].numpy(), z.numpy(), rtol=1e-5, atol=1e-6)
    assert o.roi[0].item() == int(torch.argmax(o.pi))


def test_patch_order_invariance(model, out):
    o, x, grid = out
    perm = np.random.default_rng(7).permutation(len(x))
    with torch.no_grad():
        p = model([x[perm]], [grid[perm]])
    np.testing.assert_allclose(p.slide_embedding.numpy(), o.slide_embedding.numpy(), atol=1e-6)
    np.testing.assert_array_equal(p.patch_region.numpy(), o.patch_region.numpy()[perm])
    np.testing.assert_allclose(p.patch_tokens.numpy(), o.patch_tokens.numpy()[perm], atol=1e-5)
    np.testing.assert_allclose(p.candidate_scores.numpy(), o.candidate_scores.numpy()[perm], atol=1e-6)


def test_batch_equals_single(model, out):
    o, x, grid = out
    x2, grid2 = small_inputs(22, seed=5)
    with torch.no_grad():
        both = model([x, x2], [grid, grid2])
        alone2 = model([x2], [grid2])
    np.testing.assert_allclose(both.slide_embedding[0].numpy(), o.slide_embedding[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(both.slide_embedding[1].numpy(), alone2.slide_embedding[0].numpy(), atol=1e-5)
    n = len(x)
    np.testing.assert_array_equal(both.patch_region[:n].numpy(), o.patch_region.numpy())
    np.testing.assert_array_equal(both.patch_region[n:].numpy(), alone2.patch_region.numpy())
    r = len(o.pi)
    np.testing.assert_allclose(both.pi[:r].numpy(), o.pi.numpy(), atol=1e-6)
    assert both.roi.tolist() == [o.roi.item(), alone2.roi.item()]
    assert both.rsl[1].item() == pytest.approx(alone2.rsl[0].item(), rel=1e-5)


@pytest.mark.parametrize("straight_through", [True, False])
def test_gradient_reaches_arg_through_straight_through(straight_through):
    m = CARE.from_seed(1, straight_through=straight_through, **SMALL)
    x, grid = small_inputs(20, seed=2)
    m([x], [grid]).slide_embedding.pow(2).sum().backward()
    q = m.query_pool.query.grad
    if straight_through:  # g^Q only enters through w = rho * mu -> the scale w / stopgrad(w)
        assert q is not None and q.abs().sum() > 0
        assert m.query_pool.kv.weight.grad.abs().sum() > 0
    else:
        assert q is None or q.abs().sum() == 0
    assert m.subregion_encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_spf_scores_get_the_gradient_of_eq7(lam):
    """dL/ds_i = (1 - lambda) beta_i (dL/dz . (g_i - sum_j beta_j g_j)) for z = sum pi g (Eq. 7), so with lambda = 1/2
    the attention gets half the gradient it would alone, and none at lambda = 1; V, U and w all receive it."""
    m = CARE.from_seed(3, lambda_spf=lam, **SMALL)
    x, grid = small_inputs(24, seed=4)
    seen = {}

    def keep(module, inputs, scores):
        scores.retain_grad()
        seen["s"] = scores

    m.spf.register_forward_hook(keep)
    o = m([x], [grid])
    r = torch.from_numpy(np.random.default_rng(5).standard_normal(o.slide_embedding.shape[1]).astype(np.float32))
    (o.slide_embedding[0] @ r).backward()
    g, beta = o.region_embeddings.detach().double(), o.beta.detach().double()
    expected = (1 - lam) * beta * ((g - (beta[:, None] * g).sum(0)) @ r.double())
    np.testing.assert_allclose(seen["s"].grad.double().numpy(), expected.numpy(), rtol=1e-4, atol=1e-7)
    for p in (m.spf.v.weight, m.spf.u.weight, m.spf.w.weight):
        assert (p.grad is not None and p.grad.abs().sum() > 0) == (lam < 1)


def test_fixed_regions_assign_own_square():
    m = CARE.from_seed(0, fixed_regions=True, **SMALL).eval()
    x, grid = small_inputs()
    with torch.no_grad():
        o = m([x], [grid])
    own = subregion_geometry(grid).patch_subregion
    np.testing.assert_array_equal(o.region_subregion[o.patch_region].numpy(), own)
    assert o.candidate_scores is None and math.isnan(o.rsl[0].item()) and o.rsl_loss[0].item() == 0.0


@pytest.mark.parametrize("flag", ["use_gcls", "use_gq", "use_fr"])
def test_ablation_switches_run_and_change_scores(flag, out):
    o, x, grid = out
    m = CARE.from_seed(0, **SMALL, **{flag: False}).eval()
    with torch.no_grad():
        a = m([x], [grid])
    assert a.candidate_scores.shape == o.candidate_scores.shape
    assert not torch.allclose(a.candidate_scores, o.candidate_scores)


def test_token_mask_replaces_patch_with_mask_token():
    m = CARE.from_seed(0, **SMALL).eval()
    x, grid = small_inputs(20, seed=3)
    mask = torch.zeros(len(x), dtype=torch.bool)
    mask[5] = True
    with torch.no_grad():
        plain = m([x], [grid])
        m.mask_token.copy_(m.proj_in(x[5]))
        same = m([x], [grid], token_mask=[mask])
        m.mask_token.zero_()
        other = m([x], [grid], token_mask=[mask])
    np.testing.assert_allclose(same.slide_embedding.numpy(), plain.slide_embedding.numpy(), atol=1e-6)
    assert not torch.allclose(other.slide_embedding, plain.slide_embedding)
    assert plain.patch_tokens.shape == (len(x), 32)


def test_dimension_mismatch_message():
    m = CARE.from_seed(0, **SMALL)
    pf = PatchFeatures(np.zeros((4, 8), np.float32), np.array([[0, 0], [512, 0], [0, 512], [512, 512]]), 512, encoder="uni_v2")
    with pytest.raises(FeatureMismatchError, match=r"8-d \(encoder 'uni_v2'\) but this CARE expects input_dim=16"):
        m.encode(pf)


def test_encode_small_slide_fields():
    m = CARE.from_seed(0, **SMALL)
    x, grid = small_inputs()
    pf = PatchFeatures(x.numpy(), grid * 256 + 1000, 256, mpp=0.5, patch_px=512)
    enc = m.encode(pf)
    r = enc.n_regions
    assert enc.slide_embedding.shape == (32,) and enc.region_embeddings.shape == (r, 32)
    assert enc.patch_region.shape == (len(x),) and enc.candidates.shape == (len(x), 3)
    np.testing.assert_array_equal(enc.grid, grid - grid.min(0))
    assert enc.region_weights.shape == (r, 3) and enc.roi == int(np.argmax(enc.pi))
    np.testing.assert_array_equal(enc.roi_embedding, enc.region_embeddings[enc.roi])


def test_real_conch_sample_default_config():
    if not SAMPLE.is_file():
        pytest.skip(f"shared CONCH sample not found at {SAMPLE}")
    d = np.load(SAMPLE, allow_pickle=True).item()
    xy = np.array([[int(v) for v in s.split("_")[:2]] for s in d["index"]])
    pf = PatchFeatures(d["feature"], xy, 512, encoder="conch_v15")
    enc = CARE.from_seed(0).encode(pf)
    counts = np.bincount(enc.patch_region)
    assert enc.slide_embedding.shape == (512,) and np.isfinite(enc.slide_embedding).all()
    assert 5 <= len(counts) <= 20 and counts.min() >= 1
    own = subregion_geometry(pf.grid_indices()).patch_subregion
    assert (enc.region_subregion[enc.patch_region] == own).mean() > 0.85  # untrained: ~ the k×k squares


def _small_slide(seed: int = 0) -> PatchFeatures:
    x, grid = small_inputs(seed=seed)
    return PatchFeatures(x.numpy(), grid * 512, 512)


def test_bfloat16_autocast_close_to_float32():
    m = CARE.from_seed(0, **SMALL)
    pf = _small_slide()
    a, b = m.encode(pf, autocast=False), m.encode(pf, autocast=True)
    assert b.slide_embedding.dtype == np.float32
    np.testing.assert_allclose(b.slide_embedding, a.slide_embedding, atol=0.05 * np.abs(a.slide_embedding).max())
    assert (a.patch_region == b.patch_region).mean() > 0.95


@pytest.mark.gpu
def test_cuda_bfloat16_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    m = CARE.from_seed(0, **SMALL)
    pf = _small_slide()
    a = m.encode(pf)
    b = m.to("cuda").encode(pf)  # bfloat16 autocast by default on CUDA
    np.testing.assert_allclose(b.slide_embedding, a.slide_embedding, atol=0.05 * np.abs(a.slide_embedding).max())
    assert (a.patch_region == b.patch_region).mean() > 0.95


# ------------------------------------------------------------------------------------------ training safety


def test_mask_token_starts_non_zero_and_zero_tokens_have_bounded_cosine_gradients():
    m = CARE.from_seed(0, **SMALL)
    assert 0.01 < m.mask_token.norm().item() < 1.0  # trunc-normal(0.02) over 32 dims, like the other tokens
    f = torch.zeros(4, 32, requires_grad=True)  # a masked f^Q with an all-zero mask token
    g = torch.randn(4, 3, 32)
    valid = torch.ones(4, 3, dtype=torch.bool)
    rho = arg_scores(f, f, g, g, valid)
    assert torch.allclose(rho, torch.full_like(rho, 1 / 3))  # cos = 0 for every candidate -> uniform
    (rho * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.isfinite(f.grad).all() and f.grad.norm().item() < 1e4  # F.normalize alone gives ~1e12


def test_fully_masked_view_gives_moderate_mask_token_gradient():
    m = CARE.from_seed(0, **SMALL)
    x, grid = small_inputs(20, seed=3)
    out = m([x], [grid], token_mask=[torch.ones(len(x), dtype=torch.bool)])
    (out.slide_embedding.pow(2).sum() + out.patch_tokens.pow(2).mean()).backward()
    assert torch.isfinite(m.mask_token.grad).all() and m.mask_token.grad.norm().item() < 10.0


def test_straight_through_scale_is_exactly_one_even_where_w_is_zero():
    from care_core.model.care import _straight_through_one

    w = torch.tensor([[0.0], [0.25], [1e-30], [0.7]], requires_grad=True)
    s = _straight_through_one(w)
    assert s.detach().eq(1.0).all()
    s.sum().backward()
    np.testing.assert_allclose(w.grad.numpy().ravel(), [1.0, 4.0, 1e30, 1 / 0.7], rtol=1e-6)


def test_one_square_slide_same_with_and_without_gradients():
    """One 8x8 square: its corner patches have mu = 0, so w = 0 for their only candidate."""
    m = CARE.from_seed(0, **SMALL)
    rows, cols = np.mgrid[0:8, 0:8]
    grid = np.stack([cols.ravel(), rows.ravel()], 1)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
    with torch.no_grad():
        ref = m([x], [grid])
    assert (ref.candidate_scores[:, 0] == 0).sum() == 4  # the four corners
    out = m([x], [grid])
    np.testing.assert_array_equal(out.patch_tokens.detach().numpy(), ref.patch_tokens.numpy())
    np.testing.assert_array_equal(out.slide_embedding.detach().numpy(), ref.slide_embedding.numpy())


def test_size_sorted_chunks_hand_case():
    from care_core.model.care import _size_sorted_chunks

    sizes = torch.tensor([3, 9, 1, 9, 4])
    chunks = _size_sorted_chunks(sizes, budget=20)  # width 9 (+1 CLS): 2 per chunk; then width 4: 4 per chunk
    assert [c.tolist() for c in chunks] == [[1, 3], [4, 0, 2]]


def test_packing_budget_does_not_change_results():
    x, grid = small_inputs(30, seed=4)
    outs = []
    for budget in (70, 100_000):  # one group per chunk vs everything in one chunk
        m = CARE.from_seed(0, chunk_tokens=budget, **SMALL).eval()
        with torch.no_grad():
            outs.append(m([x], [grid]))
    np.testing.assert_allclose(outs[0].slide_embedding.numpy(), outs[1].slide_embedding.numpy(), atol=1e-5)
    np.testing.assert_allclose(outs[0].patch_tokens.numpy(), outs[1].patch_tokens.numpy(), atol=1e-5)
    np.testing.assert_array_equal(outs[0].patch_region.numpy(), outs[1].patch_region.numpy())


def test_precomputed_geometry_gives_the_same_output_and_is_checked():
    m = CARE.from_seed(0, **SMALL).eval()
    x, grid = small_inputs(20, seed=5)
    with torch.no_grad():
        a = m([x], [grid])
        b = m([x], [grid], geometries=[m.geometry(grid)])
    torch.testing.assert_close(a.slide_embedding, b.slide_embedding, rtol=0, atol=0)
    with pytest.raises(ValueError, match="compute it with CARE.geometry"):
        m([x[:-1]], [grid[:-1]], geometries=[m.geometry(grid)])


def test_input_norm_standardises_channels_and_travels_in_the_checkpoint(tmp_path):
    from care_core.model import load_checkpoint, save_checkpoint

    x, grid = small_inputs(20, seed=6)
    mean, std = torch.linspace(-1, 1, 16), torch.linspace(0.5, 2, 16)
    normed = CARE.from_seed(0, input_norm=True, **SMALL).eval()
    normed.set_feature_statistics(mean, std)
    plain = CARE.from_seed(0, **SMALL).eval()
    with torch.no_grad():
        a = normed([x], [grid]).slide_embedding
        b = plain([(x - mean) / std], [grid]).slide_embedding
    torch.testing.assert_close(a, b)
    save_checkpoint(normed, tmp_path / "m")
    back = load_checkpoint(tmp_path / "m")
    torch.testing.assert_close(back.feature_std, std)
    with pytest.raises(ValueError, match="input_norm=False"):
        plain.set_feature_statistics(mean, std)
