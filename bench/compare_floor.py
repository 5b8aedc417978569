"""Goal 1's ratio taken several times: `throughput.py --floor N` run `--pairs` times back to back
(the floor, then runrelay on a fresh stack, each time), and the ratios' median, least and
greatest. On a shared machine one pair moves with the minute (0.43-0.51x in four pairs on the
same code); the median of several is the figure to quote.

    python bench/compare_floor.py --pairs 4                       # --floor 100 --runs 1500
    python bench/compare_floor.py --pairs 4 --floor 200 -- --runs 3000 --concurrency 50

Options after `--` go to `throughput.py` as they are. Exit status: 0 every pair ran with no
failed run, 2 a run failed in some pair, 1 a pair could not run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_ARGS = ["--runs", "1500", "--concurrency", "50"]


def one_pair(floor_runs: int, bench_args: list[str], results: Path) -> tuple[int, dict[str, Any]]:
    before = set(results.glob("throughput-*.json"))
    command = [sys.executable, str(BENCH_DIR / "throughput.py"), "--floor", str(floor_runs),
               "--results-dir", str(results), *bench_args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    written = sorted(set(results.glob("throughput-*.json")) - before)
    if not written:
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-2000:])
        return done.returncode or 1, {}
    return done.returncode, json.loads(written[-1].read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pairs", type=int, default=4, help="floor + runrelay pairs (default 4)")
    parser.add_argument("--floor", type=int, default=100, metavar="N",
                        help="floor.py both N in each pair (default 100)")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER,
                        help="after --: throughput.py's options (default --runs 1500 "
                             "--concurrency 50)")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.floor < 1:
        parser.error("--pairs and --floor must be >= 1")
    bench_args = [a for a in args.bench_args if a != "--"] or DEFAULT_ARGS
    ratios: list[float] = []
    status = 0
    with tempfile.TemporaryDirectory(prefix="runrelay-compare-") as tmp:
        print("pair  floor runs/s  runrelay runs/s  ratio   server CPU/run  POST→done p50")
        for pair in range(1, args.pairs + 1):
            code, report = one_pair(args.floor, bench_args, Path(tmp))
            if not report:
                print(f"{pair:>4}  could not run (exit {code})")
                return 1
            status = max(status, code)
            floor, results = report["floor"], report["results"]
            ratio = floor["throughput_ratio"]
            ratios.append(ratio)
            done = results["latency"]["post_to_done"] if "latency" in results else {}
            print(f"{pair:>4}  {floor['runs_per_s']:>12.0f}  {results['runs_per_s']:>15.1f}  "
                  f"{ratio:.3f}x  {report['cpu_ms_per_run'].get('server', 0):>11.1f} ms  "
                  f"{done.get('p50_ms', float('nan')):>10.1f} ms"
                  + ("" if code == 0 else f"  (exit {code}: runs failed)"))
    print(f"ratio to the floor over {len(ratios)} pairs: median {statistics.median(ratios):.3f}x, "
          f"least {min(ratios):.3f}x, greatest {max(ratios):.3f}x")
    return status


if __name__ == "__main__":
    sys.exit(main())
