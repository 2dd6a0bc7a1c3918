"""Paired RNA and protein profiles for synthetic slides, generated from their ground-truth compartments.

Each compartment has a gene program over the gene panel (the shipped Hallmark-like panel by default): a
baseline log expression shared by all, raised by 1.5–3 (natural log units) on the genes of the Hallmark
sets that compartment stands for (tumour: proliferation; stroma: EMT / TGF-β; lymphocytes: immune
signalling; fat: adipogenesis; necrosis: hypoxia / apoptosis), plus a compartment-specific N(0, 0.8²) shift of
every gene (cell types differ broadly, not only on their marker sets).
A sample's expression is the area-weighted mix of the programs in linear space,

    x_g = Σ_c f_c · exp(program_c,g) · exp(z_patient · L_g + ε_g),   ε_g ~ N(0, noise_sigma²),

where z_patient are three patient-level confounders (batch, age-like, sex-like; N(0, 1) per patient) with
fixed loadings L. Proteins follow the same scheme over a panel of 32 marker proteins, reported as log2
abundances. Programs and loadings come from `program_seed` only, so held-out cohorts (other seeds) share
the biology of the training cohort.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from care_core._atomic import atomic_path
from care_core.synth.tissue import COMPARTMENTS

__all__ = ["PROGRAM_SETS", "PROTEIN_MARKERS", "MolecularProfiles", "molecular_profiles", "write_molecular_tables"]

PROGRAM_SETS: dict[str, tuple[str, ...]] = {  # compartment → the Hallmark sets its program raises
    "tumour": ("HALLMARK_E2F_TARGETS", "HALLMARK_G2M_CHECKPOINT", "HALLMARK_MYC_TARGETS_V1"),
    "stroma": ("HALLMARK_EPITHELIAL_MESENCHYMAL_TRANSITION", "HALLMARK_TGF_BETA_SIGNALING", "HALLMARK_ANGIOGENESIS"),
    "lymphocytes": ("HALLMARK_ALLOGRAFT_REJECTION", "HALLMARK_IL2_STAT5_SIGNALING",
                    "HALLMARK_INTERFERON_GAMMA_RESPONSE"),
    "fat": ("HALLMARK_ADIPOGENESIS", "HALLMARK_FATTY_ACID_METABOLISM", "HALLMARK_PEROXISOME"),
    "necrosis": ("HALLMARK_HYPOXIA", "HALLMARK_APOPTOSIS", "HALLMARK_GLYCOLYSIS"),
}
PROTEIN_MARKERS: dict[str, tuple[str, ...]] = {  # compartment → proteins it raises; HOUSEKEEPING are flat
    "tumour": ("MKI67", "PCNA", "CCNB1", "MYC", "KRT8", "CDH1", "EGFR"),
    "stroma": ("VIM", "COL1A1", "ACTA2", "FN1", "SPARC", "PDGFRB"),
    "lymphocytes": ("PTPRC", "CD3E", "CD8A", "CD4", "MS4A1", "GZMB"),
    "fat": ("PLIN1", "FABP4", "ADIPOQ", "LEP", "PPARG"),
    "necrosis": ("CASP3", "HIF1A", "CA9", "BAX", "LDHA"),
}
HOUSEKEEPING = ("GAPDH", "ACTB", "TUBB")
_CONFOUNDERS = ("batch", "age", "sex")
_NAMES = [COMPARTMENTS[k] for k in sorted(COMPARTMENTS)]  # column order of `fractions`


@dataclass(frozen=True)
class MolecularProfiles:
    """rna [N, G] TPM-like (≥ 0) over `genes`; protein [N, P] log2 abundances over `proteins`."""

    rna: np.ndarray
    protein: np.ndarray
    genes: list[str]
    proteins: list[str]


def _programs(names: Sequence[str], raised: dict[str, set[str]], rng: np.random.Generator, base_mean: float,
              base_sd: float, up: tuple[float, float], jitter: float) -> np.ndarray:
    """[5, len(names)] log-scale programs: shared baseline + `up`-range raise on each compartment's names."""
    base = rng.normal(base_mean, base_sd, len(names))
    out = base[None] + rng.normal(0.0, jitter, (len(_NAMES), len(names)))
    for c, comp in enumerate(_NAMES):
        hit = np.array([n in raised[comp] for n in names])
        out[c, hit] += rng.uniform(*up, hit.sum())
    return out


def molecular_profiles(fractions: np.ndarray, patients: Sequence[str], *, genes: Sequence[str] | None = None,
                       seed: int = 0, program_seed: int = 0, noise_sigma: float = 0.25,
                       confounder_sd: float = 0.15) -> MolecularProfiles:
    """RNA and protein profiles of N samples from their compartment area fractions.

    fractions: [N, 5] area shares of tumour, stroma, lymphocytes, fat, necrosis (rows are rescaled to sum 1).
    patients: N patient ids; samples of one patient share its confounders. genes: the panel (default: the
    shipped Hallmark-like panel). seed: draws the patients' confounders and the noise; program_seed: the
    programs and confounder loadings.
    """
    from care_core.train.expression import HALLMARK_GMT, read_gene_panel, read_gene_sets

    f = np.asarray(fractions, np.float64)
    if f.ndim != 2 or f.shape[1] != len(_NAMES) or len(f) != len(patients) or (f < 0).any() or not (f.sum(1) > 0).all():
        raise ValueError(f"fractions {f.shape} must be [N={len(patients)}, {len(_NAMES)}] non-negative rows with a "
                         f"positive sum ({', '.join(_NAMES)})")
    f = f / f.sum(axis=1, keepdims=True)
    genes = read_gene_panel() if genes is None else list(genes)
    sets = read_gene_sets(HALLMARK_GMT)
    prng = np.random.default_rng([program_seed, 211])
    rna_prog = _programs(genes, {c: {g for s in PROGRAM_SETS[c] for g in sets[s]} for c in _NAMES}, prng,
                         base_mean=2.0, base_sd=1.5, up=(1.5, 3.0), jitter=0.8)
    proteins = [p for c in _NAMES for p in PROTEIN_MARKERS[c]] + list(HOUSEKEEPING)
    prot_prog = _programs(proteins, {c: set(PROTEIN_MARKERS[c]) for c in _NAMES}, prng,
                          base_mean=3.0, base_sd=0.5, up=(2.0, 3.5), jitter=0.2)
    prot_prog[:, -len(HOUSEKEEPING):] = prot_prog[0, -len(HOUSEKEEPING):] + 1.5  # flat and abundant
    loadings_rna = prng.normal(0.0, confounder_sd, (len(_CONFOUNDERS), len(genes)))
    loadings_prot = prng.normal(0.0, confounder_sd, (len(_CONFOUNDERS), len(proteins)))

    rng = np.random.default_rng([seed, 307])
    ids = list(dict.fromkeys(patients))
    z = rng.standard_normal((len(ids), len(_CONFOUNDERS)))[[ids.index(p) for p in patients]]
    rna = (f @ np.exp(rna_prog)) * np.exp(z @ loadings_rna + rng.normal(0.0, noise_sigma, (len(f), len(genes))))
    prot = np.log(f @ np.exp(prot_prog)) + z @ loadings_prot + rng.normal(0.0, noise_sigma, (len(f), len(proteins)))
    return MolecularProfiles(rna.astype(np.float32), (prot / np.log(2.0)).astype(np.float32), genes, proteins)


def write_molecular_tables(out_dir: str | os.PathLike, sample_ids: Sequence[str], fractions: np.ndarray,
                           patients: Sequence[str], *, seed: int = 0, program_seed: int = 0,
                           protein_missing: float = 0.2, genes: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Write `<out_dir>/rna.h5ad` (samples × genes, obs column `patient`) and `<out_dir>/protein.csv`
    (sample_id, then one column per protein) for the given samples; returns both paths.

    protein_missing: share of samples left out of the protein table (drawn from `seed`), as in real cohorts
    where fewer samples have protein than RNA.
    """
    from care_core.train.expression import write_h5ad

    out_dir = Path(out_dir)
    prof = molecular_profiles(fractions, patients, genes=genes, seed=seed, program_seed=program_seed)
    rna_path = write_h5ad(out_dir / "rna.h5ad", prof.rna, sample_ids, prof.genes, obs={"patient": list(patients)})
    keep = np.random.default_rng([seed, 401]).random(len(sample_ids)) >= protein_missing
    protein_path = out_dir / "protein.csv"
    with atomic_path(protein_path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sample_id", *prof.proteins])
        for sid, row, k in zip(sample_ids, prof.protein, keep):
            if k:
                writer.writerow([sid, *(f"{v:.4f}" for v in row)])
    return rna_path, protein_path
