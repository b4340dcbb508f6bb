"""Every published table regenerates from the compact data committed beside it, byte for byte
(`python experiments/robustness.py --data docs/robustness/data/<name>.json --name <name>`, and
`experiments/fair_study.py` and `experiments/transfer_study.py` for docs/results)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = sorted((ROOT / "docs" / "robustness" / "data").glob("*.json"))
RESULTS = sorted((ROOT / "docs" / "results" / "data").glob("*.json"))
TRANSFER = sorted((ROOT / "docs" / "results" / "transfer" / "data").glob("*.json"))
#: (the script that writes a table, its data file): every committed data file of both pages
PUBLISHED = [("robustness", d) for d in DATA] + [("fair_study", d) for d in RESULTS] + \
    [("transfer_study", d) for d in TRANSFER]


@pytest.mark.parametrize("script, data", PUBLISHED, ids=[f"{s}-{d.stem}" for s, d in PUBLISHED])
def test_a_published_table_regenerates_from_its_data(script, data, tmp_path, monkeypatch):
    """The script runs as its command line runs it (``__main__``, these arguments), in this process: a
    subprocess per table cost the suite a torch import each."""
    path = ROOT / "experiments" / f"{script}.py"
    monkeypatch.setattr(sys, "argv", [str(path), "--data", str(data), "--name", data.stem, "--out", str(tmp_path)])
    monkeypatch.setattr(sys, "path", list(sys.path))      # the scripts put experiments/ and src/ on it
    runpy.run_path(str(path), run_name="__main__")
    published = data.parent.parent / f"{data.stem}.md"
    assert (tmp_path / f"{data.stem}.md").read_text() == published.read_text()


def test_the_tables_embedded_in_robustness_md_are_the_generated_ones():
    """A section of docs/robustness.md that embeds a generated table file (marked
    ``<!-- generated: docs/robustness/<name>.md ... -->``) holds it verbatim from "Attack-free FedRep" on."""
    page = (ROOT / "docs" / "robustness.md").read_text()
    marks = [line for line in page.splitlines() if line.startswith("<!-- generated: docs/robustness/")]
    assert len(marks) >= 2
    for mark in marks:
        name = mark.split("docs/robustness/")[1].split(".md")[0]
        gen = (ROOT / "docs" / "robustness" / f"{name}.md").read_text()
        body = gen[gen.index("Attack-free FedRep"):].rstrip("\n")
        assert mark + "\n" + body + "\n" in page, name


def test_every_robustness_table_file_has_its_data():
    tables = {p.stem for p in (ROOT / "docs" / "robustness").glob("*.md")}
    assert tables == {d.stem for d in DATA}


def test_one_command_rebuilds_the_results_page_unchanged(tmp_path):
    """`python experiments/results_page.py`: every table file of docs/results and the page itself come back
    byte for byte from the committed data (run here on a copy of docs/). The page embeds each generated table
    file whole, between ``<!-- generated: docs/results/<path>.md -->`` and ``<!-- end generated -->``: it shows
    what the committed data regenerates, nothing copied by hand."""
    import shutil

    sys.path.insert(0, str(ROOT / "experiments"))
    import results_page

    shutil.copytree(ROOT / "docs" / "results", tmp_path / "docs" / "results")
    shutil.copy(ROOT / "docs" / "results.md", tmp_path / "docs" / "results.md")
    written = results_page.rebuild(tmp_path)
    assert written and all(p.read_text() == (ROOT / p.relative_to(tmp_path)).read_text() for p in written)
    assert (tmp_path / "docs" / "results.md").read_text().count("<!-- generated: docs/results/") >= 2
    assert results_page.embed(tmp_path / "docs" / "results.md", tmp_path) is False
