"""The read API's three hot reads answered without FastAPI's request machinery.

A GET of a customer's profile, stored drift or history (scoped `/stores/{store}/customers/{id}...` or the
one-store paths) is matched here by splitting the path, and its few query parameters are checked against the
same rules the FastAPI routes declare. Routing, dependency and parameter solving took a third of such a
request's CPU in-process, more than the reads themselves.

Only a request that is well-formed and granted is answered here. Anything else goes on to the FastAPI
routes, which answer it exactly as documented: another path or method, a malformed, repeated or unknown
parameter value, a past date (`as_of`, computed in the thread pool), and every error (401, 403, 404), which
the route then raises itself (so a request ending in an error is read twice: errors are rare and cheap). What a
direct answer raises unexpectedly (a dropped database connection) is logged and the route reads again: its answer, or
its 500, is the request's. The routes also remain what `/docs` and the OpenAPI schema describe; they take their limits from this module.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import Response

from quimbi_pipeline.api.access import request_key
from quimbi_pipeline.api.reads import SNAPSHOT_TYPES, WINDOWS

log = logging.getLogger("quimbi_pipeline.api")
MAX_ID_LENGTH = 200  # of a store or customer id, as the routes declare
MAX_DAYS = 3650

Answer = Callable[..., Awaitable[Response]]
Grant = Callable[[str | None, str | None], Awaitable[str]]  # (key, store or None for the one-store paths) -> store


def matched(path: str) -> tuple[str | None, str, str] | None:
    """(store or None on a one-store path, customer, "profile" | "drift" | "history") of a hot path, else None."""
    parts = path.split("/")
    if len(parts) in (5, 6) and parts[1] == "stores" and parts[3] == "customers":
        store, rest = parts[2], parts[4:]
        if not 0 < len(store) <= MAX_ID_LENGTH:
            return None
    elif len(parts) in (3, 4) and parts[0] == "" and parts[1] == "customers":
        store, rest = None, parts[2:]
    else:
        return None
    if parts[0] != "" or not 0 < len(rest[0]) <= MAX_ID_LENGTH:
        return None
    if len(rest) == 1:
        return store, rest[0], "profile"
    return (store, rest[0], rest[1]) if rest[1] in ("drift", "history") else None


def arguments(kind: str, query: dict[str, str]) -> dict | None:
    """The read's arguments from its query parameters, when each is well-formed; None sends the request on.
    Other parameters are ignored, as by the routes."""
    if kind == "profile":
        return {}
    if kind == "drift":
        window = query.get("window", "28d")
        return {"window": window} if window in WINDOWS and "as_of" not in query else None
    days = query.get("days", "28")
    snapshot_type = query.get("snapshot_type")
    if not (days.isascii() and days.isdigit() and 1 <= int(days) <= MAX_DAYS):
        return None
    if snapshot_type is not None and snapshot_type not in SNAPSHOT_TYPES:
        return None
    return {"days": int(days), "snapshot_type": snapshot_type}


class DirectRoutes:
    """ASGI middleware: answers a well-formed, granted GET of a hot path with `answers[kind]`, else passes it on."""

    def __init__(self, app, *, grant: Grant, answers: dict[str, Answer]):
        self.app, self.grant, self.answers = app, grant, answers

    async def __call__(self, scope, receive, send):
        response = await self.answer(scope) if scope["type"] == "http" and scope["method"] == "GET" else None
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)

    async def answer(self, scope) -> Response | None:
        if scope.get("root_path"):  # mounted under a prefix: the router strips it, so let it
            return None
        found = matched(scope["path"])
        if found is None:
            return None
        store, customer, kind = found
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        query = dict(pairs)
        if len(query) != len(pairs):
            return None
        args = arguments(kind, query)
        if args is None:
            return None
        try:
            granted = await self.grant(request_key(Headers(scope=scope), query), store)
            return await self.answers[kind](granted, customer, **args)
        except HTTPException:
            return None  # the route raises it again and answers it as documented
        except Exception as exc:  # outside FastAPI's error handling: the route reads again, and answers 500 if it fails too
            log.warning("GET %s: the direct answer failed (%s: %s); the route answers", scope["path"], type(exc).__name__, exc)
            return None
