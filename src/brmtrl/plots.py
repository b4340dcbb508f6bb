"""Every figure a run writes: accuracy against the round, Byzantine identification, transfer to new
clients, and the common end of a line plot. matplotlib is imported when a figure is drawn (with the
non-interactive Agg backend); nothing here imports the rest of brmtrl, so metric modules stay free of
plotting and any layer may draw."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["finish_plot", "plot_history", "plot_identification", "plot_transfer"]


def finish_plot(fig: Any, ax: Any, path: Path, title: str, legend_size: int | None = None,
                rounds: bool = False) -> None:
    """The common end of every line plot: title (wrapped to the figure's width), grid, legend, integer
    ticks on a rounds axis (``rounds``), tight layout, saved at 120 dpi, closed."""
    import textwrap

    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    width = int(fig.get_figwidth() * 72 / 9 * 1.6)   # characters of a 9-point title that fit the figure
    ax.set_title("\n".join(textwrap.wrap(title, width)) or title, fontsize=9)
    if rounds:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_history(path: Path, history: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [h["round"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    if all(isinstance(h.get("honest_acc_mean"), float) for h in history):
        acc = [float(h["honest_acc_mean"]) for h in history]
        lo = [float(h["honest_acc_min"]) for h in history]
        ax.plot(rounds, acc, marker=".", label="honest mean")
        ax.plot(rounds, lo, linestyle="--", label="honest min")
        ax.set_ylabel("test accuracy (honest clients)")
        ax.set_ylim(0, 1)
    else:
        ax.plot(rounds, [h["honest_loss_mean"] for h in history], marker=".", label="honest mean loss")
        ax.set_ylabel("test loss (honest clients)")
        ax.set_yscale("log")
    ax.set_xlabel("round")
    finish_plot(fig, ax, path, title, rounds=True)


def plot_identification(path: Any, rounds: Sequence[Mapping[str, Any]], title: str) -> None:
    """Precision and recall of flagging the Byzantine clients against the round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("precision", "recall"):
        pts = [(r["round"], r[key]) for r in rounds if r[key] is not None]
        if pts:
            ax.plot(*zip(*pts), marker=".", linewidth=1, label=key)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("round")
    ax.set_ylabel("flagging the Byzantine clients")
    finish_plot(fig, ax, path, title, legend_size=8, rounds=True)


def plot_transfer(path: Path, section: Mapping[str, Any], title: str) -> None:
    """Accuracy against k (mean ± std over the new clients), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method, per_k in section["methods"].items():
        ks = [int(k) for k, s in per_k.items() if s["mean"] is not None]
        mean = np.array([per_k[str(k)]["mean"] for k in ks])
        std = np.array([per_k[str(k)]["std"] for k in ks])
        ax.plot(ks, mean, marker="o", label=method.replace("_", " "))
        ax.fill_between(ks, mean - std, mean + std, alpha=0.15)
    ax.set_xscale("log")
    ax.set_xticks(section["shots"], [str(k) for k in section["shots"]])
    ax.set_xlabel("labelled samples per class (k)")
    ax.set_ylabel("new clients' test accuracy")
    finish_plot(fig, ax, path, title, legend_size=8)
