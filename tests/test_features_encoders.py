"""Encoder registry, stain-texture descriptor, timm foundation-encoder specs, weight files and their errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from care_core.errors import CheckpointError, MissingWeightsError
from care_core.features import get_encoder, get_encoder_spec, list_encoders
from care_core.features.stain_texture import feature_names

NAMED = ["conch_v15", "uni_v2", "virchow2", "h-optimus-0", "gigapath", "phikon_v2"]
IMNET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
EXPECTED = {  # name: (dim, input_px, resize_px, mean/std, arch)
    "conch_v15": (768, 448, 448, IMNET, "vit_large_patch16_224"),
    "uni_v2": (1536, 224, 224, IMNET, "vit_giant_patch14_224"),
    "virchow2": (2560, 224, 224, IMNET, "vit_huge_patch14_224"),
    "h-optimus-0": (1536, 224, 224, ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517)),
                    "vit_giant_patch14_reg4_dinov2"),
    "gigapath": (1536, 224, 256, IMNET, "vit_giant_patch14_dinov2"),
    "phikon_v2": (1024, 224, 224, IMNET, "vit_large_patch16_224"),
}


def test_registry_lists_every_encoder_and_rejects_unknown():
    assert set(list_encoders()) == {"stain-texture", *NAMED}
    with pytest.raises(KeyError, match=r"unknown encoder 'uni3'; choose one of \['conch_v15', 'gigapath'"):
        get_encoder("uni3")
    with pytest.raises(KeyError, match="unknown timm architecture 'no_such_arch'"):
        get_encoder_spec("timm:no_such_arch")


@pytest.mark.parametrize("name", NAMED)
def test_named_specs(name):
    spec = get_encoder_spec(name)
    dim, input_px, resize_px, (mean, std), arch = EXPECTED[name]
    assert (spec.dim, spec.input_px, round(spec.input_px / spec.crop_pct), spec.arch) == (dim, input_px, resize_px, arch)
    assert (spec.mean, spec.std, spec.mpp) == (mean, std, 0.5)
    assert spec.hub_repo and spec.hub_filename


@pytest.mark.parametrize("name", NAMED)
def test_named_architectures_build_depth_reduced_and_run(name):
    torch.manual_seed(0)
    enc = get_encoder(name, random_init=True, device="cpu", depth=1)
    assert enc.weights_sha256 == "random-init" and len(enc.net.trunk.blocks if name == "conch_v15" else enc.net.blocks) == 1
    x = np.random.default_rng(0).integers(0, 256, (1, enc.resize_px, enc.resize_px, 3), dtype=np.uint8)
    out = enc.embed(x)
    assert out.shape == (1, EXPECTED[name][0]) and out.dtype == np.float32 and np.isfinite(out).all()
    if name == "virchow2":  # class token ⊕ mean of the patch tokens (after the 1 + 4 register prefix tokens)
        with torch.inference_mode():
            tokens = enc.net.forward_features(enc.preprocess(x))
        assert enc.net.num_prefix_tokens == 5 and tokens.shape[1] == 5 + 16 * 16
        np.testing.assert_allclose(out[0, :1280], tokens[0, 0].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out[0, 1280:], tokens[0, 5:].mean(0).numpy(), rtol=1e-5, atol=1e-5)
    if name == "uni_v2":
        assert enc.net.num_prefix_tokens == 9  # class token + 8 registers


def test_timm_arch_small_vit_and_preprocessing():
    torch.manual_seed(0)
    enc = get_encoder("timm:vit_small_patch16_224", random_init=True, device="cpu")
    assert (enc.dim, enc.input_px, enc.mean, enc.std) == (384, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    x = np.zeros((2, 224, 224, 3), np.uint8)
    x[1] = 255
    t = enc.preprocess(x)
    assert t.shape == (2, 3, 224, 224)
    assert float(t[0].min()) == float(t[0].max()) == -1.0 and float(t[1].min()) == 1.0
    out = enc.embed(x)
    assert out.shape == (2, 384) and np.isfinite(out).all()
    big = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)  # 448 px: resized to 224 inside embed
    np.testing.assert_allclose(enc.embed(big), out, rtol=1e-4, atol=1e-4)
    torch_in = torch.from_numpy(x)
    np.testing.assert_allclose(enc.embed(torch_in), out, rtol=1e-5, atol=1e-5)


def _tiny_vit_weights(tmp_path, fmt: str):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    ref = get_encoder("timm:vit_tiny_patch16_224", random_init=True, device="cpu")
    sd = {k: v.contiguous() for k, v in ref.net.state_dict().items()}
    path = tmp_path / f"tiny.{fmt}"
    if fmt == "safetensors":
        save_file(sd, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    return ref, path


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_weight_file_gives_the_same_outputs_and_records_sha256(tmp_path, fmt):
    ref, path = _tiny_vit_weights(tmp_path, fmt)
    enc = get_encoder("timm:vit_tiny_patch16_224", weights=path, device="cpu")
    x = np.random.default_rng(3).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(enc.embed(x), ref.embed(x))
    assert enc.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_offline_hub_cache_is_used(tmp_path, monkeypatch):
    from huggingface_hub import constants

    ref, path = _tiny_vit_weights(tmp_path, "safetensors")
    repo = get_encoder_spec("timm:vit_tiny_patch16_224").hub_repo
    snap = tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    (snap / "model.safetensors").write_bytes(path.read_bytes())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    enc = get_encoder("timm:vit_tiny_patch16_224", device="cpu")
    x = np.full((1, 224, 224, 3), 120, np.uint8)
    np.testing.assert_array_equal(enc.embed(x), ref.embed(x))


def test_missing_weights_message_says_where(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(MissingWeightsError) as err:
        get_encoder("uni_v2", device="cpu")
    msg = str(err.value)
    for part in ("'pytorch_model.bin'", "https://huggingface.co/MahmoodLab/UNI2-h", "--weights PATH",
                 "nothing is downloaded", str(tmp_path / "empty-cache")):
        assert part in msg
    with pytest.raises(MissingWeightsError, match=r"weights file '.*nowhere.bin' for encoder 'virchow2' does not exist"):
        get_encoder("virchow2", weights=tmp_path / "nowhere.bin", device="cpu")


def test_weights_of_another_model_are_refused(tmp_path):
    _, path = _tiny_vit_weights(tmp_path, "safetensors")
    with pytest.raises(CheckpointError, match=r"tiny.safetensors' does not fit encoder 'timm:vit_small_patch16_224'"):
        get_encoder("timm:vit_small_patch16_224", weights=path, device="cpu")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="cannot read weights file"):
        get_encoder("timm:vit_tiny_patch16_224", weights=bad, device="cpu")


def test_conch_checkpoint_with_224px_position_embedding_is_resampled(tmp_path):
    from safetensors.torch import save_file
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(2)
    ref = get_encoder("conch_v15", random_init=True, device="cpu", depth=1)
    sd = {k: v.contiguous() for k, v in ref.net.state_dict().items()}
    assert set(k.split(".")[0] for k in sd) == {"trunk", "attn_pool_contrast", "ln_contrast"}
    assert sd["attn_pool_contrast.query"].shape == (1, 768) and sd["trunk.pos_embed"].shape == (1, 1 + 28 * 28, 1024)
    small = torch.randn(1, 1 + 14 * 14, 1024)  # as trained at 224 px
    sd["trunk.pos_embed"] = small
    save_file(sd, str(tmp_path / "conch.safetensors"))
    enc = get_encoder("conch_v15", weights=tmp_path / "conch.safetensors", device="cpu", depth=1)
    expected = resample_abs_pos_embed(small, new_size=(28, 28), num_prefix_tokens=1)
    torch.testing.assert_close(enc.net.trunk.pos_embed.data, expected)


def test_phikon_v2_hugging_face_weights_are_converted(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(4)
    ref = get_encoder("phikon_v2", random_init=True, device="cpu", depth=2)
    t = ref.net.state_dict()
    hf = {
        "embeddings.cls_token": t["cls_token"], "embeddings.mask_token": torch.zeros(1, 1024),
        "embeddings.position_embeddings": t["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": t["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": t["patch_embed.proj.bias"],
        "layernorm.weight": t["norm.weight"], "layernorm.bias": t["norm.bias"],
    }
    for i in range(2):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for p in ("weight", "bias"):
            q, k, v = t[f"{b}attn.qkv.{p}"].chunk(3, dim=0)
            hf.update({f"{h}attention.attention.query.{p}": q, f"{h}attention.attention.key.{p}": k,
                       f"{h}attention.attention.value.{p}": v,
                       f"{h}attention.output.dense.{p}": t[f"{b}attn.proj.{p}"],
                       f"{h}norm1.{p}": t[f"{b}norm1.{p}"], f"{h}norm2.{p}": t[f"{b}norm2.{p}"],
                       f"{h}mlp.fc1.{p}": t[f"{b}mlp.fc1.{p}"], f"{h}mlp.fc2.{p}": t[f"{b}mlp.fc2.{p}"]})
        hf[f"{h}layer_scale1.lambda1"] = t[f"{b}ls1.gamma"]
        hf[f"{h}layer_scale2.lambda1"] = t[f"{b}ls2.gamma"]
    hf.pop("embeddings.mask_token")
    save_file({k: v.contiguous() for k, v in hf.items()}, str(tmp_path / "model.safetensors"))
    enc = get_encoder("phikon_v2", weights=tmp_path / "model.safetensors", device="cpu", depth=2)
    x = np.random.default_rng(5).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_allclose(enc.embed(x), ref.embed(x), rtol=1e-5, atol=1e-5)


# --- stain-texture ---------------------------------------------------------------------------------------


def _synthetic_patch(kind: str, seed: int) -> np.ndarray:
    """512-px H&E-like patch: 'nuclei' (dense purple discs on pink), 'stroma' (pink fibres), 'fat' (white
    cells with thin pink walls), 'background' (glass)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:512, 0:512]
    img = np.empty((512, 512, 3), np.float32)
    if kind == "background":
        img[:] = 238
    elif kind == "fat":
        img[:] = 245
        cx, cy = rng.uniform(0, 512, (2, 40))
        d = np.min([np.hypot(xx - x, yy - y) for x, y in zip(cx, cy)], axis=0)
        d2 = np.sort([np.hypot(xx - x, yy - y) for x, y in zip(cx, cy)], axis=0)[1]
        img[np.abs(d2 - d) < 3] = (215, 120, 175)  # walls where two cells meet
    else:
        angle = rng.uniform(0, np.pi)
        stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / rng.uniform(3, 5))
        img[:] = np.array((230, 150, 200)) - 25 * stripes[..., None] * np.array((0.2, 1.0, 0.5))
        if kind == "nuclei":
            for x, y in rng.uniform(0, 512, (350, 2)):
                r = rng.uniform(5, 9)
                img[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = (85, 50, 140)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_stain_texture_uniform_patch_is_hand_computable():
    from skimage.color import hed_from_rgb

    enc = get_encoder("stain-texture", device="cpu")
    colour = np.array([200, 120, 170], np.uint8)
    out = enc.embed(np.broadcast_to(colour, (1, 512, 512, 3)))[0]
    f = dict(zip(feature_names(), out))
    assert out.shape == (enc.dim,) == (230,)
    np.testing.assert_allclose([f["rgb_mean_r"], f["rgb_mean_g"], f["rgb_mean_b"]], colour / 255, rtol=1e-6)
    hed = np.maximum(-np.log(colour / 255.0) @ hed_from_rgb, 0)
    np.testing.assert_allclose([f["h_mean"], f["e_mean"], f["res_mean"]], hed, rtol=1e-5)
    np.testing.assert_allclose([f["h_p5"], f["h_p95"], f["h_std"]], [hed[0], hed[0], 0], atol=1e-6)
    assert f["tissue_frac"] == 1.0 and f["dark_frac"] == 0.0
    assert f["lbp_grey_1um_8"] == 1.0 and f["lbp_grey_1um_0"] == 0.0  # all neighbours >= centre: code 8
    for off in ("d0_1", "d4_-4"):
        assert f[f"glcm_grey_contrast_{off}"] == 0.0 and f[f"glcm_grey_homogeneity_{off}"] == 1.0
        assert f[f"glcm_grey_asm_{off}"] == 1.0 and f[f"glcm_grey_entropy_{off}"] == 0.0
    assert f["grad_mean_1um"] == 0.0


def test_stain_texture_is_deterministic_and_separates_tissue_types():
    kinds = ["nuclei", "stroma", "fat", "background"]
    batch = np.stack([_synthetic_patch(k, seed) for seed in range(5) for k in kinds])
    labels = np.array(kinds * 5)
    enc = get_encoder("stain-texture", device="cpu")
    feats = enc.embed(batch)
    np.testing.assert_array_equal(feats, enc.embed(batch))
    np.testing.assert_array_equal(feats[:4], enc.embed(batch[:4]))  # batch composition does not matter
    f = {n: feats[:, i] for i, n in enumerate(feature_names())}
    assert (f["tissue_frac"][labels == "background"] < 0.05).all() and (f["tissue_frac"][labels == "stroma"] > 0.95).all()
    assert f["nuclei_frac_h0.35"][labels == "nuclei"].min() > 3 * f["nuclei_frac_h0.35"][labels == "stroma"].max()
    assert f["tissue_frac"][labels == "fat"].max() < 0.5 < f["tissue_frac"][labels == "fat"].min() + 0.45
    z = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
    dist = ((z[:, None] - z[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    assert (labels[dist.argmin(1)] == labels).all()  # leave-one-out nearest neighbour: all correct


def test_stain_texture_takes_no_weights():
    with pytest.raises(ValueError, match="encoder 'stain-texture' has no weights; got weights='w.bin'"):
        get_encoder("stain-texture", weights="w.bin")
    with pytest.raises(TypeError, match=r"takes no options; got \['depth'\]"):
        get_encoder("stain-texture", depth=1)
