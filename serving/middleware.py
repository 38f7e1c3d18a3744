"""ASGI middleware: the Host allow-list, request ids, authentication before the body, the
body-size cap and error counting; the trace span of each request. Pure ASGI (not
`BaseHTTPMiddleware`) so streamed responses pass straight through."""

import re
import uuid

from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import StackError
from core.http import error_response
from core.logs import bind_request
from core.tracing import server_span
from serving.auth import Authenticator
from serving.metrics import GatewayMetrics

API_PREFIX = "/v1/"  # the routes that take API keys (the console has its own sessions)
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")  # a client's id is kept when it looks so
METRICS_MODEL = "metrics_model"  # the scope state key of a request's model label


class _BodyTooLarge(Exception):
    pass


class GatewayMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        metrics: GatewayMetrics,
        allowed_hosts: list[str],
        auth: Authenticator,
        admin_prefixes: tuple[str, ...] = (),
        keyed_paths: frozenset[str] = frozenset(),
        upload_limits: dict[str, int] | None = None,
    ):
        """Every API route's key is checked before its body is read, so that no anonymous
        body is parsed, validated or spooled to disk; on `admin_prefixes` only admin keys get
        further. `keyed_paths` (outside /v1) need a key as the API routes do. `upload_limits`
        replaces `max_body_bytes` on the paths its patterns match whole, for the callers
        those paths admit (the registry's: admin keys)."""
        self.app = app
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.max_body_bytes = max_body_bytes
        self.auth = auth
        self.admin_prefixes = admin_prefixes
        self.keyed_paths = keyed_paths
        self.upload_limits = [(re.compile(p), n) for p, n in (upload_limits or {}).items()]
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if not self._host_allowed(host):
            message = (
                f"the Host header {host[:100]!r} is not one this gateway answers to; add it "
                "to allowed_hosts in the serving config"
            )
            await error_response(400, message, code="invalid_host")(scope, receive, send)
            return
        given = headers.get(REQUEST_ID_HEADER.encode(), b"")
        request_id = given.decode() if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        bind_request(request_id)
        id_header = (REQUEST_ID_HEADER.encode(), request_id.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), id_header]
                status = message["status"]
                if status >= 400 and scope["path"].startswith(API_PREFIX):
                    # The resolved version, never the client's string (unbounded labels).
                    model = scope["state"].get(METRICS_MODEL, "invalid")
                    self.metrics.errors.labels(model, str(status)).inc()
            await send(message)

        path = scope["path"]
        if (path.startswith(API_PREFIX) and _routed(scope)) or path in self.keyed_paths:
            try:
                await self.auth.admit(Request(scope), admin=path.startswith(self.admin_prefixes))
            except StackError as err:
                response = error_response(
                    err.http_status,
                    err.message,
                    code=err.api_code,
                    param=err.param,
                    headers=err.headers,
                )
                await response(scope, receive, send_with_id)
                return
        limit = next(
            (n for pattern, n in self.upload_limits if pattern.fullmatch(path)),
            self.max_body_bytes,
        )
        length = headers.get(b"content-length", b"0")
        declared = int(length) if length.isdigit() else 0
        if declared > limit:
            await self._too_large(scope, receive, send_with_id, declared, limit)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted_receive, send_with_id)
        except _BodyTooLarge:
            if not started:
                await self._too_large(scope, receive, send_with_id, received, limit)

    def _host_allowed(self, host: str) -> bool:
        if "*" in self.allowed_hosts:
            return True
        # `name:port`, or `[v6 address]:port`
        name = host[1:].partition("]")[0] if host.startswith("[") else host.partition(":")[0]
        return name.lower() in self.allowed_hosts

    async def _too_large(
        self, scope: Scope, receive: Receive, send: Send, size: int, limit: int
    ) -> None:
        message = f"the request body is {size} bytes; the limit is {limit}"
        response = error_response(413, message, code="request_too_large")
        await response(scope, receive, send)


class TracingMiddleware:
    """A server span per HTTP request, the child of the caller's span when the request
    carries W3C `traceparent`, named by its route once one takes it."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        with server_span(method, scope["headers"]) as span:
            span.set_attribute("http.request.method", method)
            span.set_attribute("url.path", scope["path"])

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            finally:
                if (route := scope.get("route")) is not None:
                    span.update_name(f"{method} {route.path}")
                    span.set_attribute("http.route", route.path)
                if request_id := scope.get("state", {}).get("request_id"):
                    span.set_attribute("llmops.request_id", request_id)


def _routed(scope: Scope) -> bool:
    """Whether a route takes the request; one that none takes is answered 404 or 405 without
    its body being read, as without this middleware."""
    return any(route.matches(scope)[0] is Match.FULL for route in scope["app"].router.routes)
