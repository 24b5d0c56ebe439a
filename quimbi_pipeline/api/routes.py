"""The read API's one routing table: every JSON endpoint's path, parameters and limits, declared once.

Two routers are derived from it. `add_routes` declares each endpoint on the FastAPI application (what `/docs` and
the OpenAPI document describe, and what answers anything unusual, every error included). `direct_route` and
`direct_values` are the direct path's matcher (direct_routes.py): a GET of a `direct` route with well-formed parameters is answered
without FastAPI's routing and parameter solving, a third of such a request's CPU. Adding an endpoint or changing
a limit is one edit here, and both routers follow.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any
from urllib.parse import quote, unquote

from fastapi import FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from quimbi_pipeline.api.access import request_key
from quimbi_pipeline.api.models import Alerts, Drift, History, Population, Profile
from quimbi_pipeline.api.reads import SNAPSHOT_TYPES, WINDOWS
from quimbi_pipeline.drift.alerts import ALERT_WINDOW_DAYS
from quimbi_pipeline.sources.orders import (
    MAX_ID_LENGTH,  # ids are capped at write time: a longer one is never stored
)

MAX_DAYS = 3650
# An id may hold "/": its path segment encodes it (%2F), which routing would read as two segments. Routing sees such
# a slash as this private-use character instead (routing_path), and the endpoints get the id back (path_id).
ENCODED_SLASH = "\ue02f"

Grant = Callable[[str | None, str | None], Awaitable[str]]  # (key, store or None for the one-store paths) -> store
Answer = Callable[..., Awaitable[Any]]  # (granted store, path ids after the store, query values) -> response


@dataclass(frozen=True)
class QueryParam:
    name: str
    type: type
    default: Any
    choices: tuple[str, ...] | None = None  # a text parameter's allowed values
    low: int | None = None  # an integer's range
    high: int | None = None
    description: str | None = None
    direct: bool = True  # False: a request that gives it goes to FastAPI (e.g. a past date, computed in the thread pool)

    def annotation(self):
        """The parameter as FastAPI declares it."""
        if self.choices is None and self.low is None and self.description is None:
            return self.type | None if self.default is None else self.type
        if self.type is date:  # a date's range: the answers compute windows before it, which must stay in the calendar
            return Annotated[self.type | None, Query(ge=self.low, le=self.high)]
        query = Query(pattern=f"^({'|'.join(self.choices)})$" if self.choices else None, ge=self.low, le=self.high,
                      description=self.description)
        return Annotated[self.type | None if self.default is None else self.type, query]

    def allowed(self) -> str:
        """What the parameter takes, in words (the 422 answer's)."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.type is int:
            return f"a whole number from {self.low} to {self.high}"
        if self.type is date:
            return f"a date (YYYY-MM-DD) from {self.low} to {self.high}"
        return "text"

    def direct_value(self, query: dict[str, str]) -> tuple[bool, Any]:
        """(well-formed, value) of the parameter in a query string, as the direct path takes it: strict forms only;
        anything else goes to FastAPI, which answers it as documented."""
        given = query.get(self.name)
        if given is None:
            return True, self.default
        if not self.direct:
            return False, None
        if self.type is int:
            ok = given.isascii() and given.isdigit() and self.low <= int(given) <= self.high
            return ok, int(given) if ok else None
        return (self.choices is None or given in self.choices), given


@dataclass(frozen=True)
class Route:
    name: str  # the endpoint's name (its OpenAPI operationId starts with it)
    path: str
    kind: str  # which answer serves it: profile, drift, history, population
    response: type[BaseModel]
    summary: str
    query: tuple[QueryParam, ...] = ()
    direct: bool = True  # answered by the direct path when well-formed
    thread_pool: bool = False  # the answer is blocking work: run it in the thread pool

    @property
    def segments(self) -> list[str]:
        return self.path.split("/")

    @property
    def path_names(self) -> list[str]:
        return [s[1:-1] for s in self.segments if s.startswith("{")]


WINDOW = QueryParam("window", str, "28d", choices=WINDOWS, description="7d, 28d, 90d, 180d or 365d")
AS_OF = QueryParam("as_of", date, None, low=date(1900, 1, 1), high=date(2999, 12, 31), direct=False)


def _days(default: int, since: str = "the customer's newest snapshot") -> QueryParam:
    return QueryParam("days", int, default, low=1, high=MAX_DAYS, description=f"days back from {since}")


SNAPSHOT_TYPE = QueryParam("snapshot_type", str, None, choices=SNAPSHOT_TYPES)

ROUTES = (
    Route("store_profile", "/stores/{store}/customers/{customer}", "profile", Profile, "A customer's newest profile"),
    Route("store_drift", "/stores/{store}/customers/{customer}/drift", "drift", Drift, "A customer's drift over a window",
          (WINDOW, AS_OF)),
    Route("store_history", "/stores/{store}/customers/{customer}/history", "history", History, "A customer's snapshots",
          (_days(28), SNAPSHOT_TYPE)),
    Route("store_population", "/stores/{store}/population", "population", Population,
          "Segment shares and population drift over time", (_days(90, "the store's newest date"),), direct=False, thread_pool=True),
    Route("store_alerts", "/stores/{store}/alerts", "alerts", Alerts, "The store's mix alerts (population drift and outlier rates "
          "past their thresholds)", (_days(ALERT_WINDOW_DAYS, "the store's newest date"),),
          direct=False, thread_pool=True),
    Route("one_store_profile", "/customers/{customer}", "profile", Profile, "Profile (a warehouse of one store)"),
    Route("one_store_drift", "/customers/{customer}/drift", "drift", Drift, "Drift (a warehouse of one store)", (WINDOW, AS_OF)),
    Route("one_store_history", "/customers/{customer}/history", "history", History, "History (a warehouse of one store)",
          (_days(28), SNAPSHOT_TYPE)),
)
ID = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern="^[^\x00]+$")]  # PostgreSQL text holds no NUL


_QUERY_PARAMS = {q.name: q for route in ROUTES for q in route.query}  # a name means one parameter in every route
PATH_ID_ALLOWED = f"1 to {MAX_ID_LENGTH} characters, no NUL (a / in an id is sent as %2F)"


def invalid_request(errors: list[dict]) -> str:
    """FastAPI's validation errors as one sentence naming each parameter and what it takes (from the table)."""
    params = _QUERY_PARAMS
    parts = []
    for error in errors:
        loc = tuple(error.get("loc") or ())
        where, name = (loc[0], str(loc[1])) if len(loc) >= 2 else ("", "request")
        given = error.get("input")
        allowed = PATH_ID_ALLOWED if where == "path" else params[name].allowed() if name in params else error.get("msg", "invalid")
        parts.append(f"{name} must be {allowed}" + (f" (got {given!r})" if isinstance(given, str) and len(given) <= 40 else ""))
    return "; ".join(dict.fromkeys(parts)) + "."


def routing_path(scope) -> str:
    """The path routing matches: as received, but a %2F inside a segment stays inside it (ENCODED_SLASH)."""
    raw = scope.get("raw_path") or b""
    if b"%2F" not in raw and b"%2f" not in raw:  # the usual request: its path object as it is
        return scope["path"]
    return "/".join(unquote(s).replace("/", ENCODED_SLASH) for s in raw.split(b"?", 1)[0].decode("latin-1").split("/"))


def path_id(text: str) -> str:
    """An id from a path segment (routing_path's slashes back)."""
    return text.replace(ENCODED_SLASH, "/")


def link_id(text: str) -> str:
    """An id as a path segment of a link (a "/" and every other reserved character encoded)."""
    return quote(str(text), safe="")


def _endpoint(route: Route, grant: Grant, answer: Answer):
    """The FastAPI endpoint of a route: the key and store granted, then the route's answer."""

    async def endpoint(request: Request, **values):
        for name in route.path_names:
            values[name] = path_id(values[name])
        store = await grant(request_key(request.headers, request.query_params), values.pop("store", None))
        if route.thread_pool:
            return await run_in_threadpool(answer, store, **values)
        return await answer(store, **values)

    keyword = inspect.Parameter.KEYWORD_ONLY
    endpoint.__signature__ = inspect.Signature(
        [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
        + [inspect.Parameter(name, keyword, annotation=ID) for name in route.path_names]
        + [inspect.Parameter(q.name, keyword, default=q.default, annotation=q.annotation()) for q in route.query])
    endpoint.__name__ = route.name
    return endpoint


def add_routes(app: FastAPI, grant: Grant, answers: dict[str, Answer]) -> None:
    """Every route of the table on the FastAPI application; `answers[kind]` serves a route of that kind (a plain
    function for thread-pool routes)."""
    for route in ROUTES:
        app.add_api_route(route.path, _endpoint(route, grant, answers[route.kind]), methods=["GET"],
                          response_model=route.response, summary=route.summary)


# The direct path's view of the table: by number of path segments, (route, its path split at "/") of each direct route.
_DIRECT: dict[int, list[tuple[Route, list[str]]]] = {}
for _route in ROUTES:
    if _route.direct:
        _DIRECT.setdefault(len(_route.segments), []).append((_route, _route.segments))


def direct_route(path: str) -> tuple[Route, dict[str, str]] | None:
    """(route, path ids) of the direct route a path names, with ids of an allowed length; else None."""
    parts = path.split("/")
    for route, segments in _DIRECT.get(len(parts), ()):
        ids = {}
        for part, segment in zip(parts, segments):
            if segment.startswith("{"):
                if not 0 < len(part) <= MAX_ID_LENGTH or "\x00" in part:
                    break
                ids[segment[1:-1]] = path_id(part)
            elif part != segment:
                break
        else:
            return route, ids
    return None


def direct_values(route: Route, query: dict[str, str]) -> dict[str, Any] | None:
    """The route's query values when each is well-formed in its strict form, else None. Parameters a route does not
    declare are ignored, as by FastAPI."""
    values = {}
    for param in route.query:
        ok, values[param.name] = param.direct_value(query)
        if not ok:
            return None
    return values
