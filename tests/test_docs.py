"""Docs that run: every code block of README.md and docs/*.md is either run here or marked illustrative.

A block is marked by an HTML comment on the line before its fence, ``<!-- illustrative: REASON -->``
(why it is not run: it trains for minutes, needs a file gctnet cannot have, a GPU, ...).  ``python``
blocks that are not marked run in order, one namespace per file, in a temporary folder that holds
``runs/gct20`` (a tiny finished run, the one the docs' examples name).  Blocks of any other language
(shell commands) must be marked; ``text`` blocks are not code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from helpers import requires_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\S*)\n(.*?)^```$", re.M | re.S)
_MARK = re.compile(r"<!-- illustrative: (.+?) -->\s*$")


def blocks(path: Path) -> list[dict]:
    """The fenced blocks of ``path``: language, code, line, and the reason if marked illustrative."""
    text = path.read_text()
    found = []
    for m in _FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = _MARK.search(before)
        found.append({"lang": m.group(1), "code": m.group(2), "line": text[: m.start()].count("\n") + 1,
                      "illustrative": mark.group(1) if mark else None})
    return found


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_block_is_code_that_runs_or_says_why_not(path):
    for b in blocks(path):
        where = f"{path.name}:{b['line']}"
        assert b["lang"], f"{where}: give the block a language (text for what is not code)"
        if b["lang"] not in ("python", "text"):
            assert b["illustrative"], f"{where}: a {b['lang']} block must be marked <!-- illustrative: why -->"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with ``runs/gct20``: a tiny finished gct_resnet20 run."""
    from gctnet.train import TrainConfig, run

    root = tmp_path_factory.mktemp("docs")
    run(TrainConfig(model="gct_resnet20", model_kwargs={"width": 0.25}, subset=256, val_subset=256, epochs=1,
                    device="cpu", quiet=True, out=str(root / "runs" / "gct20")))
    return root


@requires_fashion_mnist
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_python_blocks_run(path, workdir, monkeypatch, capsys):
    code = [b for b in blocks(path) if b["lang"] == "python" and not b["illustrative"]]
    if not code:
        pytest.skip(f"{path.name} has no runnable python block")
    monkeypatch.chdir(workdir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    try:
        for b in code:
            try:
                exec(compile(b["code"], f"{path.name}:{b['line']}", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"{path.name}, block at line {b['line']} failed: {exc!r}") from exc
    finally:
        torch.set_num_threads(threads)


def test_demo_tables_have_the_current_report_format():
    """README's demo excerpt is the table of docs/demo/report.md, and that has the columns the report writes now."""
    from gctnet import compare

    header = compare._summary_table([], "resnet20")[:2]
    report = (ROOT / "docs" / "demo" / "report.md").read_text().splitlines()
    start = report.index(header[0])
    table = report[start: report.index("", start)]
    assert table[1] == header[1]
    readme = (ROOT / "README.md").read_text().splitlines()
    start = readme.index(header[0])
    assert readme[start: start + len(table)] == table
