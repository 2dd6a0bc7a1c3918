"""CARE's transformers at bucketed static shapes and through torch.compile (`bucket_shapes`, `compile`): the same
outputs and gradients as the eager model, few shapes, unchanged parameter names, and a Stage I run that ends
where the eager run ends."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from care_core.model import CARE
from care_core.train.config import config_from_dict
from care_core.train.static_shapes import bucket, restore, speed_up
from care_core.train.trainer import train
from test_train_trainer import cohort  # noqa: F401 — the trainer tests' feature cohort
from train_cohort import TINY_MODEL, blob, tiny_stage1


def test_buckets_are_few_and_waste_under_a_third():
    assert [bucket(n) for n in (1, 8, 9, 12, 13, 17, 25, 33, 49, 65, 97, 129)] == \
        [8, 8, 12, 12, 16, 24, 32, 48, 64, 96, 128, 192]
    sizes = {bucket(n) for n in range(1, 4097)}
    assert len(sizes) == 19  # 8, 12, 16, 24, ..., 3072, 4096
    assert all(n <= bucket(n) and (bucket(n) - n) / bucket(n) < 1 / 3 for n in range(8, 4097))  # 8 at least


def batch(seed: int = 0, n_slides: int = 3):
    rng = np.random.default_rng(seed)
    grids = [blob(int(s), rng) for s in rng.integers(6, 12, n_slides)]
    feats = [torch.from_numpy(rng.standard_normal((len(g), 8), dtype=np.float32)) for g in grids]
    masks = [torch.from_numpy(rng.random(len(g)) < 0.3) for g in grids]
    return feats, grids, masks


def step(model: CARE, feats, grids, masks):
    """Outputs and parameter gradients of one forward + backward."""
    model.zero_grad(set_to_none=True)
    out = model(feats, grids, token_mask=masks)
    loss = out.slide_embedding.square().sum() + out.patch_tokens.square().mean() + out.rsl_loss.sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("compile_mode", ["", "aot_eager"])
def test_bucketed_and_compiled_care_equals_eager(compile_mode):
    eager = CARE.from_seed(0, input_dim=8, **TINY_MODEL).train()
    fast = copy.deepcopy(eager)
    assert speed_up(fast, bucket_shapes=True, compile_mode=compile_mode) == 3  # two [CLS] encoders, the query pool
    shapes = []
    for m in (fast.subregion_encoder, fast.arsa, fast.query_pool):
        run = m.forward.run
        m.forward.run = lambda tokens, mask, run=run: (shapes.append(tuple(mask.shape)), run(tokens, mask))[1]
    for seed in (0, 1):  # two batches: other chunk shapes, same buckets
        data = batch(seed)
        ref_out, ref_grads = step(eager, *data)
        out, grads = step(fast, *data)
        torch.testing.assert_close(out.slide_embedding, ref_out.slide_embedding, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.patch_tokens, ref_out.patch_tokens, rtol=1e-5, atol=1e-6)
        assert torch.equal(out.patch_region, ref_out.patch_region) and torch.equal(out.roi, ref_out.roi)
        assert grads.keys() == ref_grads.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert shapes and all(g == bucket(g) and n == bucket(n) for g, n in shapes)
    assert len(set(shapes)) <= 6
    assert list(fast.state_dict()) == list(eager.state_dict())  # checkpoints read the same names
    restore(fast)
    assert not any("forward" in vars(m) for m in fast.modules())


@pytest.mark.slow
def test_inductor_compiled_care_equals_eager_on_the_cpu():
    """torch.compile's default backend (C++ code generated and built on this machine: a minute on 2 cores)."""
    eager = CARE.from_seed(0, input_dim=8, **TINY_MODEL).train()
    fast = copy.deepcopy(eager)
    speed_up(fast, bucket_shapes=True, compile_mode="default")
    data = batch(0)
    ref_out, ref_grads = step(eager, *data)
    out, grads = step(fast, *data)
    torch.testing.assert_close(out.slide_embedding, ref_out.slide_embedding, rtol=1e-4, atol=1e-5)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-3, atol=1e-5, msg=name)


def test_a_stage1_run_with_bucketed_shapes_ends_at_the_eager_weights(cohort, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    list(train(config_from_dict("1", tiny_stage1(cohort, epochs=1)), tmp_path / "eager"))
    list(train(config_from_dict("1", tiny_stage1(cohort, epochs=1, bucket_shapes=True, compile="aot_eager")),
               tmp_path / "fast"))
    a = load_file(str(tmp_path / "eager" / "care.safetensors"))
    b = load_file(str(tmp_path / "fast" / "care.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.gpu
@pytest.mark.parametrize("compile_mode", ["default", "reduce-overhead"])
def test_compiled_care_equals_eager_on_cuda_within_bfloat16_tolerance(compile_mode):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    eager = CARE.from_seed(0, input_dim=8, **TINY_MODEL).cuda().train()
    fast = copy.deepcopy(eager)
    speed_up(fast, bucket_shapes=True, compile_mode=compile_mode)
    for seed in (0, 1, 2):  # new batches: new shapes inside the same buckets
        data = batch(seed)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            ref_out, ref_grads = step(eager, *data)
            out, grads = step(fast, *data)
        scale = ref_out.slide_embedding.abs().max()
        torch.testing.assert_close(out.slide_embedding, ref_out.slide_embedding, rtol=0, atol=float(0.05 * scale))
        for name in ref_grads:
            err = (grads[name].float() - ref_grads[name].float()).norm() / ref_grads[name].float().norm().clamp_min(1e-12)
            assert err < 0.05, (name, float(err))
