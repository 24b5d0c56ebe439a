"""Per-store flags: precedence, validation before any work, run metadata, and exact rollback to the golden rows."""

import io

import dagster as dg
import pandas as pd
import pytest

from quimbi_pipeline.cli import run_dates
from quimbi_pipeline.defs.profiles.assets import (
    PROFILES_KEY,
    ProfilesConfig,
    daily_profiles,
)
from quimbi_pipeline.defs.resources import OrdersResource, WarehouseResource
from quimbi_pipeline.settings import (
    ClusteringAlgorithm,
    PipelineSettings,
    StoreSettings,
)
from quimbi_pipeline.storage import Warehouse
from quimbi_pipeline_tests.golden import (
    GOLDEN_FROM,
    GOLDEN_ORDERS,
    GOLDEN_TO,
    assert_matches_golden,
    export_sqlite_profiles_csv,
    run_golden,
)


def write(path, text):
    path.write_text(text)
    return path


def test_precedence_env_then_file_defaults_then_store_then_run_config(tmp_path):
    flags = write(tmp_path / "flags.yaml", """
defaults:
  QUIMBI_MAX_K: 5
  ENABLE_TEMPORAL_SNAPSHOTS: true
stores:
  store_b:
    QUIMBI_MAX_K: 4
    ENABLE_ADVANCED_CLUSTERING: true
    CLUSTERING_ALGORITHM: gmm
""")
    env = {"QUIMBI_MAX_K": "3", "QUIMBI_MIN_K": "3", "ENABLE_TEMPORAL_SNAPSHOTS": "0"}
    resolved = StoreSettings(environ=env, flags_file=flags)
    a, b = resolved.for_store("store_a"), resolved.for_store("store_b")
    assert (a.min_k, a.max_k, a.enable_temporal_snapshots, a.clustering_algorithm) == (3, 5, True, ClusteringAlgorithm.kmeans)
    assert (b.min_k, b.max_k, b.clustering_algorithm) == (3, 4, ClusteringAlgorithm.gmm)
    run = StoreSettings({"max_k": 6, "enable_temporal_snapshots": False}, environ=env, flags_file=flags)
    assert run.for_store("store_b").max_k == 6 and not run.for_store("store_a").enable_temporal_snapshots
    assert resolved.flags("store_b") == {
        "ENABLE_TEMPORAL_SNAPSHOTS": True, "ENABLE_STABLE_SEGMENTS": False, "ENABLE_DRIFT_ANALYSIS": False, "ENABLE_ADAPTIVE_WINDOWS": False,
        "ENABLE_HONEST_SEGMENTS": False, "ENABLE_OUTLIER_DETECTION": False, "ENABLE_ADVANCED_CLUSTERING": True, "CLUSTERING_ALGORITHM": "gmm", "DYNAMIC_K_RANGE": False,
        "ENABLE_COARSE_ARCHETYPES": False}


@pytest.mark.parametrize("text, message", [
    ("stores:\n  store_a:\n    CLUSTERING_ALGORITHM: kmeanz\n    ENABLE_ADVANCED_CLUSTERING: true\n", "'kmeans', 'hdbscan', 'gmm' or 'dbscan'"),
    ("stores:\n  store_a:\n    CLUSTERING_ALGORITHM: hdbscan\n", "CLUSTERING_ALGORITHM=hdbscan needs ENABLE_ADVANCED_CLUSTERING"),
    ("defaults:\n  ENABLE_DRIFT: true\n", "defaults: unknown setting(s) ENABLE_DRIFT; names are as in the environment"),
    ("stores:\n  s1:\n    ENABLE_TEMPORAL_SNAPSHOT: true\n    QUIMBI_NOPE: 1\n",
     "stores.s1: unknown setting(s) ENABLE_TEMPORAL_SNAPSHOT (did you mean ENABLE_TEMPORAL_SNAPSHOTS?), QUIMBI_NOPE; names"),
    ("defaults:\n  QUIMBI_DBSCAN_EPS: -1\n", "QUIMBI_DBSCAN_EPS=-1: Input should be greater than 0"),
    ("other: 1\n", "top-level keys must be 'defaults' and 'stores'"),
    ("defaults: [1, 2\n", "cannot read"),
])
def test_bad_flags_files_fail_with_a_message_naming_the_problem(tmp_path, text, message):
    with pytest.raises(ValueError) as err:
        StoreSettings(environ={}, flags_file=write(tmp_path / "flags.yaml", text))
    assert message in str(err.value)


def materialize(warehouse_url, run_config=None):
    return dg.materialize(
        [daily_profiles], partition_key="2026-10-31", run_config=run_config, raise_on_error=False,
        resources={"warehouse": WarehouseResource(url=warehouse_url), "orders_source": OrdersResource(uri="demo:customers=300,stores=2,seed=4")},
        instance=dg.DagsterInstance.ephemeral(),
    )


def test_unknown_algorithm_in_run_config_fails_config_validation_before_any_work(sqlite_url):
    with pytest.raises(dg.DagsterInvalidConfigError) as err:
        materialize(sqlite_url, {"ops": {"daily_profiles": {"config": {"clustering_algorithm": "kmeanz"}}}})
    assert "clustering_algorithm not in enum type ClusteringAlgorithm got kmeanz" in str(err.value)
    assert Warehouse(sqlite_url).profiles().empty
    # Dagster's message names the enum; the launchpad lists its values (the config schema's enum):
    field = ProfilesConfig.to_fields_dict()["clustering_algorithm"].config_type.inner_type
    assert [v.config_value for v in field.enum_values] == ["kmeans", "hdbscan", "gmm", "dbscan"]


def test_bad_parameter_in_run_config_fails_before_any_work_naming_it(sqlite_url):
    result = materialize(sqlite_url, {"ops": {"daily_profiles": {"config": {"clustering_algorithm": "gmm"}}}})
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "CLUSTERING_ALGORITHM=gmm needs ENABLE_ADVANCED_CLUSTERING" in str(failure.step_failure_data.error.cause)
    assert Warehouse(sqlite_url).profiles().empty


def test_effective_flags_per_store_are_recorded_as_metadata(sqlite_url, tmp_path, monkeypatch):
    monkeypatch.setenv("QUIMBI_FLAGS_FILE", str(write(tmp_path / "f.yaml", "stores:\n  store_b:\n    DYNAMIC_K_RANGE: true\n")))
    result = materialize(sqlite_url)
    assert result.success
    md = next(m for m in result.asset_materializations_for_node("daily_profiles") if m.asset_key == PROFILES_KEY).metadata
    assert md["flags/store_b"].value["DYNAMIC_K_RANGE"] is True and md["flags/store_a"].value["DYNAMIC_K_RANGE"] is False


ON = {
    "snapshots": "ENABLE_TEMPORAL_SNAPSHOTS: true",
    "drift": "ENABLE_DRIFT_ANALYSIS: true",  # brings snapshots, stable segments and adaptive windows
    "stable_segments": "ENABLE_STABLE_SEGMENTS: true",
    "adaptive_windows": "ENABLE_ADAPTIVE_WINDOWS: true",
    "outliers": "ENABLE_OUTLIER_DETECTION: true",
    "honest_segments": "ENABLE_HONEST_SEGMENTS: true",
    "dynamic_k": "DYNAMIC_K_RANGE: true",
    "gmm": "ENABLE_ADVANCED_CLUSTERING: true\n    CLUSTERING_ALGORITHM: gmm",
    "hdbscan": "ENABLE_ADVANCED_CLUSTERING: true\n    CLUSTERING_ALGORITHM: hdbscan\n    QUIMBI_HDBSCAN_MIN_CLUSTER_SIZE: 10",
    "dbscan": "ENABLE_ADVANCED_CLUSTERING: true\n    CLUSTERING_ALGORITHM: dbscan",
}
CHANGES_PROFILES = {"stable_segments", "adaptive_windows", "drift", "honest_segments", "gmm", "hdbscan", "dbscan"}
# outliers: containment refits without the default method's outliers; the golden store_a has none, so its rows stay.
# dynamic_k only widens the k range (max_k 7 for store_a's ~250 customers): the silhouette may keep the same k.


@pytest.mark.parametrize("flag", sorted(ON))
def test_turning_a_flag_on_then_off_returns_to_the_golden_rows(tmp_path, monkeypatch, flag):
    baseline_text = run_golden(tmp_path / "flags_off.sqlite")  # every flag off, this machine
    assert_matches_golden(baseline_text)
    baseline = pd.read_csv(io.StringIO(baseline_text))
    db = tmp_path / "w.sqlite"
    url = f"sqlite:///{db}"
    flags = write(tmp_path / "flags.yaml", f"stores:\n  store_a:\n    {ON[flag]}\n")
    monkeypatch.setenv("QUIMBI_FLAGS_FILE", str(flags))
    assert run_dates(pd.Timestamp(GOLDEN_FROM), pd.Timestamp(GOLDEN_TO), orders=str(GOLDEN_ORDERS), warehouse=url, stores=None, out=io.StringIO()) == 0
    on = pd.read_csv(io.StringIO(export_sqlite_profiles_csv(db)))
    # Only store_a has the flag: store_b's rows are the flags-off rows even while it is on.
    assert on[on.store_id == "store_b"].reset_index(drop=True).equals(baseline[baseline.store_id == "store_b"].reset_index(drop=True))
    changed = not on[on.store_id == "store_a"].reset_index(drop=True).equals(baseline[baseline.store_id == "store_a"].reset_index(drop=True))
    if flag != "dynamic_k":
        assert changed == (flag in CHANGES_PROFILES)
    monkeypatch.delenv("QUIMBI_FLAGS_FILE")
    assert run_dates(pd.Timestamp(GOLDEN_FROM), pd.Timestamp(GOLDEN_TO), orders=str(GOLDEN_ORDERS), warehouse=url, stores=None, out=io.StringIO()) == 0
    assert export_sqlite_profiles_csv(db) == baseline_text  # off again: byte for byte


def test_rollout_share_is_stable_independent_and_grows_by_adding():
    from quimbi_pipeline.settings.rollout import in_rollout

    ids = [f"c{i:06d}" for i in range(50_000)]
    ten = in_rollout(ids, "enable_drift_analysis", 0.10)
    assert abs(ten.mean() - 0.10) < 0.01 and (ten == in_rollout(ids, "enable_drift_analysis", 0.10)).all()
    assert (ten <= in_rollout(ids, "enable_drift_analysis", 0.30)).all()  # 30% contains the 10%
    other = in_rollout(ids, "enable_outlier_detection", 0.10)
    assert abs((ten & other).mean() - 0.01) < 0.005  # independent between flags


def test_percentages_apply_to_customer_level_flags_only(tmp_path):
    with pytest.raises(ValueError, match="a percentage applies only to ENABLE_TEMPORAL_SNAPSHOTS"):
        StoreSettings(environ={}, flags_file=write(tmp_path / "f.yaml", "defaults:\n  ENABLE_STABLE_SEGMENTS: 10%\n"))
    with pytest.raises(ValueError, match=r"must be in \(0, 100\]"):
        StoreSettings(environ={"ENABLE_OUTLIER_DETECTION": "150%"})
    s = StoreSettings(environ={"ENABLE_TEMPORAL_SNAPSHOTS": "true", "ENABLE_DRIFT_ANALYSIS": "10%"})
    assert s.flags("x")["ENABLE_DRIFT_ANALYSIS"] == "10%" and s.default.enable_drift_analysis


def test_rollout_limits_snapshots_drift_and_outliers_to_the_hash_chosen_share(sqlite_url, tmp_path):
    from quimbi_pipeline.run import run_drift_partition, run_profiles_partition
    from quimbi_pipeline.settings.rollout import in_rollout
    from quimbi_pipeline.sources.demo import generate_demo
    from quimbi_pipeline.sources.orders import validate_orders

    flags = write(tmp_path / "f.yaml", """
stores:
  store_a:
    ENABLE_TEMPORAL_SNAPSHOTS: 40%
    ENABLE_DRIFT_ANALYSIS: 50%
    ENABLE_OUTLIER_DETECTION: 20%
  store_b:
    ENABLE_TEMPORAL_SNAPSHOTS: true
""")
    settings = StoreSettings(environ={}, flags_file=flags)
    validated = validate_orders(generate_demo(n_customers=1200, n_stores=2, seed=6).orders)
    wh = Warehouse(sqlite_url)
    for day in ("2026-10-30", "2026-10-31"):
        report = run_profiles_partition(validated, day, wh, settings)
        assert not report.failed
        run_drift_partition(wh, day, settings)
    a = next(o for o in report.outcomes if o.store_id == "store_a")
    b = next(o for o in report.outcomes if o.store_id == "store_b")
    profiles = wh.read_sql("SELECT store_id, customer_id FROM customer_profiles WHERE profile_date = '2026-10-31'")
    active_a = profiles.loc[profiles.store_id == "store_a", "customer_id"]
    chosen = set(active_a[in_rollout(active_a, "enable_temporal_snapshots", 0.4)])
    snaps = wh.read_sql("SELECT store_id, customer_id FROM customer_profile_snapshots WHERE snapshot_date = '2026-10-31'")
    assert set(snaps.loc[snaps.store_id == "store_a", "customer_id"]) == chosen and 0.3 < len(chosen) / len(active_a) < 0.5
    assert a.snapshot_expected == len(chosen) and a.snapshot_rows["daily"] == len(chosen)
    assert b.snapshot_rows["daily"] == b.n_profiles  # store_b: everyone
    drift = wh.read_sql("SELECT DISTINCT store_id, customer_id FROM customer_drift")
    assert set(drift["store_id"]) == {"store_a"}  # drift is off for store_b
    drifted = set(drift["customer_id"])
    assert drifted and all(in_rollout(sorted(drifted), "enable_drift_analysis", 0.5)) and drifted <= chosen
    outliers = wh.read_sql("SELECT customer_id, count(*) AS n FROM customer_outlier_flags WHERE flag_date = '2026-10-31' GROUP BY customer_id")
    assert set(outliers["customer_id"]) == set(active_a[in_rollout(active_a, "enable_outlier_detection", 0.2)]) and (outliers["n"] == 3).all()
    wh.dispose()


def test_drift_windows_setting_accepts_a_subset_of_the_design_windows():
    assert PipelineSettings(drift_windows="28, 7").drift_windows == (7, 28)
    assert PipelineSettings.from_env(environ={"QUIMBI_DRIFT_WINDOWS": "365"}).drift_windows == (365,)
    assert PipelineSettings().drift_windows == (7, 28, 90, 180, 365)
    for bad in ("30", "", "x", [], 3.5):
        with pytest.raises(ValueError, match="drift_windows"):
            PipelineSettings(drift_windows=bad)
