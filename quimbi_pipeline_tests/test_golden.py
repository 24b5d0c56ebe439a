"""With every flag off, customer_profiles equals the frozen golden rows byte for byte."""

import io

import pandas as pd
import pytest

from quimbi_pipeline.cli import run_dates
from quimbi_pipeline.warehouse import Warehouse, normalize_profiles
from quimbi_pipeline_tests.golden import GOLDEN_FROM, GOLDEN_ORDERS, GOLDEN_PROFILES, GOLDEN_TO, run_golden


def test_sqlite_rows_equal_golden_byte_for_byte(tmp_path):
    produced = run_golden(tmp_path / "w.sqlite")
    assert produced == GOLDEN_PROFILES.read_text()


@pytest.mark.postgres
def test_postgres_rows_equal_golden(pg_url):
    assert run_dates(pd.Timestamp(GOLDEN_FROM), pd.Timestamp(GOLDEN_TO), orders=str(GOLDEN_ORDERS), warehouse=pg_url, stores=None, out=io.StringIO()) == 0
    produced = Warehouse(pg_url).profiles()
    golden = normalize_profiles(pd.read_csv(GOLDEN_PROFILES, dtype={"customer_id": str, "store_id": str}))
    produced = produced[golden.columns]
    pd.testing.assert_frame_equal(produced.reset_index(drop=True), golden.reset_index(drop=True), check_dtype=False)
