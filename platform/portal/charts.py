"""Server-side charts: matplotlib (Agg) → SVG. Axes labelled, units given, a legend per series."""

from __future__ import annotations

import io
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7a8a", "#57606a"]


def _svg(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#57606a", fontsize=11)


def metrics_chart(reports: list[dict], *, rounds_planned: int, title: str) -> bytes:
    """reports: [{"round": n, "hospital": name, "metrics": {...}}]. One line per hospital and metric."""
    fig, ax = plt.subplots(figsize=(7.2, 3.6), dpi=100)
    series: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    names = set()
    for r in reports:
        for k, v in (r["metrics"] or {}).items():
            if isinstance(v, (int, float)):
                series[(k, r["hospital"])].append((r["round"], float(v)))
                names.add(k)
    regression = names == {"rmse"} or ("rmse" in names and not names & {"auc", "accuracy"})
    hospitals = sorted({h for _, h in series})
    styles = {"auc": "-", "accuracy": "--", "rmse": "-"}
    markers = {"auc": "o", "accuracy": "s", "rmse": "o"}
    for (metric, hosp), pts in sorted(series.items()):
        if regression and metric != "rmse":
            continue
        if not regression and metric not in ("auc", "accuracy"):
            continue
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], styles.get(metric, ":"), marker=markers.get(metric, "o"),
                markersize=5, color=COLORS[hospitals.index(hosp) % len(COLORS)], label=f"{metric.upper()} · {hosp}")
    ax.set_xlabel("round")
    ax.set_xlim(0.5, max(rounds_planned, 1) + 0.5)
    ax.set_xticks(range(1, max(rounds_planned, 1) + 1))
    if regression:
        ax.set_ylabel("RMSE on the hospital's test split (label units)")
    else:
        ax.set_ylabel("score on the hospital's test split (0–1)")
        ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    else:
        _empty(ax, "no round evaluated yet")
    return _svg(fig)


def privacy_chart(spends: list[dict], *, budget: float, rounds_planned: int, caps: dict[str, float]) -> bytes:
    """spends: [{"round": n, "hospital": name, "epsilon": cumulative}]; budget: the study epsilon;
    caps: hospital name -> the hospital's own max epsilon (when declared)."""
    fig, ax = plt.subplots(figsize=(7.2, 3.6), dpi=100)
    by_h: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for s in spends:
        by_h[s["hospital"]].append((s["round"], s["epsilon"]))
    hospitals = sorted(by_h)
    ymax = budget
    marks = ["o", "s", "^", "D", "v", "P", "X", "*"]
    for i, h in enumerate(hospitals):
        pts = sorted(by_h[h])
        # Hospitals often spend identically (same data size): later lines are thinner so earlier ones show.
        ax.plot([0] + [p[0] for p in pts], [0.0] + [p[1] for p in pts], "-", marker=marks[i % len(marks)],
                markersize=max(4, 9 - 2 * i), linewidth=max(1.0, 3.2 - 0.8 * i), alpha=0.9,
                color=COLORS[i % len(COLORS)], label=f"ε spent · {h}")
        ymax = max(ymax, max(p[1] for p in pts))
        cap = caps.get(h)
        if cap is not None and cap < budget * 3:
            ax.axhline(cap, color=COLORS[i % len(COLORS)], linestyle=":", linewidth=1, label=f"{h}'s own cap ε={cap:g}")
            ymax = max(ymax, cap)
    ax.axhline(budget, color="#24292f", linestyle="--", linewidth=1.2, label=f"study budget ε={budget:g}")
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative ε (RDP accountant)")
    ax.set_xlim(0, max(rounds_planned, 1) + 0.3)
    ax.set_xticks(range(0, max(rounds_planned, 1) + 1))
    ax.set_ylim(0, ymax * 1.15)
    ax.set_title("Privacy spent per hospital (from each node's accountant)", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    if not spends:
        _empty(ax, "no privacy spend reported yet")
    return _svg(fig)
