"""`parley serve`: an OpenAI-compatible API and a web chat page over one model, for many users at once.

    parley serve --model smollm2                      # http://127.0.0.1:8000/ (page), /v1 (API), /docs

The port is taken before the model loads (a busy one is a one-line error at once); once the server
answers, one line says where the page and the API are.
    parley serve --model runs/x/final --host 0.0.0.0 --api-key "$KEY"
    parley serve --model openai:NAME --base-url http://gpu-box:8000/v1   # proxy a remote service

Routes: POST /v1/chat/completions, /v1/completions; GET /v1/models, /v1/models/{id} (openai_api.py);
POST /v1/embeddings (embeddings_api.py); POST /v1/responses (responses_api.py); POST /v1/explain
(explain_api.py: attribution, queued beside decoding); the stored
conversations under /v1/conversations (conversations_api.py); GET /health, /metrics (Prometheus),
/docs (OpenAPI); the page at / with its files under /static (web/).

`create_app(options, engine=None)` builds the app; the engine is opened in the lifespan
(`backend.open`: a local model or a remote service, which this module never tells apart), or
`engine` is used as is (tests, embedding). Generation goes through the engine's continuous-batching
driver (parley/batching.py). Protection: a Host allow-list (below), optional API keys (Bearer;
compared in constant time; never logged), a request body size limit, a bounded queue (429 +
Retry-After), validation errors as OpenAI-style 400s (api_errors.py), a Content-Security-Policy on the
page (PAGE_CSP). On SIGINT/SIGTERM the server stops taking requests, lets running generations finish
for `grace_s`, then ends the rest with finish_reason "length".

Host allow-list (against DNS rebinding: a web page whose own name has been pointed at this machine
reaches the server from the user's browser, but still sends its own name as Host): a loopback --host
(the default) answers to localhost, 127.0.0.1 and [::1]; a named or numbered --host to that name;
0.0.0.0 or :: to any IP address and localhost (a page cannot rebind an address, only a name).
`--allowed-host NAME` (repeatable; `*` for any) adds names, as Django's ALLOWED_HOSTS does. Any
port is accepted. Other Hosts get a 400 that says what to add.

CORS: `--cors-origin ORIGIN` (repeatable; `*` for any; off by default) lets a web app on that origin
call the API from a browser. Starlette's CORSMiddleware runs outside the API-key and Host checks, so
a preflight (OPTIONS) is answered before authentication (a browser never sends keys on one) and every
answer to those origins, errors and event streams included, carries the allow headers; other origins
get none, so their pages cannot read the answers. Credentials (cookies) are not allowed: keys travel
as Bearer headers.

Limits: one model per server; API keys are all-or-nothing (no per-key quotas or scopes).
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import logging
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from parley.errors import ConfigError
from parley.serve import api_errors, conversations_api, embeddings_api, explain_api, openai_api, openapi, responses_api
from parley.serve.api_errors import ApiError
from parley.serve.metrics import Metrics, MetricsMiddleware

if TYPE_CHECKING:
    from parley.engine import Engine

WEB = Path(__file__).parent / "web"
# The page's Content-Security-Policy: its own scripts, styles and API only. Messages are sanitized
# (web/app.js); this is the second line if markup gets through: no inline script or style, no image,
# frame or request to another site, no form posting elsewhere, no framing of the page itself.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
log = logging.getLogger("parley.serve")


@dataclass
class ServeOptions:
    """Everything `parley serve` can be told; defaults are safe for a laptop."""

    model: str = "smollm2"  # a spec for backend.open (smollm2, a directory, a hub id, openai:NAME)
    base_url: str | None = None  # the remote service for openai:NAME specs
    device: str = "auto"  # auto, cpu or cuda
    dtype: str = "auto"  # auto, float32, bfloat16 or float16
    compile: bool | None = None  # compile decoding in the background (compiled.py); None: compiled.wanted()
    # Math threads for the model; None: one fewer than the CPUs (at least 1). The event loop, the HTTP
    # writes and the clients need a core too: on 2 cores, 2 threads gave one streaming client 26.7 tok/s
    # and 8 clients 128, 1 thread 51.8 and 181 (bench/serve.py), since the threads of a matmul wait for
    # each other whenever one is preempted.
    threads: int | None = None
    host: str = "127.0.0.1"  # 0.0.0.0 exposes the server to the network: an explicit choice
    port: int = 8000
    served_name: str | None = None  # the model id clients send and /v1/models lists; default: the spec
    api_keys: list[str] = field(default_factory=list)  # empty = no authentication
    allowed_hosts: list[str] = field(default_factory=list)  # Host names answered besides --host's own; * = any
    max_batch: int = 8  # sequences decoded together
    max_queue: int = 64  # sequences allowed to wait for a batch slot before 429
    max_tokens: int = 1024  # the most tokens one reply may ask for (larger requests are capped)
    explain_budget: int = 2_000_000  # the most token-passes one POST /v1/explain may cost (explain_api.cost)
    max_body_bytes: int = 2 * 1024 * 1024  # larger request bodies get 413
    grace_s: float = 30.0  # on shutdown, how long running generations may go on
    db: Path | None = None  # conversation database; default $PARLEY_HOME/parley.db
    cors_origins: list[str] = field(default_factory=list)  # browser origins allowed to call the API; empty = none

    def check(self) -> ServeOptions:
        for key in ("max_batch", "max_queue", "max_tokens", "max_body_bytes", "explain_budget", "threads"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be at least 1")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port {self.port} is not a TCP port (1-65535)")
        if any(not k for k in self.api_keys):
            raise ConfigError("--api-key must not be empty")
        for origin in self.cors_origins:  # browsers send scheme://host[:port], never a path or a trailing /
            parts = urlsplit(origin)
            if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc or parts.path
                                  or parts.query or parts.fragment):
                raise ConfigError(f"--cors-origin {origin!r} is not an origin: give scheme://host[:port], "
                                  "e.g. https://app.example.com (no path, no trailing /), or *")
        return self


def api_keys_from_env() -> list[str]:
    """PARLEY_API_KEYS: comma-separated keys."""
    return [k.strip() for k in os.environ.get("PARLEY_API_KEYS", "").split(",") if k.strip()]


def create_app(options: ServeOptions, engine: Engine | None = None) -> FastAPI:
    """The ASGI app. `engine` (an open Engine) skips opening `options.model` in the lifespan."""
    options.check()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from parley import backend
        from parley.store import Store

        app.state.engine = engine or await run_in_threadpool(
            backend.open, options.model, options.device, options.dtype, options.base_url, options.compile)
        app.state.driver = app.state.engine.driver(options.max_batch, options.max_queue)
        app.state.store = await run_in_threadpool(Store, options.db)
        app.state.served_name = options.served_name or app.state.engine.spec
        app.state.metrics.watch(app.state.driver)
        log.info("serving %s (context %d tokens)", app.state.served_name, app.state.engine.context_window)
        try:
            yield
        finally:
            await run_in_threadpool(app.state.driver.close, 0.0)
            app.state.store.close()

    app = FastAPI(
        title="Parley", version="0.1.0", lifespan=lifespan,
        description="An OpenAI-compatible API over your own assistant, and a web chat page at /.",
    )
    app.state.options = options
    app.state.metrics = Metrics()
    api_errors.install(app)
    app.include_router(openai_api.router)
    app.include_router(embeddings_api.router)
    app.include_router(responses_api.router)
    app.include_router(conversations_api.router)
    app.include_router(explain_api.router)
    openapi.document(app)  # the real status codes, bodies and event streams
    app.mount("/static", StaticFiles(directory=WEB), name="static")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_CSP})

    @app.get("/health", tags=["server"])
    async def health(request: Request):
        driver = getattr(request.app.state, "driver", None)
        engine = getattr(request.app.state, "engine", None)
        return {"status": "ok", "model": getattr(request.app.state, "served_name", None),
                "waiting": driver.waiting if driver else 0, "active": driver.active if driver else 0,
                "compiling": bool(engine and engine.compiling)}

    @app.get("/metrics", tags=["server"], response_class=PlainTextResponse)
    async def metrics(request: Request):
        return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")

    app.add_middleware(BodyLimitMiddleware, limit=options.max_body_bytes)
    app.add_middleware(AuthMiddleware, keys=options.api_keys)
    app.add_middleware(HostCheckMiddleware, bind=options.host, extra=options.allowed_hosts)
    if options.cors_origins:  # added after (so outside) the key and Host checks: see the module docstring
        app.add_middleware(CORSMiddleware, allow_origins=options.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["Retry-After"], max_age=600)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


class HostCheckMiddleware:
    """400 for a Host header that `bind` and `extra` do not allow: see the module docstring.

    Not Starlette's TrustedHostMiddleware: its refusal is a bare "Invalid host header" that names
    neither the allowed hosts nor the fix, and it cannot accept every IP address for 0.0.0.0."""

    LOOPBACK = ("localhost", "127.0.0.1", "::1")

    def __init__(self, app, bind: str, extra: list[str]):
        self.app = app
        self.any_ip = bind in ("0.0.0.0", "::", "")  # every interface: any address of this machine
        loopback = bind.lower() in self.LOOPBACK or _is_loopback(bind)
        names = ["localhost"] if self.any_ip else list(self.LOOPBACK) if loopback else [bind]
        self.allowed = dict.fromkeys(h.lower().strip("[]") for h in names + extra)  # a set, in order
        self.described = ", ".join(["any IP address"] * self.any_ip + list(self.allowed))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or "*" in self.allowed:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        try:
            host = urlsplit(f"//{header}").hostname or ""  # lowercased, port and IPv6 brackets removed
        except ValueError:  # e.g. an unclosed '['
            host = ""
        if host in self.allowed or (self.any_ip and _is_ip(host)):
            return await self.app(scope, receive, send)
        error = ApiError(400, f"this server does not answer to Host {header!r}; it answers to {self.described}: "
                              f"if that is this server's name, start it with --allowed-host {host or 'NAME'}",
                         code="host_not_allowed")
        await error.response()(scope, receive, send)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    return _is_ip(host) and ipaddress.ip_address(host).is_loopback


class AuthMiddleware:
    """Bearer API keys on /v1/* and /metrics when keys are configured; the page and /health stay open."""

    def __init__(self, app, keys: list[str]):
        self.app, self.keys = app, [k.encode() for k in keys]

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] == "http" and self.keys and (path.startswith("/v1/") or path == "/metrics"):
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, given = header.partition(b" ")
            if not self._valid(given.strip() if scheme.lower() == b"bearer" else b""):
                error = ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                 code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                return await error.response()(scope, receive, send)
        await self.app(scope, receive, send)

    def _valid(self, given: bytes) -> bool:
        ok = False
        for key in self.keys:  # every key is compared, so timing says nothing about which matched
            ok |= hmac.compare_digest(given, key)
        return ok


class BodyLimitMiddleware:
    """413 for request bodies over `limit` bytes, whether or not they declare a Content-Length."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        too_big = ApiError(413, f"the request body is over the server's limit of {self.limit} bytes",
                           code="body_too_large")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await too_big.response()(scope, receive, send)
        chunks, size = [], 0
        while True:  # read it all here (bounded), then replay it to the app
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self.limit:
                return await too_big.response()(scope, receive, send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: disconnect notices, as usual

        await self.app(scope, replay, send)


def run(options: ServeOptions) -> None:
    """Serve until SIGINT/SIGTERM, then drain: see the module docstring."""
    import uvicorn

    from parley import backend

    import torch

    # The port first: a busy one is a one-line error in a moment, not after seconds of loading.
    sock = listening_socket(options.host, options.port)
    torch.set_num_threads(options.threads or max(1, (os.cpu_count() or 2) - 1))
    # Opened here, not in the lifespan, so a bad --model is one line from the CLI, not a traceback.
    try:
        engine = backend.open(options.model, options.device, options.dtype, options.base_url, options.compile)
    except BaseException:
        sock.close()
        raise
    app = create_app(options, engine)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            driver = getattr(app.state, "driver", None)
            if driver is not None:
                driver.drain(options.grace_s)
            super().handle_exit(sig, frame)

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                print(ready_message(options), flush=True)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    if options.host not in ("127.0.0.1", "localhost", "::1") and not options.api_keys:
        log.warning("listening on %s without an API key: anyone who can reach this port can use the model "
                    "and read the stored conversations (add --api-key)", options.host)
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="info",
                            timeout_graceful_shutdown=int(options.grace_s) + 5)
    DrainingServer(config).run(sockets=[sock])


def listening_socket(host: str, port: int):
    """A socket bound to host:port (uvicorn listens on it), or a ConfigError that says what to do."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as e:
        raise ConfigError(f"--host {host}: not an address or a known name ({e.strerror})") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart need not wait
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        busy = "another program is listening there: stop it, or choose another --port" \
            if e.errno == errno.EADDRINUSE else e.strerror
        raise ConfigError(f"cannot listen on {host}:{port}: {busy}") from None
    return sock


def ready_message(options: ServeOptions) -> str:
    """Where to point a browser and an OpenAI client, once the server answers."""
    shown = "127.0.0.1" if options.host in ("0.0.0.0", "::") else options.host
    base = f"http://{f'[{shown}]' if ':' in shown else shown}:{options.port}"
    everywhere = " (and this machine's other addresses)" if shown != options.host else ""
    return (f"ready: chat page {base}/{everywhere} · OpenAI-compatible API {base}/v1 · API docs {base}/docs"
            + ("" if not options.api_keys else " · clients send Authorization: Bearer KEY"))
