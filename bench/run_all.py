"""Run every benchmark and print their tables: `python bench/run_all.py` (`make bench`).

1. encoding (bench/bench_encoding.py --quick)      3. DP overhead (bench/bench_dp_overhead.py)
2. round overhead (bench/bench_round_overhead.py)  4. scale (bench/bench_scale.py)
5. audit report (bench/bench_audit_report.py)

Benchmarks 2, 4 and 5 need PostgreSQL (2 and 4 Redis too; `make services` starts them); they use the database
BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/bench, created if missing) and the
Redis BENCH_REDIS_URL (default redis://127.0.0.1:6379/9, flushed). Pass --quick for a shorter run
(round overhead on SQLite only, DP quick, scale 10 and 50 hospitals).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    runs = [
        ("1. encoding", ["bench_encoding.py", "--quick"]),
        ("2. round overhead", ["bench_round_overhead.py", "--backend", "sqlite" if args.quick else "both"]),
        ("3. DP overhead", ["bench_dp_overhead.py"] + (["--quick"] if args.quick else [])),
        ("4. scale", ["bench_scale.py"] + (["--hospitals", "10,50"] if args.quick else [])),
        ("5. audit report", ["bench_audit_report.py"] + (["--repeat", "3"] if args.quick else [])),
    ]
    try:
        import os

        cores = os.cpu_count()
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        cores, mem = "?", 0.0
    print(f"Machine: {platform.machine()}, {cores} cores, {mem:.0f} GiB, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    failed = []
    for title, cmd in runs:
        print(f"\n{'=' * 100}\n{title}: python bench/{' '.join(cmd)}\n{'=' * 100}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call([sys.executable, str(BENCH / cmd[0]), *cmd[1:]])
        print(f"({title}: {time.monotonic() - t0:.0f} s, exit status {rc})", flush=True)
        if rc:
            failed.append(title)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
