"""A sharded store's date (run/shards.py): the store state fitted on its sample, then one of its shards, or all of them
in turn, scored, written and verified; their outcomes reported as the store's.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import replace

import numpy as np
import pandas as pd

from quimbi_pipeline.model.profiles import (
    build_store_profiles,
    customer_features,
    segment_model_rows,
)
from quimbi_pipeline.run.one_store import (
    StoreOutcome,
    failed_outcome,
    resolve_stable_models,
    run_one_store,
)
from quimbi_pipeline.run.shards import (
    ShardPlan,
    ShardWork,
    plan_shards,
    sample_orders,
    shard_orders,
)
from quimbi_pipeline.runtime.memory import release_memory
from quimbi_pipeline.settings import PipelineSettings, deployment
from quimbi_pipeline.sources.orders import (
    TS_FORMAT_SETTING,
    ValidatedOrders,
    validate_orders,
)
from quimbi_pipeline.sources.store_part import store_customer_ids, store_rows_of
from quimbi_pipeline.storage import Warehouse

log = logging.getLogger(__name__)
progress = logging.getLogger("quimbi_pipeline.progress")


def load_shard_orders(uri: str, store: str, shard: int, settings: PipelineSettings, warehouse_url: str | None,
                      bad_rows: str = "reject_store") -> tuple[ValidatedOrders, ShardPlan]:
    """A shard's run's orders, read alone (sources/store_part.py): the store's customer ids give the plan, then the rows
    of the shard's customers and of the sample are read and validated. Problems are those of the rows read (a
    duplicate order id shared with another shard's customer goes unseen)."""
    plan = store_plan(store_customer_ids(uri, store, warehouse_url), settings)
    release_memory()  # the store's ids and their Arrow scan are let go: 10M ids left 3.2 GiB mapped, 0.9 after this
    if not 0 <= shard < plan.shards:
        raise ValueError(f"store {store}: no shard {shard + 1}: the store has {plan.shards} (QUIMBI_STORE_SHARDS)")
    raw = store_rows_of(uri, store, plan.shard(shard).customer_range, plan.sample, warehouse_url)
    progress.info("%s: %s order rows of shard %d of %d and its sample read", store, f"{len(raw):,}", shard + 1, plan.shards)
    return validate_orders(raw, bad_rows=bad_rows, ts_format=deployment.value(TS_FORMAT_SETTING)), plan


def store_plan(customer_ids, settings: PipelineSettings) -> ShardPlan:
    """The store's shard plan from every customer id of the store in the source (not only those seen at D: every date
    of the store has the same shards while no customer is added)."""
    return plan_shards(np.asarray(customer_ids, dtype=object), settings.store_shards, settings.shard_sample_customers)


def shard_work(warehouse: Warehouse, store: str, orders: pd.DataFrame, as_of: pd.Timestamp, optional_columns,
               settings: PipelineSettings, plan: ShardPlan) -> ShardWork:
    """What the store's shards share at D: the state fitted on the plan's sample (with the stable segment models in
    force, fitted on the sample's customers when the period has none yet). `orders`: the store's (or a shard's and
    the sample's), cut at D + 1 day. The ShardWork returned is shard 1's."""
    sample = sample_orders(orders, plan)
    progress.info("%s: store state on a sample of %s customers", store, f"{plan.sample.size:,}")
    models = version = transitions = None
    new_models = pd.DataFrame()
    features = None
    if settings.enable_stable_segments and not sample.empty:
        features_of_d = functools.cache(lambda: customer_features(sample, as_of, settings, optional_columns))
        models, version, new_models, transitions = resolve_stable_models(store, sample, as_of, optional_columns, warehouse, settings, features_of_d)
        features = features_of_d() if features_of_d.cache_info().currsize else None
    fitted = build_store_profiles(sample, store, as_of, settings, optional_columns, models=models, model_version=version, features=features)
    if fitted.state is None:
        raise ValueError(f"store {store}: none of the {plan.sample.size:,} sampled customers is active at {as_of.date()}: no store state "
                         "to score its shards with (raise QUIMBI_SHARD_SAMPLE_CUSTOMERS, or run the store in one shard)")
    model_frame = segment_model_rows(fitted) if fitted.fresh_fit else new_models
    return ShardWork(plan.shard(0), fitted.state, fitted.model_version, model_frame, transitions, _digest(plan, sample, settings))


def _digest(plan: ShardPlan, sample: pd.DataFrame, settings: PipelineSettings) -> str:
    """What the state depends on: the ranges, the sample's orders and the computation's settings (not the threads)."""
    digest = hashlib.sha1("\x1f".join(plan.bounds).encode())
    # The rows' hashes sorted: a sql: source returns rows in no fixed order.
    digest.update(np.sort(pd.util.hash_pandas_object(sample, index=False).to_numpy()).tobytes())
    digest.update(settings.model_dump_json(exclude={"threads"}).encode())
    return digest.hexdigest()


def run_sharded_store(warehouse: Warehouse, store: str, orders: pd.DataFrame, as_of: pd.Timestamp, optional_columns,
                      settings: PipelineSettings, snapshot_types: list[str], analyze: bool, plan: ShardPlan,
                      shard: int | None = None) -> StoreOutcome:
    """Shard `shard` (0-based) of the store at D, or every shard in turn (None): the same tables either way. A failure
    is recorded in the outcome, never raised; a shard that fails does not stop the next."""
    try:
        first = shard_work(warehouse, store, orders, as_of, optional_columns, settings, plan)
        indices = range(plan.shards) if shard is None else [shard]
        works = [replace(first, shard=plan.shard(k)) for k in indices]
    except Exception as exc:  # one store's failure is recorded and the others go on
        return failed_outcome(store, as_of, exc)
    outcomes = []
    for work in works:
        progress.info("%s: %s", store, work.shard.label())
        part = shard_orders(orders, work.shard)
        outcomes.append(run_one_store(warehouse, store, part, as_of, optional_columns, settings, snapshot_types, None, analyze, sharded=work))
        del part
    return combined_outcome(store, [w.shard.label() for w in works], outcomes, plan.shards)


def combined_outcome(store: str, labels: list[str], outcomes: list[StoreOutcome], shards: int) -> StoreOutcome:
    """The store's outcome from its shards' (in shard order)."""
    failed = [f"{label}: {o.error}" for label, o in zip(labels, outcomes) if not o.ok]
    done = [o for o in outcomes if o.ok]
    n = sum(o.n_profiles for o in done)
    first = done[0] if done else StoreOutcome(store, False)
    rates: dict[str, float] = {}
    for method in {m for o in done for m in o.outlier_rates}:
        weighted = sum(o.outlier_rates.get(method, 0.0) * o.n_profiles for o in done)
        rates[method] = round(weighted / n, 6) if n else 0.0
    snapshot_rows: dict[str, int] = {}
    for o in done:
        for kind, rows in o.snapshot_rows.items():
            snapshot_rows[kind] = snapshot_rows.get(kind, 0) + rows
    return StoreOutcome(
        store, not failed, n, "; ".join(failed) or None, {**first.metrics, "shards": float(shards), "shards_run": float(len(outcomes))},
        first.archetype_shares, sum(o.membership_sum_violations for o in done),
        missing_profiles=sum(o.missing_profiles for o in done), unexpected_profiles=sum(o.unexpected_profiles for o in done),
        snapshot_rows=snapshot_rows, snapshot_duplicate_keys=sum(o.snapshot_duplicate_keys for o in done),
        snapshot_expected=sum(o.snapshot_expected for o in done), outlier_rates=rates, outlier_rows=sum(o.outlier_rows for o in done),
        notes=list(dict.fromkeys(note for o in outcomes for note in o.notes)), verified=all(o.verified for o in done),
    )


def shard_index(text: str | int | None) -> int | None:
    """A shard as people name it (1-based: "2", or "2/4") as the 0-based index runs use; None stays None."""
    if text is None or text == "":
        return None
    value = str(text).split("/")[0].strip()
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"shard {text!r}: a shard is a number from 1 (as in 2, or 2/4)")
    return int(value) - 1
