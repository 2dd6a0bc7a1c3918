"""Stage II molecular encoders: token = identity + value, mean pool (RNA), top-k tokens with expression-weighted
gated pooling (protein), order-free panels, and identity tables started from local vector files."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from care_core.errors import TrainingConfigError
from care_core.train.molecular import ProteinEncoder, RNAEncoder, load_named_vectors

GENES = [f"G{i}" for i in range(12)]


def _expr(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed)) * 5


def test_rna_encoder_shapes_and_config_rebuilds_it():
    torch.manual_seed(0)
    enc = RNAEncoder(GENES, dim=16, depth=2, heads=2)
    out = enc(_expr(3, 12))
    assert out.shape == (3, 16) and torch.isfinite(out).all()
    rebuilt = RNAEncoder(**enc.config)
    rebuilt.load_state_dict(enc.state_dict())
    torch.testing.assert_close(rebuilt(_expr(3, 12)), out)
    with pytest.raises(ValueError, match=r"\[B, 12\]"):
        enc(_expr(3, 11))
    with pytest.raises(ValueError, match="'G1' twice"):
        RNAEncoder(["G1", "G2", "G1"], dim=16, depth=1, heads=2)


def test_rna_tokens_are_identity_plus_value_and_the_pool_is_their_mean():
    torch.manual_seed(1)
    enc = RNAEncoder(GENES[:4], dim=8, depth=0, heads=2)
    x = _expr(2, 4)
    enc.standardise_from(torch.tensor([[0.0, 1.0, 2.0, 3.0], [2.0, 5.0, 2.0, 3.0]]))
    mean, std = torch.tensor([1.0, 3.0, 2.0, 3.0]), torch.tensor([2**0.5, 8**0.5, 0.01, 0.01])  # std floored at 0.01
    torch.testing.assert_close(enc.value_mean, mean)
    torch.testing.assert_close(enc.value_std, std)
    z = (x - mean) / std

    def token(b: int, g: int) -> torch.Tensor:
        zz = z[b, g].reshape(1)
        return enc.norm(enc.identity.weight[g] + enc.value(zz))

    want = torch.stack([torch.stack([token(b, g) for g in range(4)]).mean(0) for b in range(2)])
    torch.testing.assert_close(enc(x), want)
    rebuilt = RNAEncoder(**enc.config)
    rebuilt.load_state_dict(enc.state_dict())  # the statistics travel with the weights
    torch.testing.assert_close(rebuilt(x), want)
    with pytest.raises(ValueError, match=r"\[N >= 2, 4\]"):
        enc.standardise_from(np.zeros((3, 5)))


def test_rna_encoder_does_not_depend_on_panel_order_but_on_which_gene_has_which_value():
    torch.manual_seed(2)
    enc = RNAEncoder(GENES, dim=16, depth=2, heads=4)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    shuffled = RNAEncoder([GENES[i] for i in perm], dim=16, depth=2, heads=4)
    enc.standardise_from(_expr(10, 12, seed=11))
    state = enc.state_dict()
    for key in ("identity.weight", "value_mean", "value_std"):
        state[key] = state[key][perm]
    shuffled.load_state_dict(state)
    x = _expr(4, 12)
    torch.testing.assert_close(shuffled(x[:, perm]), enc(x), atol=1e-5, rtol=1e-5)
    swapped = x.clone()
    swapped[:, [0, 1]] = x[:, [1, 0]]
    assert (enc(swapped) - enc(x)).abs().max() > 1e-3


def test_gene_subsets_in_training_and_every_gene_in_eval():
    torch.manual_seed(9)
    enc = RNAEncoder(GENES, dim=8, depth=0, heads=2, sample_genes=4)
    x = _expr(2, 12)
    torch.manual_seed(10)
    keep = torch.randperm(12)[:4].sort().values  # the draw forward makes from the same generator state
    torch.manual_seed(10)
    got = enc(x)
    z = x[:, keep, None]
    want = enc.norm(enc.identity.weight[keep][None] + enc.value(z)).mean(1)
    torch.testing.assert_close(got, want)
    enc.eval()
    full = RNAEncoder(GENES, dim=8, depth=0, heads=2)
    full.load_state_dict(enc.state_dict())
    torch.testing.assert_close(enc(x), full(x))
    assert RNAEncoder(**enc.config).sample_genes == 4


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(4)
    for enc, width in ((RNAEncoder(GENES, dim=8, depth=1, heads=2), 12),
                       (ProteinEncoder(GENES, dim=8, depth=1, heads=2, top_k=12), 12)):
        enc(_expr(3, width)).square().sum().backward()
        missing = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing


def test_protein_embedding_depends_only_on_the_top_k_proteins():
    torch.manual_seed(5)
    enc = ProteinEncoder(GENES, dim=16, depth=2, heads=2, top_k=3)
    x = torch.tensor([[9.0, 1.0, 8.0, 0.5, 7.0, 0.0, 2.0, 1.5, 0.2, 0.1, 0.3, 0.4]])
    changed = x.clone()
    changed[0, [1, 3, 5, 6, 11]] = torch.tensor([-3.0, 6.9, 5.0, -1.0, 0.0])  # all still below the third value, 7
    torch.testing.assert_close(enc(changed), enc(x))
    promoted = x.clone()
    promoted[0, 1] = 10.0  # G1 enters the top 3
    assert (enc(promoted) - enc(x)).abs().max() > 1e-3


def test_protein_pool_weights_are_softmax_of_gate_plus_value():
    torch.manual_seed(6)
    enc = ProteinEncoder(["A", "B", "C", "D"], dim=8, depth=0, heads=2, top_k=2)
    x = torch.tensor([[0.5, 3.0, -1.0, 2.0]])  # top 2: B (3.0), D (2.0)
    enc.standardise_from(torch.tensor([[0.0, 2.0, 0.0, 1.0], [1.0, 4.0, 0.0, 3.0]]))  # B: mean 3, std √2; D: 2, √2
    z = torch.tensor([[0.0], [0.0]])
    h = enc.norm(enc.identity.weight[[1, 3]] + enc.value(z))
    a = enc.gate_w(torch.tanh(enc.gate_v(h)) * torch.sigmoid(enc.gate_u(h))).squeeze(-1)
    alpha = torch.softmax(a + torch.tensor([3.0, 2.0]), dim=0)
    torch.testing.assert_close(enc(x)[0], (alpha[:, None] * h).sum(0))


def test_protein_panel_smaller_than_top_k_and_bad_top_k():
    torch.manual_seed(7)
    enc = ProteinEncoder(["A", "B", "C"], dim=8, depth=1, heads=2)  # top_k 10 > 3 proteins
    assert enc(_expr(2, 3)).shape == (2, 8)
    assert enc.config["top_k"] == 10 and enc.config["proteins"] == ["A", "B", "C"]
    with pytest.raises(ValueError, match="top_k=0"):
        ProteinEncoder(["A"], dim=8, depth=1, heads=2, top_k=0)


def test_identity_init_from_npz_matches_names_and_standardises(tmp_path):
    names = np.array(["G3", "OTHER", "G0", "G7"])
    vecs = np.arange(32, dtype=np.float32).reshape(4, 8) ** 1.5
    path = tmp_path / "scgpt_genes.npz"
    np.savez(path, names=names, vectors=vecs)
    torch.manual_seed(8)
    with pytest.warns(UserWarning, match="9 of 12 gene names have no vector"):
        enc = RNAEncoder(GENES, dim=8, depth=1, heads=2, init_vectors=path)
    used = vecs[[0, 2, 3]] - vecs[[0, 2, 3]].mean(axis=0)
    used /= used.std()
    np.testing.assert_allclose(enc.identity.weight[[3, 0, 7]].detach().numpy(), used, rtol=1e-5, atol=1e-6)
    assert enc.identity.weight[1].abs().sum() > 0  # unmatched genes keep their random start


def test_wider_vectors_are_reduced_by_pca_keeping_their_geometry(tmp_path):
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((32, 4)))[0]  # 4-d subspace of a 32-d space
    vecs = (rng.standard_normal((6, 4)) @ basis.T).astype(np.float32)
    path = tmp_path / "esm2.npz"
    np.savez(path, names=np.array(["A", "B", "C", "D", "E", "F"]), embeddings=vecs)
    enc = ProteinEncoder(["A", "B", "C", "D", "E", "F"], dim=8, depth=1, heads=2, init_vectors=path)
    w = enc.identity.weight.detach().numpy().astype(np.float64)
    dist_in = np.linalg.norm(vecs[:, None] - vecs[None], axis=-1)
    dist_out = np.linalg.norm(w[:, None] - w[None], axis=-1)
    ratio = dist_out[np.triu_indices(6, 1)] / dist_in[np.triu_indices(6, 1)]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)  # distances kept up to one scale


def test_safetensors_vectors_with_scgpt_vocab_or_metadata_names(tmp_path):
    from safetensors.numpy import save_file

    vecs = np.eye(3, 8, dtype=np.float32) * 2
    save_file({"vectors": vecs}, str(tmp_path / "emb.safetensors"))
    (tmp_path / "vocab.json").write_text(json.dumps({"G5": 0, "<pad>": 5, "G2": 2, "G9": 1}))
    names, loaded = load_named_vectors(tmp_path / "emb.safetensors")
    assert names == ["G5", "G9", "G2"]
    np.testing.assert_array_equal(loaded, vecs)
    save_file({"w": vecs}, str(tmp_path / "meta.safetensors"), metadata={"names": json.dumps(["G1", "G2", "G3"])})
    assert load_named_vectors(tmp_path / "meta.safetensors")[0] == ["G1", "G2", "G3"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = RNAEncoder(GENES, dim=8, depth=1, heads=2, init_vectors=tmp_path / "emb.safetensors")
    assert enc.identity.weight[5].detach().numpy() @ enc.identity.weight[9].detach().numpy() < 0  # centred rows


def test_vector_file_errors_name_the_file(tmp_path):
    with pytest.raises(TrainingConfigError, match=r"nope\.npz.*does not exist"):
        load_named_vectors(tmp_path / "nope.npz")
    np.savez(tmp_path / "bad.npz", vectors=np.zeros((2, 3)))
    with pytest.raises(TrainingConfigError, match=r"bad\.npz.*'names'"):
        load_named_vectors(tmp_path / "bad.npz")
    np.savez(tmp_path / "mouse.npz", names=np.array(["Trp53", "Mki67"]), vectors=np.ones((2, 8)))
    with pytest.raises(TrainingConfigError, match=r"mouse\.npz.*none of the 12 gene names"):
        RNAEncoder(GENES, dim=8, depth=1, heads=2, init_vectors=tmp_path / "mouse.npz")


def test_rna_alignment_is_learnt_and_retrieves_held_out_samples():
    """InfoNCE with the RNA encoder learns the synthetic pairing: a slide side that sees only the compartment
    fractions retrieves the RNA profile of held-out samples (other seeds) far above chance."""
    from care_core.synth.molecular import PROGRAM_SETS, molecular_profiles
    from care_core.train.clip import ClipHead, LogitScale, clip_loss
    from care_core.train.expression import HALLMARK_GMT, read_gene_sets

    sets = read_gene_sets(HALLMARK_GMT)
    genes = list(dict.fromkeys(g for names in PROGRAM_SETS.values() for g in sets[names[0]][:12]))  # 60 genes

    def cohort(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        frac = np.random.default_rng(seed).dirichlet(np.full(5, 0.8), n)
        rna = molecular_profiles(frac, [f"p{i}" for i in range(n)], genes=genes, seed=seed).rna
        return torch.tensor(frac, dtype=torch.float32), torch.from_numpy(np.log1p(rna))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        (f_train, r_train), (f_test, r_test) = cohort(96, seed=1), cohort(32, seed=2)
        enc = RNAEncoder(genes, dim=16, depth=1, heads=2)
        head_rna, head_slide, scale = ClipHead(16, 8), ClipHead(5, 8), LogitScale(0.1)
        modules = (enc, head_rna, head_slide, scale)
        opt = torch.optim.Adam([p for m in modules for p in m.parameters()], lr=3e-3)

        def top1(frac: torch.Tensor, rna: torch.Tensor) -> float:
            enc.eval()
            with torch.no_grad():
                hit = (head_slide(frac) @ head_rna(enc(rna)).T).argmax(1) == torch.arange(len(frac))
            enc.train()
            return hit.float().mean().item()

        enc.standardise_from(r_train)
        before = top1(f_test, r_test)
        first = None
        for _ in range(150):
            loss = clip_loss(head_slide(f_train), head_rna(enc(r_train)), scale())
            first = loss.item() if first is None else first
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < 0.7 * first
        assert before <= 2 / 32 and top1(f_test, r_test) >= 0.3  # chance: 1/32
    finally:
        torch.set_num_threads(threads)
