r"""Cost curves of ``benchmark.py --scale``: data sizes at multiples of a synthetic card's
users, items and interactions, the fitted power-law exponents, the table and the plot."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

#: What a cost curve follows, in the order of its table and of the plot's panels.
#: The CPU times (this process's) are the ones that survive other jobs on a shared machine.
CURVES = {"seconds_per_epoch": "s / epoch", "cpu_seconds_per_epoch": "CPU s / epoch",
          "seconds_per_eval": "s / eval", "cpu_seconds_per_eval": "CPU s / eval",
          "graph_s": "graph build s", "peak_rss_mb": "peak RSS MB"}


def scaled_generator(generator: dict[str, Any], scale: float) -> str:
    r"""The run key ``generator`` that makes a card's synthetic data ``scale`` times as large:
    users and items multiplied by ``scale`` (rounded), the mean interactions per user kept, so
    the interactions grow by ``scale`` too. Scale 1 is the card itself (no overrides, the
    card's own folder).

    >>> scaled_generator({"num_users": 100, "num_items": 40, "seed": 0}, 2.5)
    'num_users=250,num_items=100'
    >>> scaled_generator({"num_users": 100, "num_items": 40}, 1.0)
    ''
    """
    if not scale > 0:
        raise ValueError(f"a scale must be positive, got {scale}")
    if scale == 1:
        return ""
    users = max(1, round(generator["num_users"] * scale))
    items = max(1, round(generator["num_items"] * scale))
    return f"num_users={users},num_items={items}"


def fit_exponent(sizes: list[float], values: list[float]) -> float:
    r"""The exponent :math:`b` of the least-squares fit :math:`\log v = a + b \log s`
    (``numpy.polyfit`` on the logs): the cost grows as :math:`s^b`. ``nan`` with fewer than
    two usable (positive) points.

    >>> round(fit_exponent([1, 2, 4], [3, 12, 48]), 6)
    2.0
    """
    pairs = [(s, v) for s, v in zip(sizes, values)
             if v is not None and s > 0 and v > 0 and math.isfinite(v)]
    if len({s for s, _ in pairs}) < 2:
        return float("nan")
    x, y = np.log([s for s, _ in pairs]), np.log([v for _, v in pairs])
    return float(np.polyfit(x, y, 1)[0])


def exponents(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    r"""Per model, the fitted exponent of every curve of :data:`CURVES` over its rows'
    ``scale``."""
    out: dict[str, dict[str, float]] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        out[model] = {key: fit_exponent([r["scale"] for r in mine], [r.get(key) for r in mine])
                      for key in CURVES}
    return out


def table(rows: list[dict[str, Any]]) -> str:
    r"""The Markdown table of a scale run: a row per (model, scale), then the exponents."""
    head = ["model", "scale", "users", "items", "train", *CURVES.values(),
            "epoch / floor (wall, CPU)", "eval / floor (wall, CPU)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], f"{r['scale']:g}", str(r["users"]), str(r["items"]),
                 str(r["train_interactions"])]
        cells += [_fmt(r.get(key)) for key in CURVES]
        for key in ("floor", "eval_floor"):
            cells.append(f"{_fmt(r.get(key + '_ratio'))}, {_fmt(r.get(key + '_cpu_ratio'))}")
        lines.append("| " + " | ".join(cells) + " |")
    for model, fitted in exponents(rows).items():
        cells = [f"{model}: exponent", "", "", "", ""]
        cells += [f"{fitted[key]:.2f}" for key in CURVES] + ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def plot(rows: list[dict[str, Any]], path: Path) -> str:
    r"""Writes the log-log plot of every curve against the scale, one line per model with
    its fitted exponent in the legend; returns what it did (a skip message without
    matplotlib, the ``plots`` extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ("plot skipped: matplotlib is not installed (pip install -e '.[plots]'); the "
                "table and the exponents above are complete without it")
    fitted = exponents(rows)
    fig, axes = plt.subplots(2, len(CURVES) // 2, figsize=(4.2 * len(CURVES) // 2, 7.2))
    for ax, (key, label) in zip(axes.T.flat, CURVES.items()):
        for model in fitted:
            points = [(r["scale"], r[key]) for r in rows if r["model"] == model and r.get(key)]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, "o-", label=f"{model} (x^{fitted[model][key]:.2f})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        scales = sorted({r["scale"] for r in rows})
        ax.set_xticks(scales, [f"{x:g}" for x in scales])
        ax.set_xticks([], minor=True)
        ax.set_xlabel("scale (x users, items, interactions)")
        ax.set_title(label)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot written to {path}"
