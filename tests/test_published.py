"""Every published robustness table regenerates from the compact data committed beside it, byte for byte
(`python experiments/robustness.py --data docs/robustness/data/<name>.json --name <name>`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = sorted((ROOT / "docs" / "robustness" / "data").glob("*.json"))


@pytest.mark.parametrize("data", DATA, ids=[d.stem for d in DATA])
def test_a_published_table_regenerates_from_its_data(data, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "robustness.py"), "--data", str(data),
                           "--name", data.stem, "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    published = ROOT / "docs" / "robustness" / f"{data.stem}.md"
    assert (tmp_path / f"{data.stem}.md").read_text() == published.read_text()
