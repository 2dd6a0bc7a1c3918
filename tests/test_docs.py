"""The docs, run literally: the marked code blocks of README.md and docs/*.md run as a user would run them.

A marker is an HTML comment on the line before a fenced block (GitHub does not show it):

    <!-- docs-test: setup -->        the synthetic cohort the examples run on: run once per test session in its
                                     own folder; every document's folder starts with its output (the `cohort`
                                     folder, linked). Every setup block of every document is the same command.
    <!-- docs-test: run -->          a `bash` block (run with `bash -e`, one line after another) or a `python`
                                     block (run as a script), in the document's folder, after that document's
                                     earlier blocks, with the project's `care` and `python` first on PATH.
    <!-- docs-test: file NAME -->    a file the examples read (a config): written as NAME into the document's
                                     folder before its blocks run.
    <!-- docs-test: config STAGE --> a config file shown, not run (the paper's settings): its keys and types are
                                     checked as a config of STAGE (1, 2 or finetune); its paths are not read.
    <!-- docs-test: skip REASON -->  not run (GUI, GPU, a cluster, a fix not yet landed); REASON is the skip reason.

Every fenced block of these files carries one marker (test_every_block_is_marked), so a new block is either run
or says why not.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(setup|run|file|config|skip)\b\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)```(\S*)")
BLOCK_TIMEOUT_S = 300  # one block; the whole docs test takes about two minutes on 2 cores
TAIL_CHARS = 3000  # of a failing block's output, in the failure message


@dataclass(frozen=True)
class Block:
    """One fenced block: its document, first line (1-based, the fence), language, marker and text."""

    doc: Path
    line: int
    lang: str
    kind: str  # setup | run | file | config | skip | "" (unmarked)
    arg: str  # file name, config stage or skip reason
    heading: str  # the nearest heading above the block
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def read_blocks(doc: Path) -> list[Block]:
    """The fenced blocks of a markdown file, each with the docs-test marker on its line before (if any)."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks, heading, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        fence = FENCE.match(line)
        if not fence:
            i += 1
            continue
        indent, lang = fence.group(1), fence.group(2)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"{doc.relative_to(ROOT)}:{i + 1}: a ``` block is never closed")
        body = [text[len(indent):] if text.startswith(indent) else text.lstrip() for text in lines[i + 1 : end]]
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before)
        blocks.append(Block(doc, i + 1, lang, marker.group(1) if marker else "", marker.group(2) if marker else "",
                            heading, "\n".join(body) + "\n"))
        i = end + 1
    return blocks


ALL_BLOCKS = [b for doc in DOCS for b in read_blocks(doc)]
STEPS = [b for b in ALL_BLOCKS if b.kind in ("run", "skip")]


def _env() -> dict:
    """The environment of a block: this interpreter's folder (its `care` and `python`) first on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "MPLBACKEND": "Agg"}


def _execute(block: Block, cwd: Path) -> subprocess.CompletedProcess:
    """Run one bash or python block in ``cwd``; the script is kept there as _docs_test_<line>.<ext>."""
    if block.lang not in ("bash", "python"):
        raise AssertionError(f"{block.where}: only bash and python blocks can be run, not {block.lang!r}")
    script = cwd / f"_docs_test_{block.doc.stem}_{block.line}.{'sh' if block.lang == 'bash' else 'py'}"
    script.write_text(block.text)
    argv = ["bash", "-e", str(script)] if block.lang == "bash" else [sys.executable, str(script)]
    try:
        return subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{block.where} ran past {BLOCK_TIMEOUT_S} s:\n{block.text}") from exc


def _check(block: Block, done: subprocess.CompletedProcess) -> None:
    if done.returncode != 0:
        out = (done.stdout + done.stderr)[-TAIL_CHARS:]
        raise AssertionError(f"{block.where} ({block.heading}) exited {done.returncode}:\n{block.text}\n--- output ---\n{out}")


class DocRuns:
    """One working folder per document; the document's run blocks in order, each at most once."""

    def __init__(self, root: Path, cohort: Path) -> None:
        self.root, self.cohort = root, cohort
        self.folders: dict[Path, Path] = {}
        self.done: dict[Block, str | None] = {}  # block -> None (passed) or where it failed

    def folder(self, doc: Path) -> Path:
        if doc not in self.folders:
            folder = self.root / doc.stem
            folder.mkdir()
            (folder / "cohort").symlink_to(self.cohort / "cohort", target_is_directory=True)
            for b in read_blocks(doc):
                if b.kind == "file":
                    (folder / b.arg).write_text(b.text)
            self.folders[doc] = folder
        return self.folders[doc]

    def run_through(self, block: Block) -> None:
        """Run the document's run blocks before ``block`` (those not yet run), then ``block`` itself."""
        for earlier in [b for b in read_blocks(block.doc) if b.kind == "run" and b.line < block.line]:
            if earlier not in self.done:
                self._run(earlier)
            if self.done[earlier] is not None:
                pytest.skip(f"an earlier block of {block.doc.name} failed: {self.done[earlier]}")
        self._run(block)
        if self.done[block] is not None:
            raise AssertionError(self.done[block])

    def _run(self, block: Block) -> None:
        try:
            _check(block, _execute(block, self.folder(block.doc)))
            self.done[block] = None
        except AssertionError as exc:
            self.done[block] = str(exc)


@pytest.fixture(scope="session")
def docs_cohort(tmp_path_factory) -> Path:
    """A folder where the docs' setup block (a small `care synth --cohort`) has run once."""
    assert shutil.which("care", path=_env()["PATH"]), f"no `care` command beside {sys.executable}: pip install -e ."
    setups = {b.text for b in ALL_BLOCKS if b.kind == "setup"}
    assert len(setups) == 1, f"the docs' setup blocks differ: {sorted(setups)}"
    block = next(b for b in ALL_BLOCKS if b.kind == "setup")
    folder = tmp_path_factory.mktemp("docs_cohort")
    _check(block, _execute(block, folder))
    assert (folder / "cohort" / "cohort.csv").is_file(), f"{block.where}: the setup block made no cohort/cohort.csv"
    return folder


@pytest.fixture(scope="session")
def doc_runs(tmp_path_factory, docs_cohort) -> DocRuns:
    return DocRuns(tmp_path_factory.mktemp("docs_run"), docs_cohort)


@pytest.mark.parametrize("block", STEPS, ids=[f"{b.doc.name}:{b.line}" for b in STEPS])
def test_doc_block(block: Block, doc_runs: DocRuns) -> None:
    """A run block exits 0 in its document's folder, after the document's earlier run blocks."""
    if block.kind == "skip":
        pytest.skip(f"{block.where} ({block.heading}): {block.arg}")
    doc_runs.run_through(block)


CONFIGS = [b for b in ALL_BLOCKS if b.kind == "config"]


@pytest.mark.parametrize("block", CONFIGS, ids=[f"{b.doc.name}:{b.line}" for b in CONFIGS])
def test_doc_config_is_valid(block: Block) -> None:
    """A config shown but not run (the paper's settings) has only known keys, each of the right type."""
    from care_core.train.config import config_from_dict

    assert block.lang == "toml", f"{block.where}: a config block is TOML here, not {block.lang!r}"
    config_from_dict(block.arg, tomllib.loads(block.text))


def test_every_block_is_marked() -> None:
    """Each fenced block of README.md and docs/*.md says whether the docs test runs it, and run blocks are bash
    or python: a new example cannot silently go untested."""
    bad = [f"{b.where} ({b.lang or 'no language'}): no <!-- docs-test: ... --> marker on the line before"
           for b in ALL_BLOCKS if not b.kind]
    bad += [f"{b.where}: a run block must be bash or python, not {b.lang!r}" for b in ALL_BLOCKS
            if b.kind in ("run", "setup") and b.lang not in ("bash", "python")]
    bad += [f"{b.where}: '{b.kind}' needs an argument" for b in ALL_BLOCKS if b.kind in ("file", "config", "skip") and not b.arg]
    assert not bad, "\n".join(bad)
    assert any(b.kind == "run" for b in ALL_BLOCKS)


def test_read_blocks_takes_the_marker_on_the_line_before(tmp_path) -> None:
    """A marker counts on the last non-blank line before the fence; an indented block (in a list item) loses its
    indent; a block with no marker, or a marker further up, is unmarked."""
    doc = tmp_path / "doc.md"
    doc.write_text("# Top\n\n<!-- docs-test: run -->\n```bash\necho a\n```\n\n## Sub\n- item:\n\n"
                   "  <!-- docs-test: skip GUI: opens a window -->\n  ```bash\n  napari x\n    y\n  ```\n\n"
                   "<!-- docs-test: run -->\nprose between\n```python\nprint(1)\n```\n")
    run, skip, unmarked = read_blocks(doc)
    assert (run.kind, run.line, run.lang, run.heading, run.text) == ("run", 4, "bash", "Top", "echo a\n")
    assert (skip.kind, skip.arg, skip.line, skip.heading, skip.text) == ("skip", "GUI: opens a window", 12, "Sub",
                                                                        "napari x\n  y\n")
    assert (unmarked.kind, unmarked.lang) == ("", "python")


def test_a_failing_block_names_its_place_and_output(tmp_path) -> None:
    """A block that exits non-zero fails with its file:line, its text and the end of its output."""
    block = Block(ROOT / "README.md", 7, "bash", "run", "", "Quick start", "echo about to fail\nfalse\necho never\n")
    with pytest.raises(AssertionError) as err:
        _check(block, _execute(block, tmp_path))
    assert str(err.value).startswith("README.md:7 (Quick start) exited 1:\necho about to fail\nfalse\n")
    assert str(err.value).endswith("--- output ---\nabout to fail\n")


def test_readme_menu_names_match_the_manifest() -> None:
    """The menu paths README names are the ones napari.yaml gives napari."""
    import yaml

    manifest = yaml.safe_load((ROOT / "napari_care" / "napari.yaml").read_text())
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    plugin = manifest["display_name"]
    for sample in manifest["contributions"]["sample_data"]:
        assert f"*File → Open Sample → {plugin} → {sample['display_name']}*" in readme, sample
    for widget in manifest["contributions"]["widgets"]:
        assert f"*Plugins → {plugin} → {widget['display_name']}*" in readme, widget
