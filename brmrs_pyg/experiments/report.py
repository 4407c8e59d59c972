r"""Tables (CSV and Markdown, ``mean ± std`` over seeds, best marked) and PNG plots of a
suite. Plots need matplotlib (the ``plots`` extra); it is imported only when a plot is
drawn."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from brmrs_pyg.io import atomic_open, atomic_write_csv, atomic_write_text
from brmrs_pyg.plotting import pyplot

from .compare import Comparison
from .runner import Summary

#: The metrics of the paper's tables.
TABLE_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


@dataclass(frozen=True)
class TableRow:
    r"""A table row: its label, extra leading columns (e.g. a swept value) and a
    :class:`Summary` per metric (missing when every run of the row failed)."""

    label: str
    cells: dict[str, Summary]
    extra: dict[str, str] = field(default_factory=dict)


def fmt(summary: Summary | None) -> str:
    r"""``0.1234 ± 0.0056`` (just the mean for one seed; ``failed`` for none)."""
    if summary is None:
        return "failed"
    if math.isnan(summary.std):
        return f"{summary.mean:.4f}"
    return f"{summary.mean:.4f} ± {summary.std:.4f}"


def best_rows(rows: Sequence[TableRow], metric: str) -> set[int]:
    r"""Indices of the rows with the highest mean of ``metric`` (all of them on a tie)."""
    means = [r.cells[metric].mean for r in rows if metric in r.cells]
    if not means:
        return set()
    top = max(means)
    return {i for i, r in enumerate(rows) if metric in r.cells and r.cells[metric].mean == top}


def write_tables(folder: Path, rows: Sequence[TableRow], title: str,
                 metrics: Sequence[str] = TABLE_METRICS, notes: Sequence[str] = (),
                 stem: str = "table", mark_best: bool = True) -> None:
    r"""Writes ``<stem>.csv`` (``label``, extra columns, ``n``, ``<metric>_mean``,
    ``<metric>_std`` per metric, ``best``: the metrics where the row is best) and
    ``<stem>.md`` (``mean ± std``, best in bold, ``notes`` below) into ``folder``."""
    extra = list(dict.fromkeys(k for r in rows for k in r.extra))
    best = {m: best_rows(rows, m) if mark_best else set() for m in metrics}
    header = ["label", *extra, "n"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
    csv_rows = []
    for i, row in enumerate(rows):
        values: list[Any] = [row.label, *(row.extra.get(k, "") for k in extra), _n(row)]
        for m in metrics:
            cell = row.cells.get(m)
            values += ["", ""] if cell is None else [
                f"{cell.mean:.6f}", "" if math.isnan(cell.std) else f"{cell.std:.6f}"]
        csv_rows.append([*values, ";".join(m for m in metrics if i in best[m])])
    atomic_write_csv(folder / f"{stem}.csv", [*header, "best"], csv_rows)
    lines = [f"# {title}", "", "| " + " | ".join(["", *extra, "n", *metrics]) + " |",
             "|" + "---|" * (len(extra) + len(metrics) + 2)]
    for i, row in enumerate(rows):
        cells = [f"**{fmt(row.cells.get(m))}**" if i in best[m] else fmt(row.cells.get(m))
                 for m in metrics]
        lines.append("| " + " | ".join([row.label, *(row.extra.get(k, "") for k in extra),
                                        str(_n(row)), *cells]) + " |")
    lines += ["", "Mean ± sample standard deviation over n seeds (test split, best-valid "
              "epoch)" + ("; best per column in bold." if mark_best else "."), *notes]
    atomic_write_text(folder / f"{stem}.md", "\n".join(lines) + "\n")


def _n(row: TableRow) -> int:
    return max((c.n for c in row.cells.values()), default=0)


def significance_lines(name_a: str, name_b: str, comparisons: Sequence[Comparison]
                       ) -> list[str]:
    r"""Markdown lines reporting paired tests of ``a`` against ``b``."""
    lines = ["", f"## {name_a} vs {name_b}: paired tests over test users", "",
             "| metric | users | mean a | mean b | Wilcoxon z | Wilcoxon p | t | t-test p |",
             "|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        lines.append(f"| {c.metric} | {c.num_users} | {c.mean_a:.4f} | {c.mean_b:.4f} | "
                     f"{c.wilcoxon.z:.2f} | {c.wilcoxon.p_value:.2g} | "
                     f"{c.t_test.statistic:.2f} | {c.t_test.p_value:.2g} |")
    return lines


#: What the significance tables of :func:`significance_lines` hold.
SIGNIFICANCE_NOTE = ("Paired tests: each test user's metric averaged over a configuration's "
                     "seeds, then two-sided Wilcoxon signed-rank (normal approximation, zero "
                     "differences dropped, tie-corrected) and paired t-test over the users.")


@dataclass(frozen=True)
class Series:
    r"""A line of a plot: a value (and optional error bar) per tick of its panel."""

    label: str
    y: Sequence[float]
    err: Sequence[float] | None = None


@dataclass(frozen=True)
class Panel:
    r"""One set of axes: ``series`` drawn over the ticks ``x`` (the swept values, evenly
    spaced whatever their size), as lines with error bars or as stacked areas (parts of a
    whole, e.g. the six-way partition)."""

    title: str
    xlabel: str
    ylabel: str
    x: Sequence[str]
    series: Sequence[Series]
    stacked: bool = False


def line_plot(path: Path, title: str, panels: Sequence[Panel]) -> None:
    r"""A figure of ``panels``, three to a row (lines with error bars, or stacked areas),
    saved to ``path`` (PNG)."""
    plt = pyplot()
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        ticks = range(len(panel.x))
        if panel.stacked:
            ax.stackplot(ticks, *(s.y for s in panel.series),
                         labels=[s.label for s in panel.series], alpha=0.85)
            ax.set_ylim(0, 1)
        else:
            for s in panel.series:
                ax.errorbar(ticks, s.y, yerr=_err(s.err), marker="o", capsize=3, label=s.label)
        ax.set_xticks(ticks, [str(v) for v in panel.x])
        ax.set_title(panel.title)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        if panel.stacked:  # beside the areas, which fill the whole axes
            ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
        else:
            ax.legend(fontsize=8)
    _save(fig, path, title)


def bar_plot(path: Path, title: str, rows: Sequence[TableRow],
             metrics: Sequence[str] = ("recall@20", "ndcg@20")) -> None:
    r"""Grouped bars of each row's mean ``metrics`` with ± std error bars, saved to
    ``path`` (PNG)."""
    plt = pyplot()
    rows = [r for r in rows if r.cells]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) * len(metrics) / 2 + 2), 4.2))
    width = 0.8 / len(metrics)
    top = max(r.cells[m].mean + (0 if math.isnan(r.cells[m].std) else r.cells[m].std)
              for r in rows for m in metrics)
    for j, metric in enumerate(metrics):
        xs = [i + (j - (len(metrics) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [r.cells[metric].mean for r in rows], width, label=metric,
               yerr=_err([r.cells[metric].std for r in rows]), capsize=3)
    ax.set_xticks(range(len(rows)), [r.label for r in rows], rotation=20, ha="right")
    ax.set_xlabel("configuration")
    ax.set_ylabel("test metric (mean ± std over seeds)")
    ax.set_ylim(0, 1.2 * top if top > 0 else 1)  # room for the legend above the bars
    ax.legend(ncol=len(metrics), loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path, title)


def _err(err: Sequence[float] | None) -> list[float] | None:
    if err is None:
        return None
    values = [0.0 if math.isnan(e) else e for e in err]
    return values if any(values) else None


def _save(fig: Any, path: Path, title: str) -> None:
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
