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
  0.79 s on two, on a quiet 2-core machine);
- with QUIMBI_THREADS=0, work on larger data uses no more threads than the cores other work leaves idle,
  measured from /proc/stat over IDLE_SAMPLE_S (50 ms) before it starts (at least one): a thread on a core another
  process holds only waits for it (docs/performance.md, Busy machines).

Results do not depend on the thread count (the golden rows are identical on 1 and 2 threads).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import ThreadpoolController

from quimbi_pipeline.settings.deployment import value

SMALL_ROWS = 50_000
IDLE_SAMPLE_S = 0.05  # /proc/stat counts in 10 ms ticks: 5 per core, enough to tell a busy core from an idle one


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


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all cores since boot, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields[:8])  # idle + iowait; user..steal


def idle_cores(sample_s: float = IDLE_SAMPLE_S) -> int:
    """How many of the usable cores other work leaves idle, measured over `sample_s` while this thread sleeps
    (at least one; all of them where /proc/stat is missing)."""
    cores = usable_cores()
    before = _cpu_times()
    if before is None:
        return cores
    time.sleep(sample_s)
    after = _cpu_times()
    total = after[1] - before[1] if after else 0
    if total <= 0:
        return cores
    share = (after[0] - before[0]) / total  # of all the machine's cores; affinity may allow fewer
    machine = os.cpu_count() or cores
    return max(1, min(cores, round(share * machine)))


def threads_for(n_rows: int, threads: int, automatic: bool = False) -> int:
    """1 under SMALL_ROWS rows; else `threads`, and with `automatic` (QUIMBI_THREADS=0) no more than idle_cores()."""
    if n_rows < SMALL_ROWS or threads <= 1:
        return 1
    return max(1, min(threads, idle_cores(IDLE_SAMPLE_S))) if automatic else threads


@contextmanager
def limited_threads(n_rows: int, threads: int, automatic: bool = False) -> Iterator[int]:
    """BLAS and OpenMP pools limited to threads_for(n_rows, threads, automatic) inside the block."""
    n = threads_for(n_rows, threads, automatic)
    with _controller().limit(limits=n):
        yield n


_scanned: tuple[int, ThreadpoolController] | None = None  # (modules imported when it scanned, the controller)


def _controller() -> ThreadpoolController:
    """threadpoolctl's view of the process' BLAS/OpenMP libraries, scanned again only when modules were imported since
    (a library comes with the extension module that loads it). `threadpool_limits` scans every loaded shared object on
    each call: 4-6 ms, once per store's profiles and once per its drift, against 0.02 ms with a kept controller."""
    global _scanned
    modules = len(sys.modules)
    if _scanned is None or _scanned[0] != modules:
        _scanned = (modules, ThreadpoolController())
    return _scanned[1]
