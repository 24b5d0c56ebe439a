"""The read API's three hot reads answered without FastAPI's request machinery.

A GET of a customer's profile, stored drift or history (scoped `/stores/{store}/customers/{id}...` or the
one-store paths) is matched here against the routing table (routes.py, the `direct` routes), and its few query
parameters are checked against the same declarations the FastAPI routes are built from. Routing, dependency and parameter solving took a third of such a
request's CPU in-process, more than the reads themselves.

Only a request that is well-formed and granted is answered here. Anything else goes on to the FastAPI
routes, which answer it exactly as documented: another path or method, a malformed, repeated or unknown
parameter value, a past date (`as_of`, computed in the thread pool), and every error (401, 403, 404), which
the route then raises itself (so a request ending in an error is read twice: errors are rare and cheap). What a
direct answer raises unexpectedly (a dropped database connection) is logged and the route reads again: its answer, or
its 500, is the request's. The routes also remain what `/docs` and the OpenAPI schema describe.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import Response

from quimbi_pipeline.api.access import request_key
from quimbi_pipeline.api.log_text import loggable, one_line
from quimbi_pipeline.api.routes import (
    Answer,
    Grant,
    direct_route,
    direct_values,
    routing_path,
)

log = logging.getLogger("quimbi_pipeline.api")


class DirectRoutes:
    """ASGI middleware: answers a well-formed, granted GET of a direct route with `answers[route.kind]`, else passes
    it on."""

    def __init__(self, app, *, grant: Grant, answers: dict[str, Answer]):
        self.app, self.grant, self.answers = app, grant, answers

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = routing_path(scope)
            if path is not scope["path"]:  # an id's encoded "/" stays inside its segment, for this and the routes behind
                scope = {**scope, "path": path}
        response = await self.answer(scope) if scope["type"] == "http" and scope["method"] == "GET" else None
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)

    async def answer(self, scope) -> Response | None:
        if scope.get("root_path"):  # mounted under a prefix: the router strips it, so let it
            return None
        found = direct_route(scope["path"])
        if found is None:
            return None
        route, ids = found
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        query = dict(pairs)
        values = direct_values(route, query) if len(query) == len(pairs) else None  # repeated: FastAPI's rules decide
        if values is None:
            return None
        try:
            granted = await self.grant(request_key(Headers(scope=scope), query), ids.pop("store", None))
            return await self.answers[route.kind](granted, **ids, **values)
        except HTTPException:
            return None  # the route raises it again and answers it as documented
        except Exception as exc:  # outside FastAPI's error handling: the route reads again, and answers 500 if it fails too
            log.warning("GET %s: the direct answer failed (%s); the route answers", loggable(scope["path"]), one_line(exc))
            return None
