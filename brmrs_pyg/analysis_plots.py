r"""PNG plots of a run's diagnostics (:mod:`brmrs_pyg.analysis`), with matplotlib (the optional
extra ``plots``). Without matplotlib nothing is drawn and a warning says how to install it;
``analysis.json`` is written either way."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import Tensor

from brmrs_pyg.io import atomic_open
from brmrs_pyg.plotting import PlotsUnavailable, pyplot

log = logging.getLogger(__name__)

#: One colour per partition class (the modality-unique classes take the two middle ones).
_CLASS_COLOURS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#999999"]


def write_plots(report: dict[str, Any], margins: dict[str, dict[str, Tensor]],
                folder: Path) -> list[str]:
    r"""Draws ``partition.png``, ``margins.png``, ``loss_terms.png`` and, with ground truth,
    ``recall_by_type.png`` into ``folder``; returns the file names written (none when
    matplotlib is missing)."""
    try:
        plt = pyplot()
    except PlotsUnavailable as exc:
        log.warning("analysis.json written without plots: %s", exc)
        return []
    drawn = {"partition.png": _partition, "margins.png": _margins} if report["modalities"] else {}
    if "ground_truth" in report:
        drawn["recall_by_type.png"] = _recall_by_type
    if report.get("loss_terms", {}).get("terms"):
        drawn["loss_terms.png"] = _loss_terms
    for name, draw in drawn.items():
        fig = draw(plt, report, margins)
        with atomic_open(Path(folder) / name, "wb") as handle:
            fig.savefig(handle, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
    return list(drawn)


def _title(report: dict[str, Any], what: str) -> str:
    return f"{what}\n{report['model']} on {report['dataset']}, {report['split']} split"


def _class_label(name: str, pair: list[str]) -> str:
    a, b = pair
    return {"redundant": f"redundant: {a}, {b}, fused all hit",
            "degraded": f"degraded: {a}, {b} hit, fused misses",
            f"{a}_unique": f"{a} unique: {a} hits, {b} misses",
            f"{b}_unique": f"{b} unique: {b} hits, {a} misses",
            "synergy": "synergy: only fused hits",
            "all_fail": "all fail: no branch hits"}.get(name, name)


def _segments(report: dict[str, Any], name: str) -> list[tuple[str, list[float], bool]]:
    r"""The stacked parts of partition class ``name``, as (legend label, share per K, lost):
    the class whole, or for a ``<m>_unique`` class the part the fused branch keeps and,
    drawn hatched, the part it loses (``unique_split@K``)."""
    ks, label = report["ks"], _class_label(name, report["modalities"])
    if f"{name}_lost" not in report[f"unique_split@{ks[0]}"]:
        return [(label, [report[f"partition@{k}"][name] for k in ks], False)]
    lost = f"{name.replace('_', ' ')}, lost: fused misses"
    return [(text, [report[f"unique_split@{k}"][f"{name}_{key}"] for k in ks], key == "lost")
            for key, text in (("kept", f"{label}; fused hits (kept)"), ("lost", lost))]


def _partition(plt: Any, report: dict[str, Any], margins: Any) -> Any:
    ks = report["ks"]
    classes = list(report[f"partition@{ks[0]}"])
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.5 * len(ks)))
    left = [0.0] * len(ks)
    labels = [f"K = {k}" for k in ks]
    for name, colour in zip(classes, _CLASS_COLOURS):
        for label, widths, lost in _segments(report, name):
            # a lost part: the class's colour as hatching on white, beside its solid kept part
            style = ({"color": "white", "edgecolor": colour, "hatch": "///", "linewidth": 0}
                     if lost else {"color": colour})
            ax.barh(labels, widths, left=left, label=label, **style)
            left = [a + b for a, b in zip(left, widths)]
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"fraction of the {report['num_pairs']} held-out pairs")
    ax.set_ylabel("rank cut-off")
    ax.set_title(_title(report, "Which branches rank each held-out item in the top K"))
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small",
              title="partition class")
    return fig


def _margins(plt: Any, report: dict[str, Any], margins: dict[str, dict[str, Tensor]]) -> Any:
    pair = report["modalities"]
    fig, axes = plt.subplots(1, len(pair), figsize=(5.5 * len(pair), 4.2), squeeze=False)
    for ax, m, other in zip(axes[0], pair, pair[::-1]):
        chns, uniform = margins[m]["chns"].numpy(), margins[m]["uniform"].numpy()
        lo = float(min(chns.min(), uniform.min()))
        hi = float(max(chns.max(), uniform.max()))
        bins = [lo + (hi - lo) * b / 40 for b in range(41)] if hi > lo else 10
        ax.hist(uniform, bins=bins, density=True, histtype="stepfilled", alpha=0.35,
                color="#7570b3", label="uniform negative (a random pool item)")
        ax.hist(chns, bins=bins, density=True, histtype="step", linewidth=1.8,
                color="#d95f02", label=f"CHNS negative (the pool item {other} scores highest)")
        ax.axvline(0.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xlabel(f"margin s_{m}(u, i+) - s_{m}(u, j)   (< 0: the negative wins)")
        ax.set_ylabel("density of held-out pairs")
        ax.set_title(f"{m} branch")
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.22),
                  frameon=False)
    fig.suptitle(_title(report, f"Score margins of the held-out item over negatives from a "
                                f"pool of {report['pool']['size']} candidates"))
    fig.tight_layout()
    return fig


def _recall_by_type(plt: Any, report: dict[str, Any], margins: Any) -> Any:
    truth = report["ground_truth"]
    ks, branches = report["ks"], report["branches"]
    types = list(truth["counts"])
    fig, axes = plt.subplots(1, len(ks), figsize=(5.5 * len(ks), 3.8), squeeze=False)
    width = 0.8 / len(branches)
    # one scale for every panel, fitted to the data: weak models' rates stay visible
    top = max(v for k in ks for rates in truth[f"recall@{k}"].values() for v in rates.values())
    for ax, k in zip(axes[0], ks):
        for j, branch in enumerate(branches):
            values = [truth[f"recall@{k}"][branch][t] for t in types]
            ax.bar([x + (j - (len(branches) - 1) / 2) * width for x in range(len(types))],
                   values, width=width, label=f"{branch} branch")
        ax.set_xticks(range(len(types)))
        ax.set_xticklabels([f"{t.replace('_', ' ')}\n(n={truth['counts'][t]})" for t in types])
        ax.set_ylim(0, max(0.01, 1.15 * top))
        ax.set_xlabel("ground-truth type of the held-out pair")
        ax.set_ylabel(f"hit rate at K = {k}")
        ax.set_title(f"K = {k}")
        ax.legend(fontsize="small")
    fig.suptitle(_title(report, "Held-out pairs ranked in the top K, by the term that "
                                "dominates the true preference"))
    fig.tight_layout()
    return fig


def _loss_terms(plt: Any, report: dict[str, Any], margins: Any) -> Any:
    info = report["loss_terms"]
    epochs, terms = info["epochs"], info["terms"]
    shares = info["consistent"]
    fig, axes = plt.subplots(1, 2 if shares else 1, figsize=(11 if shares else 5.5, 3.8),
                             squeeze=False)
    ax = axes[0][0]
    curves = info["weighted"] if shares else info["raw"]
    for t in terms:
        label = f"{info['weights'][t]:g} x {t}" if shares else t
        ax.plot(epochs, curves[t], label=label)
    ax.plot(epochs, info["loss"], color="black", linewidth=1.5, label="loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("weighted term" if shares else "raw term (weights unknown)")
    ax.legend(fontsize="small")
    if shares:
        share = axes[0][1]
        share.stackplot(epochs, [[w / total if total else 0.0 for w, total in
                                  zip(info["weighted"][t], info["loss"])] for t in terms],
                        labels=terms)
        share.set_ylim(0, 1)
        share.set_xlabel("epoch")
        share.set_ylabel("share of the loss")
        share.legend(fontsize="small", loc="lower left")
    for row in axes:
        for a in row:
            if info["best_epoch"] is not None:
                a.axvline(info["best_epoch"], color="grey", linestyle=":", linewidth=1)
    dominant = f"; {info['dominant']} dominates at the best epoch" if info["dominant"] else ""
    fig.suptitle(f"Loss terms by epoch (dotted: best epoch){dominant}\n"
                 f"{report['model']} on {report['dataset']}")
    fig.tight_layout()
    return fig
