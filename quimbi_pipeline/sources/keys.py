"""Set operations on string keys that pandas 3 makes slow at the sizes a run holds.

`is_in`: pandas 3's `isin` on string keys is slow when the other side is large: 814k customer ids against 814k took
3.7-3.9 s (both Arrow-backed `str` and `string`; object arrays 0.3 s), Arrow's `is_in` 0.2 s. The run's checks compare
a store's every customer with every stored row, so this was 8 of the 1M-customer partition's 26 s of verification.

`repeated`: which rows share their key with another row. pandas' two-column `duplicated` over the 1M-customer demo's
20.9M orders took 11.8 s and 3.3 GiB; Arrow's group-by 48 s. A 64-bit hash of each row's key read straight off the
Arrow buffers, sorted, finds the (usually no) candidates in about 3 s and 0.6 GiB, and pandas decides among those
alone, so the answer is exactly pandas' whatever the hash's collisions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def _arrow_chunks(keys) -> pa.Array | pa.ChunkedArray:
    """Keys as Arrow, chunks as they are (no copy of Arrow-backed pandas strings; pandas' nulls and NaN as nulls)."""
    if isinstance(keys, (pd.Index, pd.Series)):
        keys = keys.array
    return pa.array(keys) if not isinstance(keys, (pa.Array, pa.ChunkedArray)) else keys


def _arrow(keys) -> pa.Array:
    array = _arrow_chunks(keys)
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


# splitmix64's multipliers: any odd 64-bit constants with good bit mixing would do.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_NULL_HASH = np.uint64(0xD6E8FEB86659FD93)
_HASH_SLICE_ROWS = 1 << 20  # rows hashed at a time: bounds the temporary arrays to tens of MB


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, in place (uint64 arithmetic wraps)."""
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


def _hash_slice(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """One hash per string of an Arrow string slice: its length, then its bytes 8 at a time (zero-padded)."""
    lo, hi = int(offsets[0]), int(offsets[-1])
    padded = np.zeros(hi - lo + 8, dtype=np.uint8)
    padded[: hi - lo] = data[lo:hi]
    # every 8-byte window of the text as a little-endian word: row i's k-th word starts at its offset + 8k
    words = np.ndarray(shape=(hi - lo + 1,), dtype="<u8", buffer=padded, strides=(1,))
    start = (offsets[:-1] - lo).astype(np.int64)
    length = np.diff(offsets).astype(np.int64)
    h = length.astype(np.uint64) * _GOLDEN
    rows = np.arange(length.size)
    k = 0
    while rows.size:
        word = words[start[rows] + k]
        left = length[rows] - k
        short = left < 8
        if short.any():  # keep only the string's own bytes of its last word
            word[short] &= (np.uint64(1) << (np.uint64(8) * left[short].astype(np.uint64))) - np.uint64(1)
        h[rows] = _mix(h[rows] ^ word)
        k += 8
        rows = rows[length[rows] > k]
    return h


def string_hash(values) -> np.ndarray:
    """A 64-bit hash of each string (nulls all alike), from the Arrow buffers: no Python string is made."""
    array = _arrow_chunks(values)  # a chunked column stays chunked: hashed chunk by chunk, never concatenated
    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    out = np.empty(len(array), dtype=np.uint64)
    pos = 0
    for chunk in chunks:
        if not (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)):
            chunk = chunk.cast(pa.large_string())
        offset_type = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
        for first in range(0, len(chunk), _HASH_SLICE_ROWS):
            part = chunk.slice(first, _HASH_SLICE_ROWS)
            _, offset_buffer, data_buffer = part.buffers()
            offsets = np.frombuffer(offset_buffer, dtype=offset_type)[part.offset: part.offset + len(part) + 1]
            data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
            hashed = out[pos: pos + len(part)]
            hashed[:] = _hash_slice(offsets, data)
            if part.null_count:
                hashed[part.is_null().to_numpy(zero_copy_only=False)] = _NULL_HASH
            pos += len(part)
    return out


def repeated(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """A boolean per row: does another row have the same values in `columns` (pandas'
    `frame.duplicated(subset=columns, keep=False)`, nulls equal to nulls)? The columns hold strings."""
    if len(frame) < 2:
        return np.zeros(len(frame), dtype=bool)
    key = np.zeros(len(frame), dtype=np.uint64)
    for column in columns:
        key *= _GOLDEN
        key ^= string_hash(frame[column])
        _mix(key)
    ordered = np.sort(key)
    shared = ordered[1:][ordered[1:] == ordered[:-1]]
    del ordered
    out = np.zeros(len(frame), dtype=bool)
    if shared.size:  # rows whose hash another row has: pandas decides which of them truly share the key
        candidates = np.flatnonzero(np.isin(key, shared))
        out[candidates] = frame.iloc[candidates].duplicated(subset=columns, keep=False).to_numpy()
    return out


def is_in(keys, among) -> np.ndarray:
    """A boolean per key of `keys`: is it one of `among` (pandas' `keys.isin(among)`, a null matching a null)."""
    values, value_set = _arrow_chunks(keys), _arrow(among)  # the keys' chunks as they are: joining 20M strings costs 0.3 s
    if len(values) == 0:
        return np.zeros(0, dtype=bool)
    if value_set.type != values.type:
        value_set = value_set.cast(values.type)
    return np.asarray(pc.is_in(values, value_set=value_set), dtype=bool)
