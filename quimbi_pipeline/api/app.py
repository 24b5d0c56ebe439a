"""The read API (FastAPI): profiles, drift, history and a store's population drift, per store, read-only.

`create_app(url)` builds the application over one warehouse; `quimbi serve` runs it with uvicorn. Paths
are scoped by store (`/stores/{store}/customers/{id}...`); the plan's unscoped paths (`/customers/{id}...`)
answer when the warehouse holds exactly one store. Errors are JSON `{"detail": ...}`: 401 without a valid
key, 403 for a store the key does not grant (checked before the store is looked up, so a key learns
nothing of other stores), 404 for an unknown store or customer or no drift, 422 for a bad window, days,
date or snapshot type. The log has one line per request: method, path without its query, status, time.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from datetime import date

import psycopg
import sqlalchemy as sa
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from quimbi_pipeline.api import reads
from quimbi_pipeline.api.access import Access, request_key
from quimbi_pipeline.api.direct_routes import DirectRoutes
from quimbi_pipeline.api.log_text import loggable, one_line
from quimbi_pipeline.api.models import (
    Alerts,
    Drift,
    Health,
    History,
    Population,
    Profile,
)
from quimbi_pipeline.api.pages import add_pages
from quimbi_pipeline.api.routes import (
    ID,
    add_routes,
    invalid_request,
    path_id,
)
from quimbi_pipeline.settings import StoreSettings
from quimbi_pipeline.settings.deployment import value
from quimbi_pipeline.storage import (
    NeedsMigration,
    Warehouse,
    existing_only,
    pending_migration,
    resolve_warehouse_url,
)

log = logging.getLogger("quimbi_pipeline.api")
SWAGGER = "/ui/static/swagger"  # the vendored Swagger UI (pages.py mounts /ui/static)
DATABASE_ERRORS = (sa.exc.DBAPIError, sqlite3.Error, psycopg.Error)


class StoreCache:
    """The warehouse's stores, read again at most every TTL_SECONDS (a new store shows within that time)."""

    TTL_SECONDS = 30.0

    def __init__(self, warehouse: Warehouse):
        self.warehouse, self.stores, self.read_at = warehouse, [], -float("inf")

    def all(self) -> list[str]:
        if time.monotonic() - self.read_at > self.TTL_SECONDS:
            self.stores, self.read_at = reads.stores(self.warehouse), time.monotonic()
        return self.stores

    def has(self, store: str) -> bool:
        if store in self.all():
            return True
        # Not in the list: one probe for that store (a store written since shows at once, and a request for an unknown
        # store costs an index lookup, not a re-read of the list).
        if not reads.has_store(self.warehouse, store):
            return False
        self.read_at = -float("inf")
        return True


def typed(model: type[BaseModel], value: dict) -> Response:
    """The value validated by its response model and written by pydantic's JSON serializer. FastAPI's own path for
    a returned dict validates, converts to Python again and encodes with the json module: about twice the CPU."""
    return Response(model.model_validate(value).model_dump_json(by_alias=True), media_type="application/json")


class HostCheck:
    """Without API keys the server answers its own names only: a page on another site that resolves its name to this
    machine (DNS rebinding) sends that name as Host and gets 421."""

    def __init__(self, app, hosts: frozenset[str]):
        self.app, self.hosts = app, hosts
        self.seen: dict[bytes, bool] = {}  # a Host header's raw value -> allowed (a client sends the same one each time)

    def allowed(self, scope) -> bool:
        raw = next((value for name, value in scope["headers"] if name == b"host"), b"")
        found = self.seen.get(raw)
        if found is None:
            found = host_name(raw.decode("latin-1")) in self.hosts
            if len(self.seen) < 1024:  # bounded: a client sending a new Host each time costs a parse, not memory
                self.seen[raw] = found
        return found

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not self.allowed(scope):
            await JSONResponse({"detail": "unknown Host: this server answers its own addresses only (quimbi serve --allow-host)"},
                               status_code=421)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def host_name(host: str) -> str:
    """A Host header without its port, lower-case ("[::1]:8000" -> "::1")."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class AccessLog:
    """One log line per request: method, path without its query (keys never reach the log), status, time. A plain
    ASGI middleware: Starlette's BaseHTTPMiddleware (@app.middleware) costs a task group and a stream per request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception as exc:  # already answered 500 by the application: one line here, not a traceback per request
            log.error("%s %s failed: %s", scope["method"], loggable(scope["path"]), one_line(exc))
        finally:
            log.info("%s %s %d %.1f ms", scope["method"], loggable(scope["path"]), status, (time.perf_counter() - started) * 1e3)


class ReadApi:
    """What `quimbi serve` runs: the access log around the direct routes around the FastAPI application (`api`). Both
    sit outside FastAPI's own middleware (its error page, telemetry and body-limit layers, and Starlette's dispatch),
    which a hot read answered directly does not need: about 4% more of the API mix's requests per second in a closed
    loop (benchmarks/api.py, two series of three alternating rounds: 2,637-2,931 against 2,628-2,745 req/s).
    Everything else, including every error and what a direct answer raises unexpectedly, is the FastAPI application's."""

    def __init__(self, api: FastAPI, hosts: frozenset[str] | None = None, **direct_routes):
        self.api, self.state = api, api.state
        inner = DirectRoutes(api, **direct_routes)
        self.asgi = AccessLog(inner if hosts is None else HostCheck(inner, hosts))

    async def __call__(self, scope, receive, send):  # async: servers and test clients tell ASGI 3 apps by it
        await self.asgi(scope, receive, send)


def create_app(warehouse_url: str | None = None, access: Access | None = None, hosts: frozenset[str] | None = None) -> ReadApi:
    """The profile, drift and history endpoints are `async` and read on the event loop: each is a few indexed rows,
    well under a millisecond, and the thread-pool hop a sync endpoint takes cost more CPU than the read (server CPU
    per profile request 0.76 -> 0.45 ms, benchmarks/api.py). Pages, the population series and past-date drift run in
    the thread pool. `quimbi serve --workers N` runs N such loops. `hosts`: the Host names an open server (no keys)
    answers (quimbi serve's addresses); None: no check (a server behind keys, tests, an embedding application)."""
    warehouse = Warehouse(existing_only(resolve_warehouse_url(warehouse_url)), create=False)
    with warehouse.engine.connect() as conn:
        reason = pending_migration(conn)
    if reason:
        warehouse.dispose()
        raise NeedsMigration(reason)
    # Autocommit: a read needs no transaction, and on PostgreSQL each one cost two round trips of its own (BEGIN, and the
    # ROLLBACK when the connection went back to the pool): 16% of the worker's time under the API mix (py-spy). Each
    # statement sees the warehouse as of its start; a store's date is written in one transaction either way.
    warehouse.engine = warehouse.engine.execution_options(isolation_level="AUTOCOMMIT")
    access = access or Access.from_env()
    settings = StoreSettings()  # read once: the flags the pipeline runs with (environment, flags file)
    known_stores = StoreCache(warehouse)
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        warehouse.hold_reader()  # the event loop's reads (one request at a time) through one connection of its own
        yield
        warehouse.dispose()

    app = FastAPI(title="quimbi_pipeline read API", version="1", description=__doc__.split("\n\n")[1], lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.warehouse = warehouse

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:  # Swagger UI from the app's own files (api/static/swagger): no CDN, works offline
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - docs", swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{SWAGGER}/swagger-ui.css", swagger_favicon_url=f"{SWAGGER}/favicon-32x32.png")

    # The key and store check is async (no I/O but a 30-second store cache): a sync one costs a thread-pool hop per
    # request. The table's endpoints (routes.py) call it themselves rather than through Depends: FastAPI's
    # solving of a dependency's own parameters was a tenth of a profile request's CPU. So there a malformed query
    # answers 422 before the key is checked; a store is looked up only after the key grants it, as before.
    async def grant(key: str | None, store: str | None) -> str:
        """The store a key may read: `store`, or on a one-store path (None) the warehouse's only store."""
        one_store = store is None
        if store is None:
            stores = known_stores.all()
            if len(stores) != 1:
                raise HTTPException(404, f"the warehouse holds {len(stores)} stores: use /stores/{{store}}/customers/{{id}}")
            store = stores[0]
        if access.stores_of(key) is None:
            raise HTTPException(401, "a valid API key is required (X-API-Key, Authorization: Bearer, or ?api_key=)")
        if not access.grants(key, store):  # on a one-store path the key did not name the store: do not name it either
            raise HTTPException(403, "this API key does not grant this warehouse's store" if one_store else
                                f"this API key does not grant store {store!r}")
        if not known_stores.has(store):
            raise HTTPException(404, f"unknown store {store!r}")
        return store

    async def allowed(request: Request, store: ID) -> str:
        return await grant(request_key(request.headers, request.query_params), path_id(store))

    def profile(store: str, customer: str) -> dict:
        found = reads.profile(warehouse, store, customer)
        if found is None:
            raise HTTPException(404, f"unknown customer {customer!r} in store {store!r}")
        return found

    def drift(store: str, customer: str, window: str, as_of: date | None) -> dict:
        if not reads.drift_is_on(settings, store):
            raise HTTPException(404, f"drift analysis is off for store {store!r} (ENABLE_DRIFT_ANALYSIS)")
        found = reads.drift(warehouse, settings, store, customer, window, as_of)
        if found is None:
            profile(store, customer)  # an unknown customer says so
            raise HTTPException(404, "Insufficient data for drift analysis")
        return found

    async def drift_read(store: str, customer: str, window: str, as_of: date | None) -> dict:
        # A past date is computed from the snapshots (tens of milliseconds and more): in the thread pool, so it never
        # holds up the worker's other requests. The stored state is a few indexed rows: read on the event loop.
        if as_of is not None:
            return await run_in_threadpool(drift, store, customer, window, as_of)
        return drift(store, customer, window, as_of)

    def history(store: str, customer: str, days: int, snapshot_type: str | None) -> dict:
        snapshots = reads.history(warehouse, store, customer, days, snapshot_type)
        if not snapshots:
            profile(store, customer)
            if not reads.snapshots_are_on(settings, store):
                raise HTTPException(404, f"snapshots are off for store {store!r} (ENABLE_TEMPORAL_SNAPSHOTS)")
        return {"customer_id": customer, "snapshots": snapshots}

    async def profile_answer(store: str, customer: str) -> Response:
        return typed(Profile, profile(store, customer))

    async def drift_answer(store: str, customer: str, window: str, as_of: date | None = None) -> Response:
        return typed(Drift, await drift_read(store, customer, window, as_of))

    async def history_answer(store: str, customer: str, days: int, snapshot_type: str | None) -> Response:
        return typed(History, history(store, customer, days, snapshot_type))

    def population_answer(store: str, days: int) -> Response:
        return typed(Population, {"store_id": store, "series": reads.population(warehouse, store, days)})

    def alerts_answer(store: str, days: int) -> Response:
        return typed(Alerts, {"store_id": store, "alerts": reads.alerts(warehouse, settings, store, days)})

    add_pages(app, warehouse, settings, allowed)

    @app.get("/health", response_model=Health, summary="Liveness (no key needed)")
    def health() -> dict:
        return {"status": "ok", "stores": len(known_stores.all())}

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        # The warehouse cannot be read (down, moved away, emptied): 503 with the reason in one line, logged once.
        log.error("%s %s: the warehouse cannot be read: %s", request.method, loggable(request.url.path), one_line(exc))
        return JSONResponse({"detail": f"the warehouse cannot be read: {one_line(exc)}"}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # One sentence an analyst reads once, not pydantic's error list (its regex patterns and ctx).
        return JSONResponse({"detail": invalid_request(list(exc.errors()))}, status_code=422)

    for database_error in DATABASE_ERRORS:  # SQLAlchemy's, and the drivers' own (the hot reads use the driver directly)
        app.add_exception_handler(database_error, unavailable)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "internal error (logged on the server)"}, status_code=500)

    answers = {"profile": profile_answer, "drift": drift_answer, "history": history_answer, "population": population_answer, "alerts": alerts_answer}
    add_routes(app, grant, answers)
    return ReadApi(app, hosts if access.open else None, grant=grant, answers=answers)


LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def served_hosts(listen_host: str | None = None, environ=None, extra=()) -> frozenset[str]:
    """The Host names an open server answers: the local names, the address it listens on, QUIMBI_API_ALLOWED_HOSTS
    (comma-separated) and `extra` (quimbi serve --allow-host)."""
    names = [*(value("QUIMBI_API_ALLOWED_HOSTS", environ) or "").split(","), *extra, listen_host or ""]
    return LOCAL_HOSTS | {h.strip().lower() for h in names if h.strip()}


def app_from_env() -> ReadApi:
    """The app of QUIMBI_WAREHOUSE_URL, QUIMBI_API_KEYS and QUIMBI_API_ALLOWED_HOSTS, for uvicorn's worker processes
    (`quimbi serve --workers N` puts its addresses in the latter)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    return create_app(hosts=served_hosts())
