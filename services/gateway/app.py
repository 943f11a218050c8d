"""The FastAPI application: wiring (database pool, gRPC channels, blob store)
owned by its lifespan, the routes, problem+json errors, body limits and metrics
(recorded here, served on the internal metrics port by `main.start`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI

from ourvidz import db as ourvidz_db
from ourvidz.auth import TokenVerifier
from ourvidz.grpcserver import channel
from ourvidz.storage import LocalStore, store_from_settings
from services.gateway import openapi, problems, throttle
from services.gateway.backends import Backends
from services.gateway.headers import SecurityHeadersMiddleware
from services.gateway.identity import Identity
from services.gateway.limits import BodyLimitMiddleware
from services.gateway.metrics import MetricsMiddleware
from services.gateway.natslink import NatsLink
from services.gateway.routes import (
    admin,
    admin_ops,
    auth,
    files,
    jobs,
    jwks,
    library,
    ops,
    playground,
    prompts,
    uploads,
    web,
    workspace,
)
from services.gateway.settings import GatewaySettings
from services.gateway.throttle import Throttle

log = logging.getLogger(__name__)

# How often each replica deletes the abuse-limit rows that limit no one.
PURGE_SECONDS = 300.0


@dataclass
class Gateway:
    """What the routes use, built once per app."""

    settings: GatewaySettings
    # Verifies access tokens with the public keys (AUTH_JWKS, AUTH_WORKER_JWKS).
    verifier: TokenVerifier
    database: ourvidz_db.Database
    identity: Identity
    backends: Backends
    local_store: LocalStore | None
    # Abuse limits: sign-in lock-outs, sign-up and job rates, open streams.
    throttle: Throttle
    # Set when shutdown begins: open event streams end so connections can drain.
    stopping: asyncio.Event
    # NATS, for the operators' queue and worker views (connects in the background).
    nats: NatsLink | None = None


def create_app(
    settings: GatewaySettings,
    *,
    database: ourvidz_db.Database | None = None,
    backends: Backends | None = None,
    local_store: LocalStore | None = None,
) -> FastAPI:
    """The gateway app. What is passed in is the caller's to open and close;
    what is not is built from `settings` by the app's lifespan (so run it under
    uvicorn, or enter `app.router.lifespan_context(app)` in tests)."""
    signer = settings.token_signer()
    verifier = settings.token_verifier()
    if not verifier.knows(signer.kid):
        raise ValueError(
            f"AUTH_JWKS does not hold the public key of AUTH_SIGNING_KEY (kid {signer.kid}): "
            "add it (python -m ourvidz.keys public KEY.pem) before signing with the key"
        )
    if local_store is None and settings.storage_backend == "local":
        store = store_from_settings(settings)
        assert isinstance(store, LocalStore)
        local_store = store

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        own_db = database is None
        own_backends = backends is None
        db_url = settings.service_database_url() if own_db else ""
        # Refuse to start on a login that row level security would not bind
        # when PostgreSQL answers now; else each new connection is checked as
        # the pool makes it.
        checked = own_db and await ourvidz_db.check_login_url(db_url)
        db = database or ourvidz_db.Database(
            db_url,
            max_size=settings.db_pool_size,
            name="gateway",
            timeout=settings.db_pool_timeout_seconds,
            check_connections=not checked,
        )
        bk = backends or Backends(
            channel(settings.jobs_addr),
            channel(settings.workspace_addr),
            settings.grpc_deadline_seconds,
            channel(settings.enhancer_addr),
        )
        if own_db:
            # Without waiting: the process serves /healthz (and /readyz says
            # "database down") while PostgreSQL is unreachable, and recovers with it.
            await db.pool.open(wait=False)
        nats_link = NatsLink(settings.nats_url)
        nats_link.start()
        app.state.gateway = Gateway(
            settings=settings,
            verifier=verifier,
            database=db,
            identity=Identity(settings, db, signer),
            backends=bk,
            local_store=local_store,
            throttle=Throttle(settings, db),
            stopping=asyncio.Event(),
            nats=nats_link,
        )
        purger = asyncio.create_task(
            app.state.gateway.throttle.purge_every(PURGE_SECONDS, app.state.gateway.stopping)
        )
        try:
            yield
        finally:
            purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purger
            await nats_link.close()
            if own_backends:
                await bk.close()
            if own_db:
                await db.close()

    app = FastAPI(
        title="ourvidz",
        version="1.0.0",
        description="Prompts into images and videos. Errors are application/problem+json.",
        lifespan=lifespan,
    )
    problems.install(app)
    throttle.install(app)
    for module in (
        auth,
        jobs,
        prompts,
        playground,
        admin,
        admin_ops,
        uploads,
        workspace,
        library,
        ops,
        jwks,
    ):
        app.include_router(module.router)
    if local_store is not None:
        app.include_router(files.router)
    web.mount(app)
    openapi.install(app, settings.limits())
    # Added last = outermost: metrics see every answer, limits run before parsing,
    # and every answer (a 413 from the limits too) carries the security headers.
    app.add_middleware(
        BodyLimitMiddleware,
        json_limit=settings.gateway_max_json_bytes,
        upload_limit=settings.gateway_max_upload_bytes,
        upload_overhead=settings.gateway_multipart_overhead_bytes,
    )
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)
    return app
