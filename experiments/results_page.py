"""docs/results.md from the committed data alone, in one command:

    python experiments/results_page.py

Rebuilds every table file of the page from its data (``docs/results/data/*.json`` with
:mod:`fair_study`, ``docs/results/transfer/data/*.json`` with :mod:`transfer_study`) and copies each into
the page where it is embedded, between ``<!-- generated: docs/results/<file>.md -->`` and
``<!-- end generated -->`` (``tests/test_published.py`` checks both). Nothing here runs an experiment.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fair_study  # noqa: E402
import transfer_study  # noqa: E402
from _common import publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- generated: (docs/results/\S+\.md) -->.*?<!-- end generated -->", re.S)


def rebuild(root: Path = ROOT) -> list[Path]:
    """Write every table file of docs/results from its data; returns them."""
    written = []
    for data_dir, tables in ((root / "docs/results/data", fair_study.tables),
                             (root / "docs/results/transfer/data", transfer_study.tables)):
        for data in sorted(data_dir.glob("*.json")):
            with contextlib.redirect_stdout(io.StringIO()):
                publish(None, data, tables, data_dir.parent, data.stem)
            written.append(data_dir.parent / f"{data.stem}.md")
    return written


def embed(page: Path, root: Path = ROOT) -> bool:
    """Copy each embedded table file into ``page``; returns whether the page changed."""
    text = page.read_text()
    new = BLOCK.sub(lambda m: f"<!-- generated: {m[1]} -->\n\n{(root / m[1]).read_text()}\n<!-- end generated -->",
                    text)
    page.write_text(new)
    return new != text


def main() -> None:
    files = rebuild()
    changed = embed(ROOT / "docs" / "results.md")
    print(f"{len(files)} table files rebuilt; docs/results.md {'updated' if changed else 'unchanged'}")


if __name__ == "__main__":
    main()
