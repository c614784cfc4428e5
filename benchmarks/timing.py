"""Shared by the benchmark scripts: the median wall time of a call, after one warm-up call."""

import statistics
import time


def timed(fn, repeats: int) -> float:
    fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)
