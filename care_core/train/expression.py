"""Molecular inputs of Stage II: gene panels, expression / protein matrices, and their pairing with slides.

- A gene panel is a gene list (text, one symbol a line) or the union of the sets of a GMT file; the
  default is the Hallmark-like panel shipped here (`HALLMARK_GMT`: the 50 MSigDB Hallmark set names, each
  with a hand-written subset of its real member genes).
- A matrix has one row per sample and one column per gene or protein: a CSV or Parquet table whose first
  column holds the sample ids (or a Parquet file with a named index), or an AnnData `.h5ad` (obs = samples,
  var = genes; X dense or CSR/CSC), read with h5py. A matrix stored the other way round (samples as
  columns) is recognised by where the table's sample ids are, and transposed.
- A cohort table is a CSV with columns `features` (a feature file, relative to the table's folder),
  `sample_id` and optionally `slide` and `patient`.

`load_molecular` pairs every feature file with its sample's RNA and/or protein vector (float32). A sample
missing from a matrix, or with a missing value (NaN) in it, is skipped for that modality and counted;
panel genes absent from the RNA matrix are left out of the panel and reported once (a warning). Errors a
user can cause (unreadable file, no shared samples or genes) raise `TrainingConfigError` naming the file.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from care_core._atomic import atomic_path
from care_core.errors import TrainingConfigError

__all__ = [
    "HALLMARK_GMT",
    "Matrix",
    "PairedSample",
    "MolecularData",
    "read_gene_sets",
    "read_gene_panel",
    "read_matrix",
    "read_cohort_table",
    "load_molecular",
    "write_h5ad",
]

HALLMARK_GMT = Path(__file__).with_name("hallmark_gene_sets.gmt")
_PathLike = str | os.PathLike


# ---------------------------------------------------------------- gene panels
def read_gene_sets(path: _PathLike) -> dict[str, list[str]]:
    """Gene sets of a GMT file: {set name: member genes in file order}; each line is
    `name<TAB>description<TAB>gene<TAB>gene…`."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingConfigError(f"cannot read gene sets {str(path)!r}: {exc}") from exc
    sets: dict[str, list[str]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split("\t")]
        if len(cells) < 3 or not cells[0]:
            raise TrainingConfigError(f"{str(path)!r} line {number}: a GMT line is name<TAB>description<TAB>genes…; "
                                      "check that the file is tab-separated")
        sets[cells[0]] = [g for g in cells[2:] if g]
    if not sets:
        raise TrainingConfigError(f"{str(path)!r} holds no gene sets; give a GMT file or a gene list")
    return sets


def read_gene_panel(path: _PathLike | None = None) -> list[str]:
    """The genes of a panel file, in order of first appearance, each once.

    path: a `.gmt` file (the union of its sets), a text file with one symbol a line (blank lines and `#`
    comments skipped; a CSV's first column), or None for the shipped Hallmark-like panel.
    """
    path = HALLMARK_GMT if path is None else Path(path)
    if path.suffix.lower() == ".gmt":
        genes = [g for members in read_gene_sets(path).values() for g in members]
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise TrainingConfigError(f"cannot read gene list {str(path)!r}: {exc}") from exc
        genes = [line.split(",")[0].strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    genes = list(dict.fromkeys(genes))
    if not genes:
        raise TrainingConfigError(f"gene list {str(path)!r} is empty; give one gene symbol a line or a GMT file")
    return genes


# ---------------------------------------------------------------- matrices
@dataclass(frozen=True)
class Matrix:
    """A samples × features table: values[i, j] is feature `features[j]` of sample `samples[i]`."""

    samples: list[str]
    features: list[str]
    values: np.ndarray  # [S, F] float32
    path: Path

    def transposed(self) -> Matrix:
        return Matrix(self.features, self.samples, np.ascontiguousarray(self.values.T), self.path)


def _h5_strings(ds) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ds[()]]


def _h5_index(group, path: Path, what: str) -> list[str]:
    """The index of an AnnData dataframe group (`obs`, `var`)."""
    import h5py

    if not isinstance(group, h5py.Group):
        raise TrainingConfigError(f"{str(path)!r}: {what} is not an AnnData dataframe group (written by anndata < 0.7?); "
                                  "re-save it with a current anndata")
    key = group.attrs.get("_index", "_index")
    key = key.decode() if isinstance(key, bytes) else str(key)
    if key not in group:
        raise TrainingConfigError(f"{str(path)!r}: {what} has no index dataset {key!r}; re-save it with anndata")
    return _h5_strings(group[key])


def _read_h5ad(path: Path) -> Matrix:
    """X, obs names and var names of an AnnData .h5ad file (X dense, or a CSR/CSC group)."""
    import h5py
    import scipy.sparse

    with h5py.File(path, "r") as f:
        if "X" not in f or "obs" not in f or "var" not in f:
            raise TrainingConfigError(f"{str(path)!r} has no X / obs / var: not an AnnData .h5ad file")
        samples, features = _h5_index(f["obs"], path, "obs"), _h5_index(f["var"], path, "var")
        x = f["X"]
        if isinstance(x, h5py.Dataset):
            values = np.asarray(x[()], dtype=np.float32)
        else:
            kind = x.attrs.get("encoding-type", "")
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            shape = tuple(int(v) for v in x.attrs.get("shape", x.attrs.get("h5sparse_shape", (0, 0))))
            cls = {"csr_matrix": scipy.sparse.csr_matrix, "csc_matrix": scipy.sparse.csc_matrix}.get(kind)
            if cls is None:
                raise TrainingConfigError(f"{str(path)!r}: X is encoded as {kind!r}; expected a dense array or a "
                                          "csr_matrix / csc_matrix")
            values = cls((x["data"][()], x["indices"][()], x["indptr"][()]), shape=shape).toarray().astype(np.float32)
    if values.shape != (len(samples), len(features)):
        raise TrainingConfigError(f"{str(path)!r}: X is {values.shape} but obs has {len(samples)} and var "
                                  f"{len(features)} names")
    return Matrix(samples, features, values, path)


def _read_table(path: Path) -> Matrix:
    """A CSV / TSV or Parquet table whose first column (or a Parquet file's named index) holds the sample ids."""
    import pandas as pd

    if path.suffix.lower() == ".parquet":
        df = pd.read_parquet(path)
        if isinstance(df.index, pd.RangeIndex) and df.index.name is None:
            df = df.set_index(df.columns[0])
    else:
        df = pd.read_csv(path, index_col=0, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    try:
        values = df.to_numpy(dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise TrainingConfigError(f"{str(path)!r} has non-numeric values ({exc}); the first column holds the "
                                  "sample ids and every other cell a number") from exc
    return Matrix([str(s) for s in df.index], [str(c) for c in df.columns], values, path)


def read_matrix(path: _PathLike) -> Matrix:
    """Read a samples × features matrix from `.csv`, `.tsv`, `.parquet` or `.h5ad` (see the module notes).

    Sample ids and feature names must be unique.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingConfigError(f"matrix {str(path)!r} does not exist; check the path")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".parquet", ".h5ad"):
        raise TrainingConfigError(f"{str(path)!r}: unknown matrix format {suffix!r}; use .csv, .tsv, .parquet or .h5ad")
    try:
        matrix = _read_h5ad(path) if suffix == ".h5ad" else _read_table(path)
    except TrainingConfigError:
        raise
    except Exception as exc:  # a parser's own error: the file is not what its name says
        raise TrainingConfigError(f"cannot read matrix {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    for what, names in (("sample ids", matrix.samples), ("feature names", matrix.features)):
        if len(set(names)) < len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise TrainingConfigError(f"{str(path)!r}: {what} are not unique (e.g. {dup!r}); make them unique")
    return matrix


def write_h5ad(path: _PathLike, values: np.ndarray, samples: Sequence[str], features: Sequence[str], *,
               obs: dict[str, Sequence[str]] | None = None) -> Path:
    """Write a dense samples × features AnnData `.h5ad` atomically (AnnData's on-disk spec: X float32,
    obs / var dataframes with string indices, `obs` string columns, empty layers / obsm / uns …)."""
    import h5py

    values = np.asarray(values, dtype=np.float32)
    if values.shape != (len(samples), len(features)):
        raise ValueError(f"values {values.shape} must be [len(samples)={len(samples)}, len(features)={len(features)}]")
    text = h5py.string_dtype("utf-8")

    def strings(group, name: str, items: Sequence[str]) -> None:
        ds = group.create_dataset(name, data=np.array([str(v) for v in items], dtype=object), dtype=text)
        ds.attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})

    def frame(name: str, index: Sequence[str], columns: dict[str, Sequence[str]]) -> None:
        group = f.create_group(name)
        group.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0", "_index": "_index"})
        group.attrs["column-order"] = np.array(list(columns), dtype=object) if columns else np.zeros(0)
        strings(group, "_index", index)
        for col, items in columns.items():
            strings(group, col, items)

    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        x = f.create_dataset("X", data=values)
        x.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        frame("obs", samples, dict(obs or {}))
        frame("var", features, {})
        for name in ("layers", "obsm", "obsp", "varm", "varp", "uns"):
            f.create_group(name).attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
    return path


# ---------------------------------------------------------------- cohort table and pairing
@dataclass(frozen=True)
class PairedSample:
    """One row of a cohort table: a slide's feature file and the sample (and patient) it belongs to."""

    features: Path
    sample_id: str
    slide: str = ""
    patient: str = ""


def read_cohort_table(path: _PathLike) -> list[PairedSample]:
    """Rows of a cohort CSV (`features`, `sample_id`, optional `slide`, `patient`); feature paths relative to
    the table's folder. Every feature file must exist."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingConfigError(f"cannot read cohort table {str(path)!r}: {exc}") from exc
    missing = [c for c in ("features", "sample_id") if c not in columns]
    if missing:
        raise TrainingConfigError(f"cohort table {str(path)!r} has columns {columns} but needs {missing} "
                                  "(columns: slide, features, sample_id, patient)")
    out = []
    for line, row in enumerate(rows, start=2):
        if not row["features"] or not row["sample_id"]:
            raise TrainingConfigError(f"{str(path)!r} line {line}: empty 'features' or 'sample_id' cell")
        feat = Path(row["features"]).expanduser()
        feat = feat if feat.is_absolute() else path.parent / feat
        if not feat.is_file():
            raise TrainingConfigError(f"{str(path)!r} line {line}: feature file {str(feat)!r} does not exist; "
                                      "extract it first or fix the path (relative paths start at the table's folder)")
        out.append(PairedSample(feat, row["sample_id"], row.get("slide", ""), row.get("patient", "")))
    if not out:
        raise TrainingConfigError(f"cohort table {str(path)!r} has no rows")
    return out


@dataclass
class MolecularData:
    """Feature files paired with molecular vectors, ready for Stage II.

    rows: every row of the cohort table, in table order. rna / protein: {feature file: float32 vector
    aligned to `genes` / `proteins`} for the rows whose sample has that modality. skipped_rna /
    skipped_protein: rows without it (sample absent from the matrix or with a NaN value), 0 when no matrix
    was given. missing_genes: panel genes absent from the RNA matrix (left out of `genes`).
    """

    rows: list[PairedSample]
    genes: list[str] = field(default_factory=list)
    proteins: list[str] = field(default_factory=list)
    rna: dict[Path, np.ndarray] = field(default_factory=dict)
    protein: dict[Path, np.ndarray] = field(default_factory=dict)
    skipped_rna: int = 0
    skipped_protein: int = 0
    missing_genes: list[str] = field(default_factory=list)
    rna_log1p: bool = True


def _oriented(matrix: Matrix, sample_ids: set[str]) -> Matrix:
    """`matrix` with samples as rows: transposed when the table's sample ids name its columns instead."""
    in_rows = len(sample_ids.intersection(matrix.samples))
    in_cols = len(sample_ids.intersection(matrix.features))
    return matrix.transposed() if in_cols > in_rows else matrix


def _pair(rows: list[PairedSample], matrix: Matrix, columns: list[str], table: Path,
          what: str) -> tuple[dict[Path, np.ndarray], int]:
    """{feature file: matrix row restricted to `columns`} and the count of rows skipped (absent or NaN)."""
    index = {s: i for i, s in enumerate(matrix.samples)}
    shared = {r.sample_id for r in rows} & index.keys()
    if not shared:
        raise TrainingConfigError(
            f"{what} matrix {str(matrix.path)!r} shares no sample id with cohort table {str(table)!r} (e.g. table "
            f"{rows[0].sample_id!r}, matrix {matrix.samples[0] if matrix.samples else 'empty'!r}); use the same ids "
            "in the table's sample_id column and the matrix's first column / obs names")
    col = {f: j for j, f in enumerate(matrix.features)}
    picked = matrix.values[:, [col[c] for c in columns]]
    out, skipped = {}, 0
    for r in rows:
        i = index.get(r.sample_id)
        if i is None or not np.isfinite(picked[i]).all():
            skipped += 1
            continue
        out[r.features] = np.ascontiguousarray(picked[i], dtype=np.float32)
    if not out:  # every shared sample has a NaN somewhere: name the columns, not the ids
        bad = ~np.isfinite(picked[sorted(index[s] for s in shared)]).all(0)
        names = [c for c, b in zip(columns, bad) if b]
        raise TrainingConfigError(
            f"{what} matrix {str(matrix.path)!r}: every sample with a slide has a missing (NaN) value, in column(s) "
            f"{names[:5]}{' ...' if len(names) > 5 else ''}; fill them or drop the column(s)")
    return out, skipped


def load_molecular(table_csv: _PathLike, rna: _PathLike | None = None, protein: _PathLike | None = None,
                   genes: Sequence[str] | _PathLike | None = None, proteins: Sequence[str] | None = None, *,
                   rna_log1p: bool = True) -> MolecularData:
    """Pair each feature file of the cohort table with its sample's RNA and/or protein vector.

    genes: the RNA panel (a list, a gene-list / GMT file, or None for the shipped Hallmark-like panel);
    panel genes the matrix lacks are dropped and warned about once. rna_log1p: RNA values are counts or
    TPM-like (≥ 0) and become log1p(x) here, which is what `RNAEncoder` takes; pass False for values
    already on a log scale. proteins: the protein columns to use (default: every column of the matrix);
    protein values are used as given (log-scale or z-scored abundances, e.g. RPPA).
    """
    table = Path(table_csv)
    rows = read_cohort_table(table)
    ids = {r.sample_id for r in rows}
    data = MolecularData(rows, rna_log1p=rna_log1p)
    if rna is not None:
        from_file = genes is None or isinstance(genes, (str, os.PathLike))
        panel = read_gene_panel(genes) if from_file else list(dict.fromkeys(str(g) for g in genes))
        matrix = _oriented(read_matrix(rna), ids)
        present = set(matrix.features)
        data.genes = [g for g in panel if g in present]
        data.missing_genes = [g for g in panel if g not in present]
        if not data.genes:
            raise TrainingConfigError(
                f"RNA matrix {str(matrix.path)!r} has none of the {len(panel)} panel genes (e.g. {panel[0]!r}; matrix "
                f"columns e.g. {matrix.features[:3]}); use gene symbols as column / var names or pass the matching "
                "gene list")
        if data.missing_genes:
            warnings.warn(f"RNA matrix {str(matrix.path)!r} lacks {len(data.missing_genes)} of {len(panel)} panel genes "
                          f"(e.g. {', '.join(data.missing_genes[:5])}); they are left out of the panel", stacklevel=2)
        data.rna, data.skipped_rna = _pair(rows, matrix, data.genes, table, "RNA")
        if rna_log1p:
            negative = [p for p, v in data.rna.items() if (v < 0).any()]
            if negative:
                raise TrainingConfigError(f"RNA matrix {str(matrix.path)!r} has negative values (e.g. for "
                                          f"{negative[0].name}); it looks log-transformed already: set rna_log1p = "
                                          "false in the Stage II config (rna_log1p=False in load_molecular)")
            data.rna = {p: np.log1p(v) for p, v in data.rna.items()}
    if protein is not None:
        matrix = _oriented(read_matrix(protein), ids)
        wanted = list(matrix.features) if proteins is None else list(dict.fromkeys(proteins))
        absent = [p for p in wanted if p not in set(matrix.features)]
        if absent:
            raise TrainingConfigError(f"protein matrix {str(matrix.path)!r} lacks proteins {absent[:5]}; "
                                      "drop them from the protein list or add the columns")
        if not wanted:
            raise TrainingConfigError(f"protein matrix {str(matrix.path)!r} has no protein columns")
        data.proteins = wanted
        data.protein, data.skipped_protein = _pair(rows, matrix, wanted, table, "protein")
    return data
