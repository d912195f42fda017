"""Utility benchmark: does every hospital get a better model from the consortium than alone?

Usage:
    python bench/bench_utility.py [--quick] [--seeds N] [--datasets whas500,gbsg2,...]
                                  [--setups standard,scaled,auto,auto+baseline] [--epsilons 1,3] [--out FILE.md]

Public clinical tables that ship with scikit-survival and lifelines (bench/utility_data.py: binary
endpoints from survival data, rows censored before the horizon dropped), split non-IID into 3 to 5
small hospitals by a covariate, each with a held-out test set the node never sees. For each
setting (bench/utility_sim.py: the portal's "Standard" preset, the demo's settings, and variants of
the node), each epsilon and each seed: (a) the federated model, trained with the node's own DP-SGD
and the codec's quantised mean update; (b) each hospital's local-only model under the same budget
(hospital_node.trainer.train_local_only); (c) the same logistic model trained centrally on the
pooled rows without privacy. Metric: ROC AUC on each hospital's own test rows and on the pooled
test rows; mean +- s.d. over seeds. Prints a markdown table (and writes it with --out).

Targets (issue 13), checked at epsilon 1 per hospital:
  beats-all:  for every hospital, mean over seeds of (federated AUC - its local-only AUC) on its
              own test rows is > 0;
  gap closed: on the pooled test rows, (federated - best local-only) / (central - best local-only)
              >= 2/3, means over seeds; "best local-only" is the hospital whose local-only model has
              the highest pooled AUC on average over seeds (one hospital for all seeds: taking the
              best of the hospitals again in every seed would pick test-set noise).
  Also shown, "gap closed, own rows": the same ratio per hospital on its own test rows,
  mean(federated - local-only) / mean(central - local-only) over hospitals and seeds.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import utility_data
import utility_sim
from benchargs import int_in

warnings.filterwarnings("ignore")


def names(choices: dict):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected comma-separated names from {', '.join(choices)}, got {text!r}")
        return items
    return parse


def epsilons(text: str) -> list[float]:
    try:
        vals = [float(t) for t in text.split(",")]
    except ValueError:
        vals = []
    if not vals or not all(0 < v <= 100 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated epsilons in (0, 100], e.g. 1,3; got {text!r}")
    return vals


def ms(values) -> str:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return "n/a" if not len(v) else f"{v.mean():.3f} ± {v.std():.3f}"


def pct(x: float) -> str:
    return "no gap" if not np.isfinite(x) else f"{x:.0%}"


def summarise(runs: list[dict]) -> dict:
    fed_own = np.array([r["fed_own"] for r in runs])  # [seeds, hospitals]
    loc_own = np.array([r["local_own"] for r in runs])
    diff = np.nanmean(fed_own - loc_own, axis=0)  # per hospital, over seeds
    wins = np.nanmean(fed_own > loc_own, axis=0)
    loc_pooled = np.array([r["local_pooled"] for r in runs])  # [seeds, hospitals]
    best_local = loc_pooled[:, int(np.argmax(loc_pooled.mean(axis=0)))]
    fed, cen = np.array([r["fed_pooled"] for r in runs]), np.array([r["central_pooled"] for r in runs])
    gap = float(np.mean(cen) - np.mean(best_local))
    closed = float((np.mean(fed) - np.mean(best_local)) / gap) if gap > 1e-9 else float("nan")
    cen_own = np.array([r["central_own"] for r in runs])
    own_gap = float(np.nanmean(cen_own - loc_own))
    closed_own = float(np.nanmean(fed_own - loc_own) / own_gap) if own_gap > 1e-9 else float("nan")
    return {"fed": fed, "best_local": best_local, "central": cen, "diff": diff, "wins": wins, "closed": closed,
            "closed_own": closed_own,
            "beats_all": bool(np.all(diff > 0)), "fed_own": fed_own, "loc_own": loc_own,
            "cen_own": cen_own}


def table(results: list[tuple], order: list[str]) -> str:
    lines = ["| data set | setting | ε | federated (pooled) | best local-only (pooled) | central, no DP (pooled) | "
             "gap closed | gap closed, own rows | fed − local, per hospital (own test rows) | beats every local? |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for task, setup, eps, s in results:
        per = ", ".join(f"{d:+.3f}" for d in s["diff"])
        lines.append(f"| {task.name} | {setup.key} | {eps:g} | {ms(s['fed'])} | {ms(s['best_local'])} | "
                     f"{ms(s['central'])} | {pct(s['closed'])} | {pct(s['closed_own'])} | {per} | "
                     f"{'yes' if s['beats_all'] else 'no'} |")
    return "\n".join(lines)


def per_hospital(results: list[tuple]) -> str:
    lines = ["| data set | setting | ε | hospital | rows (node) | federated | local-only | central | fed > local (seeds) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for task, setup, eps, s, runs in results:
        for j, name in enumerate(task.order):
            lines.append(f"| {task.name} | {setup.key} | {eps:g} | {name} | {runs[0]['n_train'][j]} | "
                         f"{ms(s['fed_own'][:, j])} | {ms(s['loc_own'][:, j])} | {ms(s['cen_own'][:, j])} | "
                         f"{s['wins'][j]:.0%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds, epsilon 1 only, two data sets")
    ap.add_argument("--seeds", type=int_in(1, 100), default=5, help="number of seeds (default 5)")
    ap.add_argument("--datasets", type=names(utility_data.TASKS), default=list(utility_data.TASKS))
    ap.add_argument("--setups", type=names(utility_sim.SETUPS), default=list(utility_sim.SETUPS))
    ap.add_argument("--epsilons", type=epsilons, default=[1.0, 3.0])
    ap.add_argument("--per-hospital", action="store_true", help="also print the per-hospital table")
    ap.add_argument("--out", help="write the markdown tables to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.epsilons, args.datasets = 2, [1.0], args.datasets[:2]
    t0 = time.time()
    results, detail = [], []
    for dname in args.datasets:
        task = utility_data.TASKS[dname]()
        splits = [utility_data.hospitals(task, seed=seed) for seed in range(args.seeds)]
        print(f"{task.name}: {task.endpoint}; hospitals by {task.split_by}; seed 0: "
              f"{utility_data.describe(task, splits[0])}", file=sys.stderr)
        for key in args.setups:
            setup = utility_sim.SETUPS[key]
            for eps in args.epsilons:
                runs = [utility_sim.run_one(setup, hosp, epsilon=eps, seed=seed) for seed, hosp in enumerate(splits)]
                s = summarise(runs)
                results.append((task, setup, eps, s))
                detail.append((task, setup, eps, s, runs))
                print(f"  {key:9s} eps={eps:g}: federated {ms(s['fed'])}, best local {ms(s['best_local'])}, "
                      f"central {ms(s['central'])}, gap closed {pct(s['closed'])}, beats all: {s['beats_all']} "
                      f"[{time.time() - t0:.0f}s]", file=sys.stderr)
    out = table(results, args.setups)
    if args.per_hospital:
        out += "\n\n" + per_hospital(detail)
    settings = "\n".join(f"- `{s.key}`: {s.label}" for s in map(utility_sim.SETUPS.get, args.setups))
    out += f"\n\nSettings:\n{settings}\n\n{args.seeds} seeds, delta {utility_sim.DELTA:g}; {time.time() - t0:.0f} s.\n"
    print(out)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
