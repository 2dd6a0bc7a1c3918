"""Pathology foundation encoders as timm ViTs with their published architectures, sizes and normalisations.

CONCH v1.5 (the TITAN patch encoder: ViT-L/16 at 448 px, attention-pooled to 768-d), UNI2-h (ViT-H/14,
8 registers, SwiGLU), Virchow2 (ViT-H/14, 4 registers, SwiGLU; class token ⊕ mean patch token), H-optimus-0
(ViT-g/14, 4 registers), Prov-GigaPath (ViT-g/14 with 16-px patches), Phikon-v2 (ViT-L/16, DINOv2), and
`timm:<arch>` for any timm architecture. Weights come from a local file or the offline model-hub cache;
nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from care_core.errors import CheckpointError, MissingWeightsError, UnknownEncoderError
from care_core.features.spec import EncoderSpec, PatchEncoder, register_encoder

__all__ = ["TimmPatchEncoder", "SPECS", "timm_arch_spec", "build_timm_arch", "load_state_dict_file", "sha256_file"]

H_OPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
H_OPTIMUS_STD = (0.211883, 0.230117, 0.177517)
_SWIGLU = {"mlp_layer": "swiglu_packed", "act_layer": "silu"}

SPECS = [
    EncoderSpec(
        name="conch_v15", dim=768, input_px=448, patch_px=512, arch="vit_large_patch16_224",
        timm_kwargs={"img_size": 448, "init_values": 1.0, "num_classes": 0, "global_pool": "", "dynamic_img_size": True},
        pool="attn_pool", hub_repo="MahmoodLab/conchv1_5", hub_filename="pytorch_model_vision.bin", precision="fp16",
        description="CONCH v1.5 (TITAN's patch encoder): ViT-L/16 at 448 px + attentional pooler, 768-d",
    ),
    EncoderSpec(
        name="uni_v2", dim=1536, input_px=224, patch_px=224, arch="vit_giant_patch14_224",
        timm_kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                     "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "num_classes": 0, "no_embed_class": True,
                     "reg_tokens": 8, "dynamic_img_size": True, **_SWIGLU},
        hub_repo="MahmoodLab/UNI2-h", hub_filename="pytorch_model.bin",
        description="UNI2-h: ViT-H/14 with 8 registers and SwiGLU, 1536-d class token",
    ),
    EncoderSpec(
        name="virchow2", dim=2560, input_px=224, patch_px=224, interpolation="bicubic", arch="vit_huge_patch14_224",
        timm_kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4, "mlp_ratio": 5.3375,
                     "global_pool": "", "dynamic_img_size": True, **_SWIGLU},
        pool="cls+mean", hub_repo="paige-ai/Virchow2", hub_filename="pytorch_model.bin", precision="fp16",
        description="Virchow2: ViT-H/14 with 4 registers and SwiGLU; class token ⊕ mean patch token, 2560-d",
    ),
    EncoderSpec(
        name="h-optimus-0", dim=1536, input_px=224, patch_px=224, mean=H_OPTIMUS_MEAN, std=H_OPTIMUS_STD,
        arch="vit_giant_patch14_reg4_dinov2",
        timm_kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0, "global_pool": "token",
                     "dynamic_img_size": False},
        hub_repo="bioptimus/H-optimus-0", hub_filename="pytorch_model.bin", precision="fp16",
        description="H-optimus-0: ViT-g/14 with 4 registers, 1536-d class token",
    ),
    EncoderSpec(
        name="gigapath", dim=1536, input_px=224, patch_px=256, crop_pct=224 / 256, interpolation="bicubic",
        arch="vit_giant_patch14_dinov2",
        timm_kwargs={"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40,
                     "num_heads": 24, "mlp_ratio": 5.33334, "num_classes": 0},
        hub_repo="prov-gigapath/prov-gigapath", hub_filename="pytorch_model.bin",
        description="Prov-GigaPath tile encoder: ViT-g with 16-px patches, 256 → centre 224 px, 1536-d",
    ),
    EncoderSpec(
        name="phikon_v2", dim=1024, input_px=224, patch_px=224, arch="vit_large_patch16_224",
        timm_kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0, "global_pool": "token"},
        hub_repo="owkin/phikon-v2", hub_filename="model.safetensors", precision="fp32",
        description="Phikon-v2: ViT-L/16 (DINOv2), 1024-d class token; Hugging Face weights converted",
    ),
]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict_file(path: str | os.PathLike) -> dict:
    """Tensors of a `.safetensors` file, or of a `.bin`/`.pth`/`.pt` read with `torch.load(weights_only=True)`.

    A checkpoint dict wrapping the weights under "state_dict"/"model" is unwrapped; "module." prefixes go.
    """
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file: say which and why
        raise CheckpointError(f"cannot read weights file {str(path)!r}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise CheckpointError(f"weights file {str(path)!r} holds a {type(sd).__name__}, not a dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _hf_dinov2_to_timm(sd: dict) -> dict:
    """Rename a Hugging Face `Dinov2Model` state dict to timm `VisionTransformer` names (q, k, v fused)."""
    import torch

    out = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    n_blocks = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layer."))
    rename = {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
              "attention.output.dense": "attn.proj"}
    for i in range(n_blocks):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for a, b in rename.items():
            for p in ("weight", "bias"):
                out[f"{dst}{b}.{p}"] = sd[f"{src}{a}.{p}"]
        for p in ("weight", "bias"):
            out[f"{dst}attn.qkv.{p}"] = torch.cat(
                [sd[f"{src}attention.attention.{q}.{p}"] for q in ("query", "key", "value")], dim=0
            )
        out[f"{dst}ls1.gamma"] = sd[f"{src}layer_scale1.lambda1"]
        out[f"{dst}ls2.gamma"] = sd[f"{src}layer_scale2.lambda1"]
    return out


def _attention_pooler(d_model: int, context_dim: int, n_head: int):
    import torch
    import torch.nn.functional as F
    from torch import nn

    class AttentionalPooler(nn.Module):
        """One learned query attends over all tokens (CoCa-style pooler, as in CONCH)."""

        def __init__(self) -> None:
            super().__init__()
            self.heads = n_head
            self.query = nn.Parameter(torch.randn(1, d_model) * 0.02)
            self.ln_q, self.ln_k = nn.LayerNorm(d_model), nn.LayerNorm(context_dim)
            self.to_q = nn.Linear(d_model, d_model, bias=False)
            self.to_kv = nn.Linear(context_dim, 2 * d_model, bias=False)
            self.to_out = nn.Linear(d_model, d_model, bias=False)

        def _heads(self, t):  # [B, T, heads * d] -> [B, heads, T, d]
            return t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)

        def forward(self, tokens):  # [B, N, context_dim] -> [B, d_model]
            b = tokens.shape[0]
            q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)
            k, v = self.to_kv(self.ln_k(tokens)).chunk(2, dim=-1)
            out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
            return self.to_out(out.transpose(1, 2).reshape(b, 1, -1))[:, 0]

    return AttentionalPooler()


def _build_network(spec: EncoderSpec, overrides: dict):
    """The timm network of `spec` with random weights (for "attn_pool", the trunk plus CONCH's pooler)."""
    import timm
    from torch import nn

    layers = {"swiglu_packed": timm.layers.SwiGLUPacked, "silu": nn.SiLU}
    kwargs = {k: layers.get(v, v) if k in ("mlp_layer", "act_layer") else v for k, v in spec.timm_kwargs.items()}
    trunk = timm.create_model(spec.arch, pretrained=False, **{**kwargs, **overrides})

    if spec.pool == "attn_pool":
        class ConchVision(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.trunk = trunk
                self.attn_pool_contrast = _attention_pooler(spec.dim, trunk.num_features, 8)
                self.ln_contrast = nn.LayerNorm(spec.dim)

            def forward(self, x):
                return self.ln_contrast(self.attn_pool_contrast(self.trunk.forward_features(x)))

        return ConchVision()
    return trunk


def _trunk(net):
    return getattr(net, "trunk", net)


def _fit_state_dict(spec: EncoderSpec, net, sd: dict) -> dict:
    """Convert foreign key layouts and resample position embeddings to the network's grid."""
    from timm.layers import resample_abs_pos_embed

    if "embeddings.cls_token" in sd:
        sd = _hf_dinov2_to_timm(sd)
    trunk = _trunk(net)
    prefix = "trunk." if spec.pool == "attn_pool" else ""
    key = prefix + "pos_embed"
    if key in sd and sd[key].shape != trunk.pos_embed.shape:
        n_prefix = 0 if getattr(trunk, "no_embed_class", False) else trunk.num_prefix_tokens
        resized = resample_abs_pos_embed(sd[key], new_size=trunk.patch_embed.grid_size, num_prefix_tokens=n_prefix)
        sd = {**sd, key: resized}
    return sd


def _find_weights(spec: EncoderSpec, weights) -> Path:
    """The weight file: `weights` if given, else the file cached by the model hub (never downloaded)."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MissingWeightsError(
                f"weights file {str(path)!r} for encoder {spec.name!r} does not exist; "
                f"expected {spec.hub_filename or 'a .safetensors/.bin/.pth file'}"
                + (f" from https://huggingface.co/{spec.hub_repo}" if spec.hub_repo else "")
            )
        return path
    if spec.hub_repo:
        from huggingface_hub import constants, try_to_load_from_cache

        for filename in dict.fromkeys((spec.hub_filename, "model.safetensors", "pytorch_model.bin")):
            cached = try_to_load_from_cache(spec.hub_repo, filename)
            if isinstance(cached, str) and Path(cached).is_file():
                return Path(cached)
        cache = constants.HF_HUB_CACHE
    else:
        cache = "(no model-hub repository known for it)"
    raise MissingWeightsError(
        f"encoder {spec.name!r} needs its weights file {spec.hub_filename or 'model.safetensors'!r}"
        + (f" from https://huggingface.co/{spec.hub_repo} (accept its licence there)" if spec.hub_repo else "")
        + f"; nothing is downloaded. Pass weights='/path/to/{spec.hub_filename or 'model.safetensors'}' "
        f"(CLI: --weights PATH), or put the repository in the offline model-hub cache {cache} "
        f"(e.g. `huggingface-cli download {spec.hub_repo or '<repo>'} {spec.hub_filename or 'model.safetensors'}`)"
    )


class TimmPatchEncoder(PatchEncoder):
    """A frozen timm network behind `embed(uint8 [B, H, W, 3]) -> float32 [B, dim]`.

    embed resizes to `input_px / crop_pct` if needed, centre-crops `input_px`, normalises with the spec's
    mean/std, and runs under `torch.inference_mode` (CUDA: channels_last and fp16/bf16 autocast).
    """

    def __init__(self, spec: EncoderSpec, net, *, device: str, weights_sha256: str) -> None:
        import torch

        super().__init__(spec, device=device, weights_sha256=weights_sha256)
        self.net = net.eval().requires_grad_(False).to(device)
        self._cuda = torch.device(device).type == "cuda"
        if self._cuda:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.precision)
        self._mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1) * 255.0

    def preprocess(self, batch_uint8_nhwc):
        """uint8 [B, H, W, 3] (numpy or torch) → normalised float32 [B, 3, input_px, input_px] on the device."""
        import torch
        import torch.nn.functional as F

        x = batch_uint8_nhwc
        x = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected uint8 patches [B, H, W, 3], got shape {tuple(x.shape)}")
        if self._cuda and x.device.type == "cpu":
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (self.resize_px, self.resize_px) and x.shape[-2:] != (self.input_px, self.input_px):
            x = F.interpolate(x, size=(self.resize_px, self.resize_px), mode=self.spec.interpolation,
                              antialias=True, align_corners=False).clamp_(0, 255)
        off = (x.shape[-1] - self.input_px) // 2
        if off:
            x = x[..., off: off + self.input_px, off: off + self.input_px]
        x = (x - self._mean) / self._std
        return x.contiguous(memory_format=torch.channels_last) if self._cuda else x

    def embed(self, batch_uint8_nhwc) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = self.preprocess(batch_uint8_nhwc)
            return self.forward_tensor(x)

    def forward_tensor(self, x) -> np.ndarray:
        """Features [B, dim] of already preprocessed input [B, 3, input_px, input_px] on the device."""
        import torch

        with torch.inference_mode(), torch.autocast(
            device_type="cuda" if self._cuda else "cpu", dtype=self._dtype or torch.float32,
            enabled=self._cuda and self._dtype is not None,
        ):
            if self.spec.pool == "cls+mean":
                t = self.net.forward_features(x)
                out = torch.cat([t[:, 0], t[:, self.net.num_prefix_tokens:].mean(1)], dim=-1)
            else:
                out = self.net(x)
        return out.float().cpu().numpy()


def _build(spec: EncoderSpec, weights, device: str, *, random_init: bool = False, **overrides) -> TimmPatchEncoder:
    if random_init:
        if weights is not None:
            raise ValueError(f"encoder {spec.name!r}: pass either weights={str(weights)!r} or random_init=True, not both")
        net, sha = _build_network(spec, overrides), "random-init"
    else:
        path = _find_weights(spec, weights)
        net = _build_network(spec, overrides)
        sd = _fit_state_dict(spec, net, load_state_dict_file(path))
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"weights file {str(path)!r} does not fit encoder {spec.name!r} ({spec.arch}): "
                f"{str(exc).splitlines()[0]} ... (is it the right model's file?)"
            ) from exc
        sha = sha256_file(path)
    out_dim = _out_dim(net, spec)
    if out_dim != spec.dim:
        raise ValueError(f"encoder {spec.name!r} built with {overrides} gives {out_dim}-d features, not {spec.dim}")
    return TimmPatchEncoder(spec, net, device=device, weights_sha256=sha)


def _out_dim(net, spec: EncoderSpec) -> int:
    trunk = _trunk(net)
    if spec.pool == "cls+mean":
        return 2 * trunk.num_features
    if spec.pool == "attn_pool":
        return net.ln_contrast.normalized_shape[0]
    return trunk.num_features


for _spec in SPECS:
    register_encoder(_spec)(_build)


def timm_arch_spec(arch: str, **overrides) -> EncoderSpec:
    """Spec of `timm:<arch>`: dim, input size, mean/std and interpolation from timm's config (built on 'meta')."""
    import timm
    import torch

    if not timm.is_model(arch):
        raise UnknownEncoderError(f"unknown timm architecture {arch!r}; see timm.list_models() for the choices")
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0, **overrides)
    cfg = model.pretrained_cfg
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    interpolation = cfg.get("interpolation") if cfg.get("interpolation") in ("bilinear", "bicubic") else "bilinear"
    return EncoderSpec(
        name=f"timm:{arch}", dim=int(model.num_features), input_px=size, patch_px=size,
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))), std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        interpolation=interpolation,
        arch=arch, timm_kwargs={"num_classes": 0}, hub_repo=cfg.get("hf_hub_id", "") or "",
        hub_filename="model.safetensors", description=f"timm architecture {arch}",
    )


def build_timm_arch(arch: str, weights, device: str, *, random_init: bool = False, **overrides) -> TimmPatchEncoder:
    """`get_encoder("timm:<arch>")`: the architecture with a local or cached weight file (or random weights)."""
    return _build(timm_arch_spec(arch, **overrides), weights, device, random_init=random_init, **overrides)
