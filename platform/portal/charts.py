"""Server-side charts: matplotlib (Agg) → SVG. Axes labelled, units given, a legend per series.

Readable at 40 rounds and more: at most about ten round ticks, text at 10-12 pt (the page shows the
720 px image at about 1.4 px per pt), one colour and one marker shape per hospital (markers on
every few points only, staggered between hospitals so that equal lines still show each hospital),
one line style per metric, and a legend of hospitals and metrics rather than of every pair. Text
stays text in the SVG (selectable, scaled by the browser). The study page has the same numbers as
a table (``results_table``)."""

from __future__ import annotations

import io
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

COLORS = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7a8a", "#57606a"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
METRIC_LABELS = {"auc": "AUC", "accuracy": "accuracy", "rmse": "RMSE"}
METRIC_STYLES = {"auc": "-", "accuracy": "--", "rmse": "-", "c_index": "-", "macro_auc": "-"}
FONT_PT = 10          # ticks and legend
LABEL_PT = 11         # axis labels
TITLE_PT = 12
MAX_TICKS = 10        # round ticks on the x axis
MAX_MARKERS = 10      # markers per line
RC = {"svg.fonttype": "none", "font.size": FONT_PT, "axes.labelsize": LABEL_PT, "axes.titlesize": TITLE_PT,
      "xtick.labelsize": FONT_PT, "ytick.labelsize": FONT_PT, "legend.fontsize": FONT_PT}


def _svg(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#57606a", fontsize=LABEL_PT)


def _round_axis(ax, rounds_planned: int, start: float) -> None:
    ax.set_xlabel("round")
    ax.set_xlim(start, max(rounds_planned, 1) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=MAX_TICKS, integer=True, min_n_ticks=1))


def _markevery(n_points: int, i: int) -> tuple[int, int] | None:
    """Markers on every few points of a line (None: on all), offset by hospital ``i``."""
    step = -(-n_points // MAX_MARKERS)
    return None if step <= 1 else (i % step, step)


def _legend(ax, handles: list) -> None:
    """Below the plot, in as many columns as fit the figure's width at FONT_PT."""
    longest = max((len(h.get_label()) for h in handles), default=1)
    ncol = max(1, min(len(handles), 4, 84 // (longest + 6)))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol, frameon=False,
              fontsize=FONT_PT, handlelength=2.6)


def metrics_chart(reports: list[dict], *, rounds_planned: int, title: str) -> bytes:
    """reports: [{"round": n, "hospital": name, "metrics": {...}}]. One line per hospital and metric:
    colour and marker name the hospital, the line style the metric."""
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(7.2, 3.8), dpi=100)
        series: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
        names = set()
        for r in reports:
            for k, v in (r["metrics"] or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    series[(k, r["hospital"])].append((r["round"], float(v)))
                    names.add(k)
        regression = names == {"rmse"} or ("rmse" in names and not names & {"auc", "accuracy"})
        shown = {"rmse"} if regression else {"auc", "accuracy"}
        hospitals = sorted({h for (m, h) in series if m in shown})
        metrics = [m for m in ("auc", "accuracy", "rmse") if m in shown and m in names]
        for (metric, hosp), pts in sorted(series.items()):
            if metric not in shown:
                continue
            pts.sort()
            i = hospitals.index(hosp)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=METRIC_STYLES.get(metric, ":"),
                    marker=MARKERS[i % len(MARKERS)], markevery=_markevery(len(pts), i), markersize=5,
                    linewidth=1.6, alpha=0.9, color=COLORS[i % len(COLORS)], label=f"{metric.upper()} · {hosp}")
        _round_axis(ax, rounds_planned, 0.5)
        if regression:
            ax.set_ylabel("RMSE on the hospital's test split\n(label units)")
        else:
            ax.set_ylabel("score on the hospital's\ntest split (0–1)")
            ax.set_ylim(0, 1.02)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if hospitals:
            handles = [Line2D([], [], color=COLORS[i % len(COLORS)], marker=MARKERS[i % len(MARKERS)], linestyle="-",
                              label=h) for i, h in enumerate(hospitals)]
            handles += [Line2D([], [], color="#24292f", linestyle=METRIC_STYLES.get(m, ":"),
                               label=METRIC_LABELS.get(m, m))
                        for m in metrics]
            _legend(ax, handles)
        else:
            _empty(ax, "no round evaluated yet")
        return _svg(fig)


def privacy_chart(spends: list[dict], *, budget: float, rounds_planned: int, caps: dict[str, float]) -> bytes:
    """spends: [{"round": n, "hospital": name, "epsilon": cumulative}]; budget: the study epsilon;
    caps: hospital name -> the hospital's own max epsilon (when declared)."""
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(7.2, 3.8), dpi=100)
        by_h: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for s in spends:
            by_h[s["hospital"]].append((s["round"], s["epsilon"]))
        hospitals = sorted(by_h)
        ymax = budget
        for i, h in enumerate(hospitals):
            pts = sorted(by_h[h])
            xs, ys = [0] + [p[0] for p in pts], [0.0] + [p[1] for p in pts]
            # Hospitals often spend identically (same data size): later lines are thinner so earlier
            # ones show, and their markers sit on other rounds.
            ax.plot(xs, ys, "-", marker=MARKERS[i % len(MARKERS)], markevery=_markevery(len(xs), i),
                    markersize=max(3.5, 9 - 2.5 * i), linewidth=max(1.0, 4.0 - 1.0 * i), alpha=0.9,
                    color=COLORS[i % len(COLORS)], label=h)
            ymax = max(ymax, max(p[1] for p in pts))
            cap = caps.get(h)
            if cap is not None and cap < budget * 3:
                ax.axhline(cap, color=COLORS[i % len(COLORS)], linestyle=":", linewidth=1.2,
                           label=f"{h}'s cap ε={cap:g}")
                ymax = max(ymax, cap)
        ax.axhline(budget, color="#24292f", linestyle="--", linewidth=1.2, label=f"study budget ε={budget:g}")
        ax.set_ylabel("cumulative ε\n(each node's accountant)")
        _round_axis(ax, rounds_planned, 0)
        ax.set_ylim(0, ymax * 1.15)
        ax.set_title("Privacy spent per hospital (from each node's accountant)")
        ax.grid(True, alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        _legend(ax, handles)
        if not spends:
            _empty(ax, "no privacy spend reported yet")
        return _svg(fig)


def results_table(reports: list[dict], spends: list[dict]) -> dict:
    """The charts' numbers as a table: {"hospitals": [...], "metrics": [...], "rows": [{"round": n,
    "cells": [{"hospital", "values": [metric values in "metrics" order], "epsilon"}]}]}, one row per
    round that has a report or a spend, in round order."""
    metrics_seen = {k for r in reports for k, v in (r["metrics"] or {}).items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics = [m for m in ("auc", "accuracy", "rmse", "c_index", "macro_auc") if m in metrics_seen]
    hospitals = sorted({r["hospital"] for r in reports} | {s["hospital"] for s in spends})
    by: dict[tuple[int, str], dict] = defaultdict(dict)
    for r in reports:
        by[(r["round"], r["hospital"])].update({m: (r["metrics"] or {}).get(m) for m in metrics})
    for s in spends:
        cell = by[(s["round"], s["hospital"])]
        cell["epsilon"] = max(cell.get("epsilon") or 0.0, s["epsilon"])
    rounds = sorted({k[0] for k in by})
    rows = [{"round": n, "cells": [{"hospital": h, "values": [by.get((n, h), {}).get(m) for m in metrics],
                                    "epsilon": by.get((n, h), {}).get("epsilon")} for h in hospitals]}
            for n in rounds]
    return {"hospitals": hospitals, "metrics": metrics, "rows": rows}
