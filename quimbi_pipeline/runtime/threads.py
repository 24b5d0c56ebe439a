"""How many BLAS/OpenMP threads the pipeline's numeric work may use (threadpoolctl).

scikit-learn's KMeans and numpy's BLAS start one thread per core by default. On a machine that also
runs other work (other Dagster runs, other processes) those threads spin against each other: one
store of 819 customers took 37 s instead of 1.7 s beside two busy processes. So the pipeline sizes
its pools itself:

- a run uses `threads` threads (QUIMBI_THREADS; 0 = automatic: the usable cores divided by the
  number of runs that may run at once on the machine, QUIMBI_CONCURRENT_RUNS or the Dagster
  instance's run-queue limit);
- work on small data (fewer than SMALL_ROWS rows) is single-threaded whatever the setting: there the
  threads cost more to start and synchronize than they save (813 customers: 0.42 s on one thread,
  0.79 s on two, on a quiet 2-core machine).

Results do not depend on the thread count (the golden rows are identical on 1 and 2 threads).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import threadpool_limits

from quimbi_pipeline.settings.deployment import value

SMALL_ROWS = 50_000


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def run_threads(setting: int = 0, concurrent_runs: int | None = None) -> int:
    """Threads for one run: the setting when > 0, else the usable cores shared by the concurrent runs."""
    if setting > 0:
        return setting
    runs = concurrent_runs or int(value("QUIMBI_CONCURRENT_RUNS") or 1)
    return max(1, usable_cores() // max(1, runs))


def threads_for(n_rows: int, threads: int) -> int:
    return 1 if n_rows < SMALL_ROWS else max(1, threads)


@contextmanager
def limited_threads(n_rows: int, threads: int) -> Iterator[int]:
    """BLAS and OpenMP pools limited to threads_for(n_rows, threads) inside the block."""
    n = threads_for(n_rows, threads)
    with threadpool_limits(limits=n):
        yield n
