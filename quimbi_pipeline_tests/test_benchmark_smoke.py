"""The benchmark script runs end to end at 10k customers (a smoke run: it checks it works, not its times)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPT = BENCHMARKS / "run.py"


@pytest.mark.slow
@pytest.mark.postgres
def test_benchmark_runs_at_10k_on_sqlite_and_postgres(pg_url):
    done = subprocess.run([sys.executable, str(SCRIPT), "--customers", "10000", "--postgres", pg_url],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for line in ("baseline: one group-by (floor)", "history: copied to 10 dates", "sqlite partition total", "postgres partition total",
                 "postgres store_a write_snapshots", "postgres store_a outliers", "postgres store_a drift compute", "postgres drift total (windows 28)",
                 "seed-style snapshot writes (sample)", "snapshot writes:", "history lookups (28 days): 1000 customers",
                 "drift lookups (28 days, with axes): 1000 customers"):
        assert line in out, line
    assert "FAILED" not in out


@pytest.mark.slow
def test_drift_scale_benchmark_runs_at_10k_on_sqlite():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "drift_scale.py"), "--customers", "10000"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for line in ("load synthetic snapshots", "drift: compute", "drift: total (windows 7,28,90,180,365 + anomalies)",
                 "drift lookups (28 days, with axes): 1000 customers", "history lookups (28 days): 1000 customers"):
        assert line in done.stdout, line


@pytest.mark.slow
def test_stores_benchmark_runs_with_the_daily_jobs_flags_on_sqlite():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "stores.py"), "--stores", "12", "--customers-per-store", "60", "--daily-job"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for line in ("12 stores 2026-10-31:", "1 store 2026-11-02:", "2026-10-31: ratio", "2026-11-02: ratio", "stable_models"):
        assert line in done.stdout, line



@pytest.mark.slow
def test_engines_benchmark_agrees_with_the_pipeline_at_5k():
    """Polars' and DuckDB's versions of four feature kernels give the pipeline's answers (the script stops otherwise):
    an independent check of the purchase-day keys, the gaps and the rate detector's splits."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / "engines.py"), "--customers", "5000", "--repeats", "1", "--threads", "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    timed = [line.strip() for line in done.stdout.splitlines() if line.startswith("  ")]
    for kernel in ("duplicates", "summary", "gaps", "rate change"):
        for engine in ("numpy (pipeline)", "polars", "duckdb"):
            assert sum(line.startswith(kernel) and engine in line for line in timed) == 1, (kernel, engine, timed)
    # The rate detector's relational part is integers and its arithmetic the pipeline's: the same bits.
    assert [line for line in timed if line.startswith("rate change") and "not bit for bit" in line] == []


def test_young_stoppers_benchmark_runs_on_a_small_young_store():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "young_stoppers.py"), "--customers", "80", "--seeds", "0", "--days", "30",
                           "--taus", "0.01"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "80 customers, 4 months, seed 0" in done.stdout and "P(alive) <= 0.01, customers with 1-2 gaps:" in done.stdout, done.stdout


@pytest.mark.slow
@pytest.mark.postgres
def test_next_day_benchmark_writes_dates_in_turn(pg_url):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "next_day.py"), "--postgres", pg_url, "--customers", "3000",
                           "--dates", "2026-10-30,2026-10-31"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count(" s\n") == 2 and "2026-10-31 (" in done.stdout and " write " in done.stdout
