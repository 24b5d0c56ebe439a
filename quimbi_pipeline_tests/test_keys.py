"""sources.keys.is_in: pandas' isin over customer keys of every dtype the pipeline holds, by Arrow's hash set."""

import numpy as np
import pandas as pd
import pytest

from quimbi_pipeline.sources.keys import is_in


@pytest.mark.parametrize("dtype", ["str", "string", object])
def test_is_in_answers_as_pandas_isin(dtype):
    rng = np.random.default_rng(3)
    keys = pd.Index([f"c{i:05d}" for i in rng.integers(0, 5_000, 3_000)], dtype=dtype)
    among = pd.Index([f"c{i:05d}" for i in rng.integers(0, 5_000, 2_000)] + ["not-a-key"], dtype=dtype)
    assert is_in(keys, among).tolist() == keys.isin(among).tolist()
    assert is_in(pd.Series(keys), among.to_numpy(object)).tolist() == keys.isin(among).tolist()


def test_is_in_matches_nulls_and_empty_sides():
    assert is_in(pd.Index(["a", None, "b"], dtype="string"), pd.Index([None, "b"], dtype="string")).tolist() == [False, True, True]
    assert is_in(pd.Index(["a", "b"], dtype="str"), []).tolist() == [False, False]
    assert is_in(pd.Index([], dtype="str"), ["a"]).tolist() == []
