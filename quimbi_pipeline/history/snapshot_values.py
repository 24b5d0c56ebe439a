"""A snapshot row's three JSON objects as arrays of values, with the names kept once per store and model.

Every profile of one store's write has the same keys in the same order (profiles.json_object builds them
from the store's models), so a snapshot row stores only its values, as JSON arrays in the order of its
layout (the (axis, name) pairs, stored once in snapshot_layouts):

- membership_values: fuzzy_memberships' numbers, axis by axis, segment by segment ("kind" m of the layout);
- feature_values: behavioral_features' numbers, axis by axis, feature by feature (kind f);
- dominant_positions: each axis' dominant segment as its position in the membership layout.

The layout also names the rows' model_version (kind v). A row's archetype (id, level, name) is a function of
its dominant segments, so it is kept once per store, layout and dominant_positions (archetype_dictionary).

The names were 1.2 KB of a row's ~1.4 KB of JSON text (issue 13). The numbers keep their text as written
(null for NaN), so expanding the arrays in the layout gives back the profile's JSON text byte for byte.
Pure functions over pandas; no database.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic_core import from_json

from quimbi_pipeline.history.json_text import arrow_text, json_object, json_string

MEMBERSHIPS, FEATURES, MODEL = "m", "f", "v"  # snapshot_layouts.kind
VALUE_COLUMNS = ("dominant_positions", "membership_values", "feature_values")
ARCHETYPE_COLUMNS = ("archetype_id", "archetype_level", "archetype_name")

_KEYS_AND_BRACES = r'"[^"]*": |[{} ]'  # what turns '{"a": {"x": 0.1, "y": null}}' into '0.1,null'


@dataclass(frozen=True)
class SnapshotLayout:
    memberships: tuple[tuple[str, str], ...]  # (axis, segment) in row order
    features: tuple[tuple[str, str], ...]  # (axis, feature) in row order
    model_version: str

    @cached_property
    def membership_spans(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(axis, segment names) of each axis' run of membership_values, in order (the read API's decoding)."""
        return _spans(self.memberships)

    @cached_property
    def feature_spans(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return _spans(self.features)

    @cached_property
    def _dominant_segments_of(self) -> dict[str, dict[str, str]]:
        """{dominant_positions text: {axis: segment}}, filled as rows are read (a store has few archetypes)."""
        return {}

    def memberships_of(self, values_text: str) -> dict:
        """One row's fuzzy_memberships {axis: {segment: value}} from its membership_values (the read API's path)."""
        return _nest(self.membership_spans, len(self.memberships), values_text)

    def features_of(self, values_text: str) -> dict:
        """One row's behavioral_features {axis: {feature: value}} from its feature_values."""
        return _nest(self.feature_spans, len(self.features), values_text)

    def dominant_segments(self, positions_text: str) -> dict[str, str]:
        """One row's dominant_segments {axis: segment} from its dominant_positions (a new dict: the caller's to change)."""
        found = self._dominant_segments_of.get(positions_text)
        if found is None:
            found = self._dominant_segments_of[positions_text] = {self.memberships[p][0]: self.memberships[p][1] for p in json.loads(positions_text)}
        return dict(found)

    @property
    def axes(self) -> list[str]:
        """The membership axes in row order (dominant_positions holds one position per axis)."""
        return list(dict.fromkeys(axis for axis, _ in self.memberships))

    def rows(self) -> pd.DataFrame:
        """snapshot_layouts rows without the store and id: kind, position, axis, name."""
        items = ([(MEMBERSHIPS, i, a, n) for i, (a, n) in enumerate(self.memberships)] + [(FEATURES, i, a, n) for i, (a, n) in enumerate(self.features)]
                 + [(MODEL, 0, "model_version", self.model_version)])
        return pd.DataFrame(items, columns=["kind", "position", "axis", "name"])

    @classmethod
    def from_rows(cls, rows: pd.DataFrame) -> "SnapshotLayout":
        ordered = rows.sort_values(["kind", "position"])

        def pairs(kind: str) -> tuple[tuple[str, str], ...]:
            part = ordered[ordered["kind"] == kind]
            if not np.array_equal(part["position"].to_numpy("int64"), np.arange(len(part))):
                raise ValueError(f"snapshot layout kind {kind!r} has gaps in its positions")
            return tuple(zip(part["axis"].astype(str), part["name"].astype(str)))

        version = ordered.loc[ordered["kind"] == MODEL, "name"].astype(str).tolist()
        if len(version) != 1:
            raise ValueError(f"snapshot layout names {len(version)} model versions, not one")
        return cls(pairs(MEMBERSHIPS), pairs(FEATURES), version[0])


@dataclass
class SnapshotValues:
    """A store's snapshot rows' values (customer_id + VALUE_COLUMNS) and their layout."""

    layout: SnapshotLayout
    frame: pd.DataFrame


def array_text(parts: list) -> pd.Series:
    """'[v1,v2,...]' per row from already-serialized values (one series or array per position), in one pass."""
    if not parts:
        raise ValueError("array_text needs at least one part")
    arrays = [arrow_text(p) for p in parts]
    joined = pc.binary_join_element_wise(*arrays, pa.scalar(",", pa.large_string()))
    text = pc.binary_join_element_wise(pa.scalar("[", pa.large_string()), joined, pa.scalar("]", pa.large_string()), pa.scalar("", pa.large_string()))
    return pd.Series(text, dtype=pd.StringDtype("pyarrow"))


def numbers_text(numbers: dict[str, list[tuple[str, pd.Series]]]) -> tuple[tuple[tuple[str, str], ...], pd.Series]:
    """Serialized numbers ({axis: [(name, text)]}, what the profile JSON is built from) as a layout's (axis, name)
    pairs and one '[v1,v2,...]' text per row: what values_of takes, so the numbers' text can go once it is made."""
    return (tuple((a, n) for a, items in numbers.items() for n, _ in items),
            array_text([v for items in numbers.values() for _, v in items]))


def values_of(customer_ids, memberships: tuple[tuple[tuple[str, str], ...], pd.Series],
              features: tuple[tuple[tuple[str, str], ...], pd.Series], dominant: dict[str, np.ndarray], model_version: str) -> SnapshotValues:
    """The snapshot values of a store's profiles: the memberships' and features' numbers_text and each axis' dominant
    segment (its index among the axis' segments)."""
    (membership_pairs, membership_values), (feature_pairs, feature_values) = memberships, features
    layout = SnapshotLayout(membership_pairs, feature_pairs, model_version)
    offsets: dict[str, int] = {}
    for position, (axis, _) in enumerate(membership_pairs):
        offsets.setdefault(axis, position)
    frame = pd.DataFrame({
        "customer_id": pd.Series(np.asarray(customer_ids, dtype=object), dtype="string"),
        "dominant_positions": array_text([pd.Series(offsets[a] + np.asarray(idx, dtype="int64")).astype(str) for a, idx in dominant.items()]),
        "membership_values": membership_values,
        "feature_values": feature_values,
    })
    return SnapshotValues(layout, frame)


def layout_id(layout: SnapshotLayout) -> int:
    """A layout's id: a hash of its contents (31 bits), so equal layouts share one id and an id never changes meaning."""
    digest = hashlib.sha256(json.dumps([layout.memberships, layout.features, layout.model_version]).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    return tuple((axis, name) for axis, values in json.loads(text).items() for name in values)


def layout_of(profiles: pd.DataFrame) -> SnapshotLayout:
    """The layout of a store's profiles (JSON text columns), read from its first row."""
    first = profiles.iloc[0]
    versions = profiles["model_version"].astype(str).unique()
    if len(versions) != 1:
        raise ValueError(f"the profiles of one snapshot layout name {len(versions)} model versions: {sorted(versions)[:5]}")
    return SnapshotLayout(_pairs(str(first["fuzzy_memberships"])), _pairs(str(first["behavioral_features"])), str(versions[0]))


def archetype_dictionary(dominant_positions: pd.Series, profiles: pd.DataFrame) -> pd.DataFrame:
    """dominant_positions + ARCHETYPE_COLUMNS, one row per distinct dominant_positions of the profiles (same
    order as `dominant_positions`); raises if one set of dominant segments names two archetypes."""
    pairs = pd.DataFrame({"dominant_positions": pd.Series(dominant_positions).astype(str).to_numpy(object),
                          **{c: profiles[c].to_numpy() for c in ARCHETYPE_COLUMNS}}).drop_duplicates()
    if pairs["dominant_positions"].duplicated().any():
        raise ValueError("one set of dominant segments names two archetypes: the archetype is not a function of the segments")
    return pairs.reset_index(drop=True).astype({"archetype_level": "int64"})


def _values_text(column: pd.Series, expected: int, name: str) -> pd.Series:
    """'{"a": {"x": 0.1, "y": null}}' -> '[0.1,null]', checking every row has the layout's number of values."""
    inner = column.astype("string").str.replace(_KEYS_AND_BRACES, "", regex=True)
    counts = np.where(inner.to_numpy(object) == "", 0, inner.str.count(",").to_numpy("int64") + 1)  # "{}": no values
    if (counts != expected).any():
        raise ValueError(f"{name}: {int((counts != expected).sum())} row(s) do not have the layout's {expected} values "
                         "(every profile of a store's date must share its keys)")
    return "[" + inner + "]"


def values_from_json(profiles: pd.DataFrame) -> SnapshotValues:
    """The snapshot values of profiles given as JSON text (one store's date; a migration's rows, a write
    without values_of's). A regex per column: ~5 s per million rows and column, so not the daily path."""
    layout = layout_of(profiles)
    dominant = profiles["dominant_segments"].astype("string").str.replace(r'"[^"]*": |[{} "]', "", regex=True)
    axes = layout.axes
    names = dominant.str.split(",", expand=True)
    if names.shape[1] != len(axes):
        raise ValueError(f"dominant_segments: {names.shape[1]} axes, the layout has {len(axes)}")
    parts = []
    for j, axis in enumerate(axes):
        positions = {name: i for i, (a, name) in enumerate(layout.memberships) if a == axis}
        found = names[j].map(positions)
        if found.isna().any():
            raise ValueError(f"dominant_segments: {int(found.isna().sum())} row(s) name a {axis} segment the layout does not have")
        parts.append(found.astype("int64").astype(str))
    frame = pd.DataFrame({
        "customer_id": profiles["customer_id"].astype("string").reset_index(drop=True),
        "dominant_positions": array_text(parts),
        "membership_values": _values_text(profiles["fuzzy_memberships"], len(layout.memberships), "fuzzy_memberships").reset_index(drop=True),
        "feature_values": _values_text(profiles["behavioral_features"], len(layout.features), "behavioral_features").reset_index(drop=True),
    })
    return SnapshotValues(layout, frame)


def _split(values: pd.Series, width: int) -> pd.DataFrame:
    if width == 0:
        return pd.DataFrame(index=range(len(values)))
    parts = values.astype("string").str.slice(1, -1).str.split(",", expand=True)
    if parts.shape[1] != width:
        raise ValueError(f"snapshot values hold {parts.shape[1]} values, the layout {width}")
    return parts.reset_index(drop=True)


def _nested(parts: pd.DataFrame, pairs: tuple[tuple[str, str], ...]) -> pd.Series:
    if not pairs:
        return pd.Series(["{}"] * len(parts), dtype=object)
    by_axis: dict[str, list[tuple[str, pd.Series]]] = {}
    for j, (axis, name) in enumerate(pairs):
        by_axis.setdefault(axis, []).append((name, parts[j]))
    return json_object([(axis, json_object(items)) for axis, items in by_axis.items()])


def expand_values(rows: pd.DataFrame, layout: SnapshotLayout, columns=("dominant_segments", "fuzzy_memberships", "behavioral_features")) -> dict[str, pd.Series]:
    """The JSON text of `columns` for rows holding VALUE_COLUMNS (all in one layout), as the profile wrote it."""
    out: dict[str, pd.Series] = {}
    if "fuzzy_memberships" in columns:
        out["fuzzy_memberships"] = _nested(_split(rows["membership_values"], len(layout.memberships)), layout.memberships)
    if "behavioral_features" in columns:
        out["behavioral_features"] = _nested(_split(rows["feature_values"], len(layout.features)), layout.features)
    if "dominant_segments" in columns:
        axes = layout.axes
        positions = _split(rows["dominant_positions"], len(axes))
        segment = np.asarray([name for _, name in layout.memberships], dtype=object)
        out["dominant_segments"] = json_object([(axis, json_string(segment[positions[j].astype("int64").to_numpy()]))
                                                for j, axis in enumerate(axes)])
    return {c: s.set_axis(rows.index) for c, s in out.items()}


def _spans(pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    spans: list[tuple[str, tuple[str, ...]]] = []
    for axis, items in itertools.groupby(pairs, key=lambda pair: pair[0]):
        if any(axis == seen for seen, _ in spans):
            raise ValueError(f"snapshot layout: axis {axis!r} is not contiguous")  # a flattened nested object always is
        spans.append((axis, tuple(name for _, name in items)))
    return tuple(spans)


def _nest(spans: tuple[tuple[str, tuple[str, ...]], ...], size: int, values_text: str) -> dict:
    """{axis: {name: value}} from a JSON array of `size` values in the layout's order. pydantic_core's parser gives the
    same floats as json.loads (a row's array in 0.9 against 6 µs), and each axis takes its names' count from one
    iterator (no slices)."""
    values = from_json(values_text)
    if type(values) is not list or len(values) != size:
        raise ValueError(f"snapshot values hold {len(values) if type(values) is list else 'no array of'} values, the layout {size}")
    rest = iter(values)
    return {axis: dict(zip(names, rest)) for axis, names in spans}  # zip stops at the names: rest is not overdrawn


def row_objects(layout: SnapshotLayout, row, columns) -> dict:
    """One row's `columns` (of the three JSON objects) as Python objects, from its VALUE_COLUMNS (a mapping):
    the read API's path, a few rows at a time, no DataFrame."""
    out: dict = {}
    if "fuzzy_memberships" in columns:
        out["fuzzy_memberships"] = layout.memberships_of(row["membership_values"])
    if "dominant_segments" in columns:
        out["dominant_segments"] = layout.dominant_segments(row["dominant_positions"])
    if "behavioral_features" in columns:
        out["behavioral_features"] = layout.features_of(row["feature_values"])
    return out
