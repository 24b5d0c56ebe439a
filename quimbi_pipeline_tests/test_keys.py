"""sources.keys: is_in (pandas' isin) and repeated (pandas' duplicated) over keys of every dtype the pipeline holds."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from quimbi_pipeline.sources.keys import is_in, repeated, string_hash


@pytest.mark.parametrize("dtype", ["str", "string", object])
def test_is_in_answers_as_pandas_isin(dtype):
    rng = np.random.default_rng(3)
    keys = pd.Index([f"c{i:05d}" for i in rng.integers(0, 5_000, 3_000)], dtype=dtype)
    among = pd.Index([f"c{i:05d}" for i in rng.integers(0, 5_000, 2_000)] + ["not-a-key"], dtype=dtype)
    assert is_in(keys, among).tolist() == keys.isin(among).tolist()
    assert is_in(pd.Series(keys), among.to_numpy(object)).tolist() == keys.isin(among).tolist()


def test_is_in_reads_keys_of_several_arrow_chunks_as_they_are():
    parts = [pd.Series([f"c{i}" for i in range(k, k + 50)] + [None], dtype="string[pyarrow]") for k in (0, 40, 200)]
    keys = pd.concat(parts, ignore_index=True)
    assert keys.array._pa_array.num_chunks == 3  # pandas keeps the chunks: is_in does not join them
    among = pd.Index(["c5", "c45", "c210", None, "c999"], dtype="string[pyarrow]")
    assert is_in(keys, among).tolist() == keys.isin(among).tolist()
    assert is_in(keys, among).sum() == 7  # c5; c45 twice (the first two parts overlap); c210; the three nulls


def test_is_in_matches_nulls_and_empty_sides():
    assert is_in(pd.Index(["a", None, "b"], dtype="string"), pd.Index([None, "b"], dtype="string")).tolist() == [False, True, True]
    assert is_in(pd.Index(["a", "b"], dtype="str"), []).tolist() == [False, False]
    assert is_in(pd.Index([], dtype="str"), ["a"]).tolist() == []


def _keys_frame(dtype, n=4_000, seed=5):
    """Two key columns with repeats, nulls, blanks, unicode and ids that differ only past their 8th or 16th byte."""
    rng = np.random.default_rng(seed)
    pool = ["", "a", "a ", "é", "ünïcode-ørder", "x" * 8, "x" * 9, "x" * 16, "x" * 15 + "y", "order-0000000001",
            "order-0000000002", "order-00000000010", "\x00", "a\x00"] + [f"o{i}" for i in range(300)]
    order = [None if rng.random() < 0.02 else pool[i] for i in rng.integers(0, len(pool), n)]
    store = [None if rng.random() < 0.01 else f"s{i}" for i in rng.integers(0, 3, n)]
    return pd.DataFrame({"store_id": pd.array(store, dtype=dtype), "order_id": pd.array(order, dtype=dtype)})


@pytest.mark.parametrize("dtype", ["str", "string", object])
def test_repeated_answers_as_pandas_duplicated(dtype):
    frame = _keys_frame(dtype)
    expected = frame.duplicated(subset=["store_id", "order_id"], keep=False).to_numpy()
    assert 0 < expected.sum() < len(frame)
    assert repeated(frame, ["store_id", "order_id"]).tolist() == expected.tolist()
    assert repeated(frame, ["order_id"]).tolist() == frame.duplicated(subset=["order_id"], keep=False).tolist()


def test_repeated_finds_none_among_distinct_keys_and_handles_tiny_frames():
    frame = pd.DataFrame({"store_id": ["s"] * 50_000, "order_id": [f"order-{i:012d}" for i in range(50_000)]}, dtype="str")
    assert not repeated(frame, ["store_id", "order_id"]).any()
    frame.loc[49_999, "order_id"] = "order-000000000007"
    assert np.flatnonzero(repeated(frame, ["store_id", "order_id"])).tolist() == [7, 49_999]
    assert repeated(frame.iloc[:1], ["store_id", "order_id"]).tolist() == [False]
    assert repeated(frame.iloc[:0], ["store_id", "order_id"]).tolist() == []


def test_string_hash_tells_apart_what_differs_and_agrees_across_storages():
    texts = ["", "a", "a\x00", "abcdefgh", "abcdefgh\x00", "abcdefghi", "abcdefgi", None]
    hashes = {dtype: string_hash(pd.Series(texts, dtype=dtype)) for dtype in ("str", "string", object)}
    assert len(set(hashes["string"].tolist())) == len(texts)
    assert hashes["str"].tolist() == hashes["string"].tolist() == hashes[object].tolist()
    chunked = pa.chunked_array([pa.array(texts[:3]), pa.array(texts[3:])]).slice(1)
    assert string_hash(chunked).tolist() == hashes["string"][1:].tolist()
    assert string_hash(pa.array(texts, type=pa.large_string()).slice(2)).tolist() == hashes["string"][2:].tolist()
