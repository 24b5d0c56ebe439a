"""The drift step of a date for a set of stores, and any past date's drift on demand, without Dagster.

customer_drift, customer_axis_drift, customer_drift_anomalies and population_drift from the stored snapshots
(drift/measures.py does the arithmetic); each store in its own transaction.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quimbi_pipeline.drift import measures as drift
from quimbi_pipeline.drift.evidence import (
    block_memberships,
    models_tag,
    rescored_memberships,
    rescored_names,
    with_memberships,
)
from quimbi_pipeline.drift.population import (
    POPULATION_COLUMNS,
    POPULATION_REFERENCE_DAYS,
    PopulationSide,
    SlicesDiffer,
    population_drift,
    population_rows,
)
from quimbi_pipeline.model.profiles import model_version_for, stable_model_version
from quimbi_pipeline.model.segment_identity import refit_anchor
from quimbi_pipeline.model.segmentation import AxisModel
from quimbi_pipeline.run.store_pool import (
    MIN_POOL_STORES,
    end_kept_pools,
    in_worker,
    pool_workers_for,
    run_in_pool,
)
from quimbi_pipeline.runtime.memory import release_memory
from quimbi_pipeline.runtime.threads import SMALL_ROWS, limited_threads, run_threads
from quimbi_pipeline.settings import (
    PipelineSettings,
    RetentionPolicy,
    StoreSettings,
    settings_for_store,
)
from quimbi_pipeline.settings.rollout import in_rollout
from quimbi_pipeline.sources.orders import as_of_day
from quimbi_pipeline.sources.row_checks import check_rows
from quimbi_pipeline.storage import Warehouse
from quimbi_pipeline.storage.prune import drift_state_cutoff, keep_drift_state
from quimbi_pipeline.storage.snapshot_history import (
    BASE_COLUMNS,
    BlockCache,
    SnapshotHistoryReader,
)

log = logging.getLogger(__name__)
progress = logging.getLogger("quimbi_pipeline.progress")


class ShardsNotWritten(RuntimeError):
    """A sharded store's date whose shards are not all written (run/shards.py): its drift cannot be computed yet."""


@dataclass
class DriftOutcome:
    store_id: str
    ok: bool
    rows: dict[str, int] = field(default_factory=dict)  # by table
    anomalies_by_type: dict[str, int] = field(default_factory=dict)
    population: pd.DataFrame | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    note: str = ""


def history_from_snapshots(frame: pd.DataFrame, scored: tuple[list[str], np.ndarray] | None = None) -> drift.MembershipHistory:
    """A MembershipHistory from numeric snapshot history (history.BASE_COLUMNS + "axis.segment" columns, and
    optionally "f:..." features and change evidence); with `scored` (rescored_memberships of the frame) its
    memberships are those instead of the frame's."""
    if scored is not None:
        return drift.MembershipHistory.from_frame(frame, *scored)
    columns = sorted(c for c in frame.columns if c not in BASE_COLUMNS and ":" not in c)
    return drift.MembershipHistory.from_frame(frame, columns)


def models_in_force(warehouse: Warehouse, store: str, as_of: pd.Timestamp, settings: PipelineSettings) -> dict[str, AxisModel]:
    """The segment models the store's profiles of D were scored with (segment_models), by axis; {} if none are stored."""
    algorithm = settings.clustering_algorithm.value
    version = (stable_model_version(algorithm, refit_anchor(as_of, settings.segment_refit_days)) if settings.enable_stable_segments
               else model_version_for(algorithm, as_of))
    return {r["axis"]: AxisModel.from_record(r) for r in warehouse.segment_model_records(store, version)}


def _scored_memberships(models: dict[str, AxisModel], frame: pd.DataFrame, store: str) -> tuple[list[str], np.ndarray] | None:
    """drift.evidence.rescored_memberships of the frame with D's models; None (the memberships as stored) when no
    model is stored or the frame's features cannot be scored."""
    if not models:
        return None
    try:
        return rescored_memberships(frame, models)
    except ValueError as exc:
        log.warning("store %s: drift uses the memberships as stored: %s", store, exc)
        return None


def _scored_with(models: dict[str, AxisModel], frame: pd.DataFrame, store: str) -> pd.DataFrame:
    """The frame with its memberships scored with D's models (_scored_memberships), or as stored."""
    scored = _scored_memberships(models, frame, store)
    return frame if scored is None else with_memberships(frame, *scored)


def run_drift_partition(warehouse: Warehouse, as_of, settings: PipelineSettings | StoreSettings, stores: list[str] | None = None,
                        retention: RetentionPolicy | None = None, run_last_date=None, blocks: BlockCache | None = None) -> list[DriftOutcome]:
    """customer_drift, customer_axis_drift, customer_drift_anomalies and population_drift of D, per store.

    customer_drift and customer_axis_drift keep `retention.drift` dates per store (default: the
    environment's policy; 1 = the newest date only, the current state): older ones are removed after each
    write, and a date older than those kept writes its anomalies and population drift only.

    Later dates whose snapshot inputs changed are recomputed. `run_last_date`: the last date of a run that computes
    its dates in order (a backfill's run): only later dates past it are recomputed (the run computes the others
    next), and a date whose drift state that last date's write expires (RetentionPolicy.drift) writes its events only,
    as a date older than the kept state does: the tables end as a run per date leaves them.

    Stores default to those with snapshots dated D; stores whose settings have drift off are skipped.
    Each store is written in its own transaction; a failing store is reported and the others go on.
    `blocks`: the run's BlockCache across its dates (the stores of this process; a worker's read their own).
    """
    as_of = as_of_day(as_of)
    run_last_date = None if run_last_date is None else as_of_day(run_last_date)
    retention = retention or RetentionPolicy.from_env()
    if stores is None:
        stores = warehouse.snapshot_stores(as_of)
    jobs = []
    # One store: its write refreshes the date's statistics. Several: the run does, once, after them all.
    analyze_each = len(stores) <= 1
    for store in sorted(stores):
        store_settings = settings_for_store(settings, store)
        if store_settings.drift_active:
            jobs.append((store, as_of, store_settings, retention, run_last_date, analyze_each))
    # Small stores in worker processes, as their profiles are (store_pool.py): a small store's drift is mostly fixed
    # cost (a few hundred array and SQL calls), and one process did them one store after the other on one core.
    customers = warehouse.snapshot_customers_by_store(as_of) if len(jobs) >= MIN_POOL_STORES else {}
    small = [job for job in jobs if customers.get(job[0], SMALL_ROWS) < SMALL_ROWS]
    workers = pool_workers_for([job[2] for job in small], warehouse.url)
    pooled = {job[0] for job in small} if workers else set()
    in_process = [job for job in jobs if job[0] not in pooled]
    if any(customers.get(job[0], SMALL_ROWS) >= SMALL_ROWS for job in in_process):  # a large store, or sizes not read
        end_kept_pools()
    outcomes = [_drift_one_store(warehouse, *job, blocks=blocks) for job in in_process]
    if pooled:
        log.info("%d small stores' drift in %d worker processes", len(pooled), workers)
        outcomes += run_in_pool((job for job in jobs if job[0] in pooled), warehouse.url, workers,
                                lambda store, message: DriftOutcome(store, False, error=message), work=_drift_in_worker)
    if not analyze_each and any(o.ok and o.rows for o in outcomes):
        warehouse.analyze_date_partitions(["customer_drift", "customer_drift_anomalies"], as_of)
    return sorted(outcomes, key=lambda o: o.store_id)


def _drift_one_store(warehouse: Warehouse, store: str, as_of: pd.Timestamp, settings: PipelineSettings, retention: RetentionPolicy,
                     run_last_date: pd.Timestamp | None, analyze: bool = True, blocks: BlockCache | None = None) -> DriftOutcome:
    """One store's drift of D and of the later dates it makes stale; a failure is the store's outcome, not raised.
    `analyze=False`: D's partitions' statistics are left to the run (run_drift_partition, after all its stores)."""
    try:
        with limited_threads(0, run_threads(settings.threads)):  # array arithmetic, no large BLAS work
            outcome = _drift_store(warehouse, store, as_of, settings, retention, as_of if run_last_date is None else max(as_of, run_last_date),
                                   analyze, blocks)
            # An earlier date arriving late changes the inputs of later dates' drift: recompute those, so that
            # any order of dates leaves the warehouse a date-ordered run leaves.
            later = [day for day in (warehouse.stale_drift_dates(store, as_of) if outcome.rows else [])
                     if run_last_date is None or day > run_last_date]
            for day in later:
                _drift_store(warehouse, store, day, settings, retention, blocks=blocks)
            if later:
                outcome.note = f"recomputed the drift of {len(later)} later date(s) whose snapshots changed: {', '.join(f'{d:%Y-%m-%d}' for d in later)}"
            # Large stores only, as after profiles: a trim of a fragmented heap costs ~60 ms, a second per ~20 small stores.
            if outcome.rows.get("customer_drift", 0) >= SMALL_ROWS:
                release_memory()
            return outcome
    except Exception as exc:  # one store's failure is recorded and the others go on
        log.exception("drift of store %s failed for %s", store, as_of.date())
        return DriftOutcome(store, False, error=f"{type(exc).__name__}: {exc}")


def _drift_in_worker(warehouse_url: str, job: tuple) -> tuple:
    """store_pool's work for a drift job: _drift_one_store in a worker process, with its log records."""
    return in_worker(warehouse_url, lambda warehouse: _drift_one_store(warehouse, *job))


def _drift_reader(warehouse: Warehouse, store: str, as_of: pd.Timestamp, settings: PipelineSettings, retention: RetentionPolicy,
                  blocks: BlockCache | None = None, anomalies_only: bool = False):
    """(reader of D's window of snapshots, their dates, D's models) or None when no snapshot is dated D. The window
    holds what the daily run of D holds under `retention`, whether pruning has run since or not (a backfill holds it off);
    `anomalies_only`: the anomalies' window alone (a date whose drift state is not kept reads no longer windows)."""
    days = drift.ANOMALY_HISTORY_DAYS if anomalies_only else drift.history_days(settings.drift_windows)
    reader = SnapshotHistoryReader(warehouse, store, as_of - pd.Timedelta(days=days), as_of, kept_at=(as_of, retention), cache=blocks)
    dates = list(reader.sources["snapshot_date"])
    if not dates or dates[-1] != as_of:
        return None
    return reader, dates, models_in_force(warehouse, store, as_of, settings)  # every snapshot of the window is scored with D's models


def _run_scoring(reader: SnapshotHistoryReader, models: dict[str, AxisModel]) -> tuple | None:
    """(score of a block, its cache tag) in a run of several dates, whose BlockCache keeps each date's blocks scored with
    D's models (consecutive windows share all but one date and, within a refit period, the models); None otherwise."""
    if models and reader.cache is not None:
        return functools.partial(block_memberships, models), models_tag(models)
    return None


def _population_scored(reader: SnapshotHistoryReader, models: dict[str, AxisModel], day: pd.Timestamp, store: str) -> pd.DataFrame:
    """The population frame of `day` scored with D's models; in a run, from the blocks' rows _drift_history keeps."""
    scoring = _run_scoring(reader, models)
    frame, rows = reader.scored_population_frame(day, *scoring) if scoring else (reader.population_frame(day), None)
    return _scored_with(models, frame, store) if rows is None else with_memberships(frame, rescored_names(models), rows)


class _NotScoredBySlice(Exception):
    """A block of the population cannot be scored alone (a feature missing or null): score the whole date instead."""


def _population_drift(reader: SnapshotHistoryReader, models: dict[str, AxisModel], reference_date: pd.Timestamp, as_of: pd.Timestamp,
                      store: str, every_customers: int) -> pd.DataFrame:
    """population_drift of D against the reference date, both scored with D's models. Dates stored in blocks are read
    slice by slice of about every_customers (the whole frames of two dates of a 10M store held ~10 GiB); the same
    rows as the whole frames give, which remain the path for dates stored as rows or blocks that cannot be scored alone."""
    if reference_date in reader.blocks and as_of in reader.blocks:
        # Block by block (through the run's BlockCache when there is one), whatever the run: a slice is never scored whole.
        scoring = (functools.partial(block_memberships, models), models_tag(models)) if models else None
        names = rescored_names(models)

        def side_of(day: pd.Timestamp, reference: PopulationSide | None) -> PopulationSide:
            side = PopulationSide(reference)
            for frame, rows in reader.population_slices(day, every_customers, scoring):
                if scoring is not None and rows is None:
                    raise _NotScoredBySlice(f"a block of {day.date()} cannot be scored alone")
                side.add(frame if scoring is None else with_memberships(frame, names, rows))
            return side

        try:
            # A run's consecutive dates mostly share their reference (a weekly snapshot): its binned side, read only
            # after binning, is kept in the run's cache with the blocks.
            binned_reference = lambda: side_of(reference_date, None).binned()
            reference = (binned_reference() if reader.cache is None else
                         reader.cache.kept((store, reference_date, "population reference", scoring[1] if scoring else "", every_customers),
                                           binned_reference))
            return population_rows(reference, side_of(as_of, reference), reference_date, as_of)
        except (_NotScoredBySlice, SlicesDiffer) as exc:
            log.info("store %s: population drift from the whole dates: %s", store, exc)
    return population_drift(_population_scored(reader, models, reference_date, store),
                            _population_scored(reader, models, as_of, store), reference_date, as_of)


def _drift_history(reader, models, store: str, settings: PipelineSettings, lo, hi, anomalies_at=None) -> drift.MembershipHistory:
    """The snapshot history of the customers with lo <= id < hi (None: unbounded), scored with D's models.
    `anomalies_at` (D, in a run's cached path): only the customers whose change evidence moved in the window, all
    that D's anomalies read (SnapshotHistoryReader.scored_history)."""
    scoring = _run_scoring(reader, models)
    frame, matrix = (reader.scored_history(lo, hi, *scoring, changed_at=anomalies_at) if scoring
                     else (reader.history(lo, hi, with_features=bool(models)), None))
    if anomalies_at is not None and not len(frame):  # no customer's evidence moved: no anomalies, nothing to score
        return history_from_snapshots(frame)
    # A matrix: a frame of them was copied three times on its way (1M: ~6 s).
    scored = _scored_memberships(models, frame, store) if matrix is None else (rescored_names(models), matrix)
    if settings.share("enable_drift_analysis") < 1.0:  # a rollout: drift for its share of customers only
        keep = in_rollout(frame["customer_id"], "enable_drift_analysis", settings.share("enable_drift_analysis"))
        frame = frame[keep]
        scored = None if scored is None else (scored[0], scored[1][keep])
    return history_from_snapshots(frame, scored)


def drift_on_demand(warehouse: Warehouse, store: str, as_of, settings: PipelineSettings | StoreSettings,
                    customer_id: str | None = None) -> drift.DriftTables | None:
    """The drift of any date D (one customer's, or the store's) computed from the snapshots as the daily step
    computes it, nothing written: customer_drift and customer_axis_drift keep only the current state
    (RetentionPolicy.drift). The same numbers the step wrote on D while D's window of snapshots is kept;
    None when no snapshot is dated D."""
    as_of = as_of_day(as_of)
    settings = settings_for_store(settings, store)
    found = _drift_reader(warehouse, store, as_of, settings, RetentionPolicy.from_env())
    if found is None:
        return None
    reader, _, models = found
    lo, hi = (None, None) if customer_id is None else (customer_id, customer_id + "\x00")
    return drift.compute_drift(_drift_history(reader, models, store, settings, lo, hi), as_of, settings.drift_windows)


def _drift_store(warehouse: Warehouse, store: str, as_of: pd.Timestamp, settings: PipelineSettings,
                 retention: RetentionPolicy, newest: pd.Timestamp | None = None, analyze: bool = True, blocks: BlockCache | None = None) -> DriftOutcome:
    started = time.perf_counter()
    progress.info("%s: drift", store)
    if settings.store_shards > 1:  # a sharded store's drift reads every shard's snapshots of D
        missing = warehouse.shards_missing(store, as_of, settings.store_shards)
        if missing is not None:
            raise ShardsNotWritten(f"the drift of {as_of.date()} waits for the store's shards: {missing}")
    windows = settings.drift_windows
    # A date older than the kept drift state (a backfill; with `newest`, the state its run's last date will keep)
    # writes its events only; its state is computed on demand.
    state_kept = as_of >= drift_state_cutoff(warehouse, store, retention, as_of if newest is None else newest)
    found = _drift_reader(warehouse, store, as_of, settings, retention, blocks, anomalies_only=not state_kept)
    if found is None:
        note = f"no snapshots dated {as_of.date()}: drift not computed (run the date's profiles with ENABLE_TEMPORAL_SNAPSHOTS first)"
        log.warning("store %s: %s", store, note)
        return DriftOutcome(store, True, note=note)
    reader, dates, models = found
    bounds = reader.slice_bounds(as_of, settings.drift_chunk_customers)
    if bounds is None:  # D's snapshots predate the blocks: cut D's customer ids
        bounds = warehouse.snapshot_customer_bounds(store, as_of, settings.drift_chunk_customers)
    ranges = list(zip([None, *bounds], [*bounds, None]))
    seconds = {"read": 0.0, "compute": 0.0}
    anomaly_counts: dict[str, int] = {}

    def chunks():
        for lo, hi in ranges:
            t0 = time.perf_counter()
            history = _drift_history(reader, models, store, settings, lo, hi, None if state_kept else as_of)
            t1 = time.perf_counter()
            tables = drift.compute_drift(history, as_of, windows, with_state=state_kept)
            check_rows("customer_drift", tables.customers)
            check_rows("customer_axis_drift", tables.axis_numbers())
            check_rows("customer_drift_anomalies", tables.anomalies)
            for kind, n in tables.anomalies["anomaly_type"].value_counts().items():
                anomaly_counts[kind] = anomaly_counts.get(kind, 0) + int(n)
            seconds["read"] += t1 - t0
            seconds["compute"] += time.perf_counter() - t1
            yield tables.customers, tables.n_axis_rows, tables.anomalies

    t0 = time.perf_counter()
    reference_date = next(d for d in dates if d >= as_of - pd.Timedelta(days=POPULATION_REFERENCE_DAYS))
    population = pd.DataFrame(columns=POPULATION_COLUMNS)
    if reference_date < as_of:
        population = _population_drift(reader, models, reference_date, as_of, store, settings.drift_chunk_customers)
    seconds["population"] = time.perf_counter() - t0
    rows, seconds["write"] = warehouse.write_drift_partition(store, as_of, chunks(), population, analyze)  # on PostgreSQL the write overlaps read and compute
    warehouse.record_drift_inputs(store, as_of, drift.history_days(windows))
    t0 = time.perf_counter()
    rows["expired_drift_state"] = keep_drift_state(warehouse, store, retention)
    seconds["expire"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    log.info("store %s %s drift: %s rows (%s)", store, as_of.date(), rows, ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
    return DriftOutcome(store, True, rows, anomaly_counts, population, seconds)
