"""The figures a run writes: a long title is wrapped, not cut; a rounds axis has whole rounds only."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from brmtrl import plots  # noqa: E402


def test_a_long_title_wraps_and_rounds_are_integers(tmp_path: Path, monkeypatch) -> None:
    seen = {}
    real = plots.finish_plot

    def spy(fig, ax, path, title, legend_size=None, rounds=False):
        real(fig, ax, path, title, legend_size, rounds)
        seen["title"] = ax.get_title()
        seen["ticks"] = [t for t in ax.get_xticks() if 1 <= t <= 3]

    monkeypatch.setattr(plots, "finish_plot", spy)
    title = "Byzantine identification · " + "quick.toml brmtrl geometric_median sign_flip 20 % " * 2
    plots.plot_identification(tmp_path / "i.png", [{"round": r, "precision": 0.5, "recall": 0.7} for r in (1, 2, 3)],
                              title)
    assert "\n" in seen["title"] and seen["title"].replace("\n", " ") == " ".join(title.split())
    assert seen["ticks"] and all(float(t).is_integer() for t in seen["ticks"])
    assert (tmp_path / "i.png").stat().st_size > 5000
