"""Stage II inputs: the shipped Hallmark-like panel, GMT / gene-list panels, matrices from CSV, Parquet and
.h5ad (checked against anndata both ways), and pairing feature files with samples on hand-made tables."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest

from care_core.errors import TrainingConfigError
from care_core.train.expression import (
    HALLMARK_GMT, load_molecular, read_cohort_table, read_gene_panel, read_gene_sets, read_matrix, write_h5ad,
)

VALUES = np.array([[0.0, 1.0, 3.0], [7.0, 0.5, 2.0], [1.0, 1.0, 1.0]], np.float32)
SAMPLES, GENES = ["s1", "s2", "s3"], ["TP53", "MKI67", "VIM"]


def test_shipped_panel_has_the_50_hallmark_sets_of_real_symbols():
    sets = read_gene_sets(HALLMARK_GMT)
    assert len(sets) == 50
    assert all(name.startswith("HALLMARK_") for name in sets)
    assert {"HALLMARK_HYPOXIA", "HALLMARK_E2F_TARGETS", "HALLMARK_ADIPOGENESIS"} <= sets.keys()
    assert min(len(g) for g in sets.values()) >= 25
    assert "VEGFA" in sets["HALLMARK_HYPOXIA"] and "ADIPOQ" in sets["HALLMARK_ADIPOGENESIS"]
    panel = read_gene_panel()
    assert len(panel) == len(set(panel)) == len({g for genes in sets.values() for g in genes})
    assert all(re.fullmatch(r"[A-Z][A-Z0-9-]*", g) for g in panel)
    assert panel[:3] == sets["HALLMARK_ADIPOGENESIS"][:3]  # file order, first appearance


def test_gmt_and_gene_list_panels(tmp_path):
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("SET_A\tdesc\tG1\tG2\tG3\nSET_B\t\tG3\tG4\n")
    assert read_gene_sets(gmt) == {"SET_A": ["G1", "G2", "G3"], "SET_B": ["G3", "G4"]}
    assert read_gene_panel(gmt) == ["G1", "G2", "G3", "G4"]
    txt = tmp_path / "genes.txt"
    txt.write_text("# my panel\nG7\n\nG2\nG7\n")
    assert read_gene_panel(txt) == ["G7", "G2"]
    bad = tmp_path / "spaces.gmt"
    bad.write_text("SET_A desc G1 G2\n")
    with pytest.raises(TrainingConfigError, match=r"spaces\.gmt.*line 1.*tab-separated"):
        read_gene_sets(bad)


@pytest.mark.parametrize("kind", ["csv", "tsv", "parquet", "h5ad-ours", "h5ad-anndata-dense", "h5ad-anndata-csr"])
def test_every_matrix_format_reads_the_same(tmp_path, kind):
    df = pd.DataFrame(VALUES, index=pd.Index(SAMPLES, name="sample_id"), columns=GENES)
    if kind in ("csv", "tsv"):
        path = tmp_path / f"m.{kind}"
        df.to_csv(path, sep="," if kind == "csv" else "\t")
    elif kind == "parquet":
        path = tmp_path / "m.parquet"
        df.to_parquet(path)
    else:
        path = tmp_path / "m.h5ad"
        if kind == "h5ad-ours":
            write_h5ad(path, VALUES, SAMPLES, GENES)
        else:
            import anndata
            import scipy.sparse

            x = scipy.sparse.csr_matrix(VALUES) if kind.endswith("csr") else VALUES
            anndata.AnnData(x, obs=pd.DataFrame(index=SAMPLES), var=pd.DataFrame(index=GENES)).write_h5ad(path)
    m = read_matrix(path)
    assert m.samples == SAMPLES and m.features == GENES
    np.testing.assert_array_equal(m.values, VALUES)
    assert m.values.dtype == np.float32


def test_our_h5ad_reads_in_anndata(tmp_path):
    import anndata

    path = write_h5ad(tmp_path / "ours.h5ad", VALUES, SAMPLES, GENES, obs={"patient": ["p1", "p1", "p2"]})
    adata = anndata.read_h5ad(path)
    assert list(adata.obs_names) == SAMPLES and list(adata.var_names) == GENES
    assert list(adata.obs["patient"]) == ["p1", "p1", "p2"]
    np.testing.assert_array_equal(np.asarray(adata.X), VALUES)
    assert not list(tmp_path.glob(".*.tmp"))


def test_matrix_errors_name_the_file(tmp_path):
    with pytest.raises(TrainingConfigError, match=r"nope\.csv.*does not exist"):
        read_matrix(tmp_path / "nope.csv")
    dup = tmp_path / "dup.csv"
    dup.write_text("sample,G1,G2\ns1,1,2\ns1,3,4\n")
    with pytest.raises(TrainingConfigError, match=r"dup\.csv.*sample ids are not unique.*'s1'"):
        read_matrix(dup)
    text = tmp_path / "text.csv"
    text.write_text("sample,G1\ns1,high\n")
    with pytest.raises(TrainingConfigError, match=r"text\.csv.*non-numeric"):
        read_matrix(text)
    notad = tmp_path / "plain.h5ad"
    notad.write_bytes(b"not hdf5")
    with pytest.raises(TrainingConfigError, match=r"cannot read matrix .*plain\.h5ad"):
        read_matrix(notad)


def _cohort(tmp_path, sample_ids=("s1", "s2", "s3", "s4")):
    rows = ["slide,features,sample_id,patient"]
    for i, sid in enumerate(sample_ids):
        (tmp_path / f"slide{i}.h5").write_bytes(b"")
        rows.append(f"slide{i}.svs,slide{i}.h5,{sid},p{i // 2}")
    table = tmp_path / "cohort.csv"
    table.write_text("\n".join(rows) + "\n")
    return table


def test_pairing_skips_and_counts_missing_samples_and_reports_missing_genes_once(tmp_path):
    table = _cohort(tmp_path)
    rna = tmp_path / "rna.csv"
    pd.DataFrame(VALUES, index=SAMPLES, columns=GENES).to_csv(rna)  # s4 has no RNA
    prot = tmp_path / "prot.csv"
    pd.DataFrame([[1.5, -0.5], [np.nan, 2.0], [0.0, 0.0]], index=["s1", "s2", "s4"],
                 columns=["CDH1", "VIM"]).to_csv(prot)  # s2 has a NaN, s3 is absent
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_molecular(table, rna=rna, protein=prot, genes=["VIM", "GAPDH", "TP53", "ACTB"])
    missing_warnings = [w for w in caught if "panel genes" in str(w.message)]
    assert len(missing_warnings) == 1 and "lacks 2 of 4 panel genes (e.g. GAPDH, ACTB)" in str(missing_warnings[0].message)
    assert data.genes == ["VIM", "TP53"] and data.missing_genes == ["GAPDH", "ACTB"]
    f = [r.features for r in data.rows]
    assert [r.patient for r in data.rows] == ["p0", "p0", "p1", "p1"]
    assert set(data.rna) == {f[0], f[1], f[2]} and data.skipped_rna == 1
    np.testing.assert_allclose(data.rna[f[0]], np.log1p([3.0, 0.0]))
    np.testing.assert_allclose(data.rna[f[1]], np.log1p([2.0, 7.0]))
    assert all(v.dtype == np.float32 for v in data.rna.values())
    assert data.proteins == ["CDH1", "VIM"]
    assert set(data.protein) == {f[0], f[3]} and data.skipped_protein == 2
    np.testing.assert_array_equal(data.protein[f[0]], np.float32([1.5, -0.5]))


def test_samples_as_columns_are_transposed(tmp_path):
    table = _cohort(tmp_path, ("s1", "s2"))
    rna = tmp_path / "genes_by_samples.csv"
    pd.DataFrame(VALUES.T, index=GENES, columns=SAMPLES).to_csv(rna)
    data = load_molecular(table, rna=rna, genes=np.array(GENES), rna_log1p=False)  # any sequence of names
    np.testing.assert_array_equal(data.rna[data.rows[1].features], VALUES[1])
    assert data.skipped_rna == 0


def test_no_shared_samples_or_genes_is_one_error_naming_the_file(tmp_path):
    table = _cohort(tmp_path, ("a", "b"))
    rna = tmp_path / "rna.csv"
    pd.DataFrame(VALUES, index=SAMPLES, columns=GENES).to_csv(rna)
    with pytest.raises(TrainingConfigError, match=r"rna\.csv' shares no sample id with cohort table .*cohort\.csv"):
        load_molecular(table, rna=rna, genes=GENES)
    table = _cohort(tmp_path, ("s1", "s2"))
    with pytest.raises(TrainingConfigError, match=r"rna\.csv' has none of the 2 panel genes"):
        load_molecular(table, rna=rna, genes=["ALB", "INS"])
    negative = tmp_path / "logged.csv"
    pd.DataFrame(VALUES - 1, index=SAMPLES, columns=GENES).to_csv(negative)
    with pytest.raises(TrainingConfigError, match=r"logged\.csv.*negative values.*rna_log1p=False"):
        load_molecular(table, rna=negative, genes=GENES)


def test_cohort_table_errors_name_the_line(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("slide,features,sample_id\nx.svs,missing.h5,s1\n")
    with pytest.raises(TrainingConfigError, match=r"t\.csv' line 2: feature file .*missing\.h5"):
        read_cohort_table(table)
    table.write_text("slide,sample\nx.svs,s1\n")
    with pytest.raises(TrainingConfigError, match=r"needs \['features', 'sample_id'\]"):
        read_cohort_table(table)
