"""Utility of distributed DP against local DP at the same per-hospital budget (issue 15, "Measured").

Usage:
    python bench/bench_ddp_utility.py [--seeds N] [--quick] [--out FILE.md]

Data sets (bench/utility_data.py): WHAS500 and GBSG2 in their 4 age-band hospitals, and FLCHAIN
cut into 4, 10 and 20 equal-count age bands (``flchain_bands``), each hospital a random 100-250
rows of its band (70-175 given to its node, the rest held out by the benchmark). Per seed (one
split, one set of training randomness shared by every model of that seed):
  * local DP, epsilon 1 and 2 per hospital: bench/utility_sim.run_one with the ``auto`` setting
    (the node's DP-SGD, full-batch steps, the codec's quantised mean update);
  * distributed DP, epsilon 1 per hospital: bench/utility_ddp.run_one (the node's ddp_update
    gradient sums, the study's own discrete Gaussian plan and packing, the sum decoded as the key
    holders decode it; masks and encryption left out since they cancel exactly), collusion T = 1,
    quorum Q = K (every hospital must survive; K - 1 honest shares) and Q = the smallest the study
    allows (the Shamir threshold, floor((K + T) / 2) + 1: drop-out tolerant, Q - T honest shares);
  * each hospital's local-only model with its whole budget at epsilon 1, and the central
    non-private model (both from utility_sim.run_one).
Metric: ROC AUC on the pooled test rows (mean +- s.d. over seeds), the paired per-seed
difference distributed - local, and per hospital on its own test rows.

Target (issue 15): with 4 hospitals, distributed DP at epsilon 1 at least as good as local DP at
epsilon 2; the advantage over local DP growing with the number of hospitals.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import utility_data
import utility_ddp
import utility_sim
from bench_utility import ms
from benchargs import int_in

from fedproto.secagg import min_threshold

warnings.filterwarnings("ignore")

TASKS = {
    "WHAS500": utility_data.whas500,
    "GBSG2": utility_data.gbsg2,
    "FLCHAIN-4": lambda: utility_data.flchain_bands(4),
    "FLCHAIN-10": lambda: utility_data.flchain_bands(10),
    "FLCHAIN-20": lambda: utility_data.flchain_bands(20),
}
AUTO = utility_sim.SETUPS["auto"]


def paired(a, b) -> str:
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return f"{d.mean():+.3f} ± {d.std():.3f}"


def run_task(name: str, seeds: int) -> dict:
    task = TASKS[name]()
    k = len(task.order)
    q_min = min_threshold(k, utility_ddp.COLLUSION)
    rows: dict[str, list] = {key: [] for key in ("ldp1", "ldp2", "ddp", "ddp_min", "local", "central")}
    own: dict[str, list] = {key: [] for key in ("ldp1", "ddp", "local")}
    n_train, declared, info = None, [], {}
    for seed in range(seeds):
        hosp = utility_data.hospitals(task, seed=seed)
        l1 = utility_sim.run_one(AUTO, hosp, epsilon=1.0, seed=seed)
        l2 = utility_sim.run_one(AUTO, hosp, epsilon=2.0, seed=seed)
        d = utility_ddp.run_one(hosp, epsilon=1.0, seed=seed)
        dm = utility_ddp.run_one(hosp, epsilon=1.0, seed=seed, quorum=q_min)
        rows["ldp1"].append(l1["fed_pooled"])
        rows["ldp2"].append(l2["fed_pooled"])
        rows["ddp"].append(d["fed_pooled"])
        rows["ddp_min"].append(dm["fed_pooled"])
        rows["central"].append(l1["central_pooled"])
        rows["local"].append(l1["local_pooled"])
        own["ldp1"].append(l1["fed_own"])
        own["ddp"].append(d["fed_own"])
        own["local"].append(l1["local_own"])
        n_train = l1["n_train"]
        declared = [len(h.y_node) for h in hosp]
        info = {"ldp_sigma": l1["sigmas"], "ddp_nm": d["sum_nm"], "ddp_min_nm": dm["sum_nm"], "guaranteed_nm": d["central_nm"],
                "honest": d["honest"], "honest_min": dm["honest"], "q_min": q_min}
    loc = np.array(rows["local"])  # [seeds, hospitals]
    rows["best_local"] = list(loc[:, int(np.argmax(loc.mean(axis=0)))])
    return {"name": name, "k": k, "task": task, "rows": rows, "own": {k_: np.array(v) for k_, v in own.items()},
            "n_train": n_train, "declared": declared, "info": info}


def summary_table(res: list[dict]) -> str:
    lines = ["| data set | K | rows per node (training) | central, no DP | best local-only, ε 1 | local DP ε 1 | local DP ε 2 | "
             "distributed ε 1, Q = K | distributed ε 1, Q = threshold | distributed − local ε 2 (paired) | "
             "distributed − local ε 1 (paired) | ≥ local ε 2? |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res:
        x = r["rows"]
        d2 = np.mean(np.array(x["ddp"]) - np.array(x["ldp2"]))
        lines.append(f"| {r['name']} | {r['k']} | {min(r['n_train'])}-{max(r['n_train'])} | {ms(x['central'])} | "
                     f"{ms(x['best_local'])} | {ms(x['ldp1'])} | {ms(x['ldp2'])} | {ms(x['ddp'])} | {ms(x['ddp_min'])} | "
                     f"{paired(x['ddp'], x['ldp2'])} | {paired(x['ddp'], x['ldp1'])} | {'yes' if d2 >= 0 else 'no'} |")
    return "\n".join(lines)


def noise_ratio(r: dict, sum_nm: float) -> float:
    """Standard deviation of the noise in the global step, distributed over local DP at epsilon 1.
    Local: the codec's mean of the K updates weighted by n_i, hospital i's DP-SGD noise sigma_i C / n_i
    -> C sqrt(sum sigma_i^2) / sum n_i. Distributed: C sum_nm / (K N), N = batch_size (the mean
    declared size; training rows are fewer by the node's local split, hence the sizes here)."""
    i, n = r["info"], np.asarray(r["n_train"], dtype=float)
    local = np.sqrt(np.sum(np.square(i["ldp_sigma"]))) / n.sum()
    declared = np.mean(r["declared"])
    return float(sum_nm / (len(n) * declared) / local)


def own_rows_table(res: list[dict]) -> str:
    lines = ["| data set | K | mean own-rows AUC: local-only ε 1 | local DP ε 1 | distributed ε 1 | "
             "hospitals where local DP beats "
             "local-only | hospitals where distributed beats local-only | σ per hospital (local DP) | "
             "noise multiplier of the released sum, K shares (distributed, Q = K / Q = thr.) | of which guaranteed "
             "(Q − T honest shares) | honest shares (Q = K / thr.) | noise of the mean update, distributed / local "
             "(Q = K / thr.) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res:
        o, i = r["own"], r["info"]
        lo, l1, dd = (np.nanmean(o[key], axis=0) for key in ("local", "ldp1", "ddp"))  # per hospital, over seeds
        ok = np.isfinite(lo)
        lines.append(f"| {r['name']} | {r['k']} | {np.nanmean(lo):.3f} | {np.nanmean(l1):.3f} | {np.nanmean(dd):.3f} | "
                     f"{int(np.sum(l1[ok] > lo[ok]))} of {int(ok.sum())} | {int(np.sum(dd[ok] > lo[ok]))} of {int(ok.sum())} | "
                     f"{min(i['ldp_sigma']):.1f}-{max(i['ldp_sigma']):.1f} | {i['ddp_nm']:.2f} / {i['ddp_min_nm']:.2f} | "
                     f"{i['guaranteed_nm']:.2f} | {i['honest']} / {i['honest_min']} (Q = {i['q_min']}) | "
                     f"{noise_ratio(r, i['ddp_nm']):.2f} / {noise_ratio(r, i['ddp_min_nm']):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int_in(1, 100), default=5, help="number of seeds (default 5)")
    ap.add_argument("--quick", action="store_true", help="2 seeds, WHAS500 and FLCHAIN-10 only")
    ap.add_argument("--out", help="write the markdown tables to this file")
    args = ap.parse_args(argv)
    names = ["WHAS500", "FLCHAIN-10"] if args.quick else list(TASKS)
    seeds = 2 if args.quick else args.seeds
    t0 = time.time()
    res = []
    for name in names:
        r = run_task(name, seeds)
        res.append(r)
        x = r["rows"]
        print(f"{name} (K = {r['k']}): local ε1 {ms(x['ldp1'])}, ε2 {ms(x['ldp2'])}, distributed ε1 {ms(x['ddp'])} "
              f"[{time.time() - t0:.0f}s]", file=sys.stderr)
    out = (summary_table(res) + "\n\n" + own_rows_table(res) +
           f"\n\nROC AUC on the pooled test rows, mean ± s.d. over {seeds} seeds (paired columns: the mean and s.d. of the "
           f"per-seed difference); delta {utility_sim.DELTA:g}, collusion T = {utility_ddp.COLLUSION}; "
           f"{time.time() - t0:.0f} s.\n")
    print(out)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
