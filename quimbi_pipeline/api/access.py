"""Who may read which store: QUIMBI_API_KEYS names a YAML file mapping each key to its stores.

    key-a: [store_a]
    key-b: [store_b, store_c]
    key-admin: ["*"]          # every store

A request carries its key as `X-API-Key: <key>`, `Authorization: Bearer <key>`, or (a page opened in a
browser) `?api_key=<key>`. Keys are compared in constant time; they are never logged or echoed in an
error body. Without QUIMBI_API_KEYS there are no keys: the server then listens on localhost only.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

import yaml

from quimbi_pipeline.settings.deployment import value

ALL_STORES = "*"
KEY_PARAMETER = "api_key"


def request_key(headers, query) -> str | None:
    """A request's API key from its headers and query parameters (mappings): X-API-Key, Authorization: Bearer, or
    ?api_key= (pages opened in a browser)."""
    key = headers.get("x-api-key")
    if not key:
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    return key or query.get(KEY_PARAMETER)


class AccessConfigError(ValueError):
    """The keys file is missing or malformed (said before the server starts)."""


@dataclass(frozen=True)
class Access:
    keys: dict[str, frozenset[str]] | None  # None: no keys configured (localhost only, every store)

    @classmethod
    def from_env(cls) -> Access:
        path = value("QUIMBI_API_KEYS")
        return cls(None) if not path else cls(load_keys(Path(path)))

    @property
    def open(self) -> bool:
        return self.keys is None

    def stores_of(self, key: str | None) -> frozenset[str] | None:
        """The stores a key grants; None for an unknown or missing key."""
        if self.keys is None:
            return frozenset({ALL_STORES})
        if not key:
            return None
        found = None
        for known, granted in self.keys.items():  # every key compared: the time does not depend on which matched
            if hmac.compare_digest(known.encode(), key.encode()):
                found = granted
        return found

    def grants(self, key: str | None, store: str) -> bool:
        granted = self.stores_of(key)
        return granted is not None and (ALL_STORES in granted or store in granted)


def load_keys(path: Path) -> dict[str, frozenset[str]]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise AccessConfigError(f"QUIMBI_API_KEYS: cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise AccessConfigError(f"QUIMBI_API_KEYS: {path} is not YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict) or not data:
        raise AccessConfigError(f"QUIMBI_API_KEYS: {path} must map each key to a list of stores (key-a: [store_a])")
    keys = {}
    for n, (key, stores) in enumerate(data.items(), 1):
        if not isinstance(key, str) or len(key) < 16:
            raise AccessConfigError(f"QUIMBI_API_KEYS: {path}, entry {n}: a key must be text of at least 16 characters")
        if not isinstance(stores, list) or not stores or not all(isinstance(s, str) and s for s in stores):
            raise AccessConfigError(f"QUIMBI_API_KEYS: {path}, entry {n}: the stores must be a non-empty list of store ids")
        keys[key] = frozenset(stores)
    return keys
