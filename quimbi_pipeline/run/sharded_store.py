"""A sharded store's date (run/shards.py): the store state fitted on its sample, then one of its shards, or all of them
in turn, scored, written and verified; their outcomes reported as the store's.
"""

from __future__ import annotations

import functools
import hashlib
import logging

import pandas as pd

from quimbi_pipeline.model.profiles import build_store_profiles, customer_features, segment_model_rows
from quimbi_pipeline.run.one_store import StoreOutcome, failed_outcome, resolve_stable_models, run_one_store
from quimbi_pipeline.run.shards import ShardPlan, ShardWork, plan_shards, sample_orders, shard_orders
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.storage import Warehouse

log = logging.getLogger(__name__)
progress = logging.getLogger("quimbi_pipeline.progress")


def shard_work(warehouse: Warehouse, store: str, orders: pd.DataFrame, as_of: pd.Timestamp, optional_columns,
               settings: PipelineSettings) -> tuple[ShardPlan, ShardWork]:
    """The store's shard plan at D and what its shards share: the state fitted on the plan's sample (with the stable
    segment models in force, fitted on the sample's customers when the period has none yet). `orders`: the store's,
    cut at D + 1 day. The returned ShardWork is shard 1's; `dataclasses.replace(work, shard=plan.shard(k))` another's."""
    plan = plan_shards(orders["customer_id"].astype(str).unique(), settings.store_shards, settings.shard_sample_customers)
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
    return plan, ShardWork(plan.shard(0), fitted.state, fitted.model_version, model_frame, transitions,
                           _digest(plan, sample, settings))


def _digest(plan: ShardPlan, sample: pd.DataFrame, settings: PipelineSettings) -> str:
    """What the state depends on: the ranges, the sample's orders and the computation's settings (not the threads)."""
    digest = hashlib.sha1("\x1f".join(plan.bounds).encode())
    digest.update(pd.util.hash_pandas_object(sample, index=False).to_numpy().tobytes())
    digest.update(settings.model_dump_json(exclude={"threads"}).encode())
    return digest.hexdigest()


def run_sharded_store(warehouse: Warehouse, store: str, orders: pd.DataFrame, as_of: pd.Timestamp, optional_columns,
                      settings: PipelineSettings, snapshot_types: list[str], analyze: bool, shard: int | None = None) -> StoreOutcome:
    """Shard `shard` (0-based) of the store at D, or every shard in turn (None): the same tables either way. A failure
    is recorded in the outcome, never raised; a shard that fails does not stop the next."""
    try:
        plan, first = shard_work(warehouse, store, orders, as_of, optional_columns, settings)
        indices = range(plan.shards) if shard is None else [shard]
        works = [first if k == 0 else ShardWork(plan.shard(k), first.state, first.version, first.model_frame, first.transitions, first.digest)
                 for k in indices]
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
