"""Paired RNA and protein profiles for synthetic slides, generated from their ground-truth compartments and
local structures.

Each compartment has a gene program over the gene panel (the shipped Hallmark-like panel by default): a
baseline log expression shared by all, raised by 1.5–3 (natural log units) on the genes of the Hallmark
sets that compartment stands for (tumour: proliferation; stroma: EMT / TGF-β; lymphocytes: immune
signalling; fat: adipogenesis; necrosis: hypoxia / apoptosis), plus a compartment-specific N(0, 0.8²) shift of
every gene (cell types differ broadly, not only on their marker sets).
Each local structure (``care_core.synth.tissue.STRUCTURES``) drives a signature of its own, on Hallmark sets that
no compartment program raises (TIL, lymphocytes infiltrating tumour: interferon-α, IL-6/JAK/STAT3 and TNF-α/NF-κB
signalling; TLS, tertiary lymphoid aggregates: complement, inflammatory response and the germinal centres' MYC
targets), raised by 2–3.5 per unit of its driver d_s = structure area / `STRUCTURE_REF_MM2` (0 where the slide has
none): a hot infiltrate moves some seventy genes as much as a compartment program does. A sample's expression is

    x_g = Σ_c f_c · exp(program_c,g) · exp(Σ_s d_s · signature_s,g + z_patient · L_g + ε_g),   ε_g ~ N(0, noise_sigma²),

where f_c are the compartment area fractions and z_patient three patient-level confounders (batch, age-like,
sex-like; N(0, 1) per patient) with fixed loadings L. So composition drives the compartment programs and *where*
things are (a small infiltrated nest, a few lymphoid aggregates) drives the structure signatures, which mean
pooling over a slide dilutes. Proteins follow the same scheme over 32 compartment markers, 10 structure markers
and 3 housekeeping proteins, reported as log2 abundances. Programs, signatures and loadings come from
`program_seed` only, so held-out cohorts (other seeds) share the biology of the training cohort.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from care_core._atomic import atomic_path
from care_core.synth.tissue import COMPARTMENTS, STRUCTURES

__all__ = ["PROGRAM_SETS", "PROTEIN_MARKERS", "SIGNATURE_SETS", "STRUCTURE_PROTEINS", "STRUCTURE_REF_MM2",
           "MolecularProfiles", "molecular_profiles", "signature_scores", "write_molecular_tables"]

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
SIGNATURE_SETS: dict[str, tuple[str, ...]] = {  # local structure → the Hallmark sets its signature raises
    "TIL": ("HALLMARK_INTERFERON_ALPHA_RESPONSE", "HALLMARK_IL6_JAK_STAT3_SIGNALING", "HALLMARK_TNFA_SIGNALING_VIA_NFKB"),
    "TLS": ("HALLMARK_COMPLEMENT", "HALLMARK_INFLAMMATORY_RESPONSE", "HALLMARK_MYC_TARGETS_V2"),  # + germinal centres
}
STRUCTURE_PROTEINS: dict[str, tuple[str, ...]] = {
    "TIL": ("PRF1", "IFNG", "CXCL9", "CD274", "LAG3"),
    "TLS": ("CXCL13", "CR2", "CD19", "BCL6", "LAMP3"),
}
STRUCTURE_REF_MM2: dict[str, float] = {"TIL": 1.2, "TLS": 0.6}  # structure area of driver 1 (a typical one)
HOUSEKEEPING = ("GAPDH", "ACTB", "TUBB")
_CONFOUNDERS = ("batch", "age", "sex")
_NAMES = [COMPARTMENTS[k] for k in sorted(COMPARTMENTS)]  # column order of `fractions`
_STRUCTS = [STRUCTURES[k] for k in sorted(STRUCTURES)]  # column order of `structure_mm2`


@dataclass(frozen=True)
class MolecularProfiles:
    """rna [N, G] TPM-like (≥ 0) over `genes`; protein [N, P] log2 abundances over `proteins`."""

    rna: np.ndarray
    protein: np.ndarray
    genes: list[str]
    proteins: list[str]
    signatures: dict[str, list[str]]  # signature name (compartment or structure) → its genes in the panel


def _programs(names: Sequence[str], raised: dict[str, set[str]], rng: np.random.Generator, base_mean: float,
              base_sd: float, up: tuple[float, float], jitter: float) -> np.ndarray:
    """[5, len(names)] log-scale programs: shared baseline + `up`-range raise on each compartment's names."""
    base = rng.normal(base_mean, base_sd, len(names))
    out = base[None] + rng.normal(0.0, jitter, (len(_NAMES), len(names)))
    for c, comp in enumerate(_NAMES):
        hit = np.array([n in raised[comp] for n in names])
        out[c, hit] += rng.uniform(*up, hit.sum())
    return out


def _signature(names: Sequence[str], members: set[str], rng: np.random.Generator, up: tuple[float, float]) -> np.ndarray:
    """[len(names)] raise per unit of driver: `up`-range on `members`, 0 elsewhere."""
    hit = np.array([n in members for n in names])
    out = np.zeros(len(names))
    out[hit] = rng.uniform(*up, hit.sum())
    return out


def _signature_genes(genes: Sequence[str]) -> dict[str, list[str]]:
    """Genes of each compartment program and each structure signature (structure genes exclude every program's)."""
    from care_core.train.expression import HALLMARK_GMT, read_gene_sets

    sets = read_gene_sets(HALLMARK_GMT)
    panel = set(genes)
    out = {c: sorted({g for s in PROGRAM_SETS[c] for g in sets[s]} & panel) for c in _NAMES}
    taken = set().union(*out.values())
    for name in _STRUCTS:
        out[name] = sorted({g for s in SIGNATURE_SETS[name] for g in sets[s]} & panel - taken)
        taken |= set(out[name])
    return out


def molecular_profiles(fractions: np.ndarray, patients: Sequence[str], *, structure_mm2: np.ndarray | None = None,
                       genes: Sequence[str] | None = None, seed: int = 0, program_seed: int = 0,
                       noise_sigma: float = 0.25, confounder_sd: float = 0.15) -> MolecularProfiles:
    """RNA and protein profiles of N samples from their compartment area fractions and local structures.

    fractions: [N, 5] area shares of tumour, stroma, lymphocytes, fat, necrosis (rows are rescaled to sum 1).
    patients: N patient ids; samples of one patient share its confounders. structure_mm2: [N, 2] area (mm²) of
    TIL and TLS on each slide (default none). genes: the panel (default: the shipped Hallmark-like panel).
    seed: draws the patients' confounders and the noise; program_seed: programs, signatures and loadings.
    """
    from care_core.train.expression import read_gene_panel

    f = np.asarray(fractions, np.float64)
    if f.ndim != 2 or f.shape[1] != len(_NAMES) or len(f) != len(patients) or (f < 0).any() or not (f.sum(1) > 0).all():
        raise ValueError(f"fractions {f.shape} must be [N={len(patients)}, {len(_NAMES)}] non-negative rows with a "
                         f"positive sum ({', '.join(_NAMES)})")
    f = f / f.sum(axis=1, keepdims=True)
    area = np.zeros((len(f), len(_STRUCTS))) if structure_mm2 is None else np.asarray(structure_mm2, np.float64)
    if area.shape != (len(f), len(_STRUCTS)) or not np.isfinite(area).all() or (area < 0).any():
        raise ValueError(f"structure_mm2 {area.shape} must be [N={len(f)}, {len(_STRUCTS)}] non-negative areas "
                         f"({', '.join(_STRUCTS)})")
    drive = area / np.array([STRUCTURE_REF_MM2[s] for s in _STRUCTS])
    genes = read_gene_panel() if genes is None else list(genes)
    members = _signature_genes(genes)
    prng = np.random.default_rng([program_seed, 211])
    rna_prog = _programs(genes, {c: set(members[c]) for c in _NAMES}, prng,
                         base_mean=2.0, base_sd=1.5, up=(1.5, 3.0), jitter=0.8)
    proteins = ([p for c in _NAMES for p in PROTEIN_MARKERS[c]] + [p for s in _STRUCTS for p in STRUCTURE_PROTEINS[s]]
                + list(HOUSEKEEPING))
    prot_prog = _programs(proteins, {c: set(PROTEIN_MARKERS[c]) for c in _NAMES}, prng,
                          base_mean=3.0, base_sd=0.5, up=(2.0, 3.5), jitter=0.2)
    prot_prog[:, -len(HOUSEKEEPING):] = prot_prog[0, -len(HOUSEKEEPING):] + 1.5  # flat and abundant
    loadings_rna = prng.normal(0.0, confounder_sd, (len(_CONFOUNDERS), len(genes)))
    loadings_prot = prng.normal(0.0, confounder_sd, (len(_CONFOUNDERS), len(proteins)))
    srng = np.random.default_rng([program_seed, 223])  # its own stream: the programs above stay as they were
    sig_rna = np.stack([_signature(genes, set(members[s]), srng, (2.0, 3.5)) for s in _STRUCTS])
    sig_prot = np.stack([_signature(proteins, set(STRUCTURE_PROTEINS[s]), srng, (1.5, 2.5)) for s in _STRUCTS])
    prot_prog[:, [proteins.index(p) for s in _STRUCTS for p in STRUCTURE_PROTEINS[s]]] = 2.0  # flat and low without a driver

    rng = np.random.default_rng([seed, 307])
    ids = list(dict.fromkeys(patients))
    z = rng.standard_normal((len(ids), len(_CONFOUNDERS)))[[ids.index(p) for p in patients]]
    rna = (f @ np.exp(rna_prog)) * np.exp(drive @ sig_rna + z @ loadings_rna
                                          + rng.normal(0.0, noise_sigma, (len(f), len(genes))))
    prot = (np.log(f @ np.exp(prot_prog)) + drive @ sig_prot + z @ loadings_prot
            + rng.normal(0.0, noise_sigma, (len(f), len(proteins))))
    return MolecularProfiles(rna.astype(np.float32), (prot / np.log(2.0)).astype(np.float32), genes, proteins, members)


def signature_scores(rna: np.ndarray, genes: Sequence[str], signatures: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Per sample, the mean log1p expression over each signature's genes: {signature: [N]}."""
    col = {g: i for i, g in enumerate(genes)}
    logx = np.log1p(np.asarray(rna, np.float64))
    return {name: logx[:, [col[g] for g in members]].mean(1) for name, members in signatures.items() if members}


def write_molecular_tables(out_dir: str | os.PathLike, sample_ids: Sequence[str], prof: MolecularProfiles,
                           patients: Sequence[str], *, seed: int = 0, protein_missing: float = 0.2) -> tuple[Path, Path]:
    """Write profiles `prof` (``molecular_profiles``) as `<out_dir>/rna.h5ad` (samples × genes, obs column
    `patient`) and `<out_dir>/protein.csv` (sample_id, then one column per protein); returns both paths.

    protein_missing: share of samples left out of the protein table (drawn from `seed`), as in real cohorts
    where fewer samples have protein than RNA.
    """
    from care_core.train.expression import write_h5ad

    out_dir = Path(out_dir)
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
