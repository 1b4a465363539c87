"""Run every benchmark and print a summary of the judged figures.

    .venv/bin/python -m benchmarks.run_all            # full (about an hour on 2 CPU cores)
    .venv/bin/python -m benchmarks.run_all --quick    # smoke run of all seven (~10 minutes)
    .venv/bin/python -m benchmarks.run_all --only step cache data
    .venv/bin/python -m benchmarks.run_all --json results.json

Benchmarks run one after the other in this process (the sweep benchmarks start their sweeps
in fresh subprocesses). The exit code is 0 whether targets pass or miss: a benchmark reports,
it does not gate; a benchmark that crashes makes it 1.
"""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable, Sequence

from benchmarks.common import Result, machine, save_results


def _step(quick: bool) -> list[Result]:
    from benchmarks import bench_step

    return bench_step.run(quick)


def _cache(quick: bool) -> list[Result]:
    from benchmarks import bench_teacher_cache

    return bench_teacher_cache.run(quick)


def _sweep(quick: bool) -> list[Result]:
    from benchmarks import bench_sweep

    return bench_sweep.run(quick)


def _data(quick: bool) -> list[Result]:
    from benchmarks import bench_data_path

    return bench_data_path.run(quick)


def _asha(quick: bool) -> list[Result]:
    from benchmarks import bench_asha

    return bench_asha.run(quick)


def _features(quick: bool) -> list[Result]:
    from benchmarks import methods_table

    return methods_table.run(quick)


def _startup(quick: bool) -> list[Result]:
    from benchmarks import bench_startup

    return bench_startup.run(quick)


BENCHMARKS: dict[str, Callable[[bool], list[Result]]] = {
    "step": _step,  # 1
    "cache": _cache,  # 2
    "sweep": _sweep,  # 3a + 3b
    "data": _data,  # 4
    "asha": _asha,  # 5
    "features": _features,  # 6
    "startup": _startup,  # 7
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="kdtune benchmarks")
    parser.add_argument("--quick", action="store_true", help="fast smoke run of each benchmark")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), metavar="NAME",
                        help=f"some of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    print(f"kdtune benchmarks{' (quick)' if args.quick else ''} on {machine()}", flush=True)
    results: list[Result] = []
    failed: list[str] = []
    start = time.perf_counter()
    for name in args.only or BENCHMARKS:
        try:
            results += BENCHMARKS[name](args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
    print(f"\n== summary ({time.perf_counter() - start:.0f} s) ==")
    for r in results:
        print(("PASS " if r.passed else "MISS ") + r.line().split("   ")[0])
    for name in failed:
        print(f"ERROR {name}: crashed (traceback above)")
    if args.json:
        save_results(results, args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
