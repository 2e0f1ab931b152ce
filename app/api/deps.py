"""Dependencies: the runtime, and the authenticated principal for a scope."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from app.crypto import Scope
from app.errors import ServiceNotReadyError
from app.runtime import Runtime
from app.services.principal import Principal, authenticate

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer wjh_live_<id>_<secret>`")


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.ready:
        raise ServiceNotReadyError("the service is starting; retry shortly")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _principal_for(scope: Scope):  # type: ignore[no-untyped-def]
    async def dependency(runtime: RuntimeDep, credentials: Credentials) -> Principal:
        presented = credentials.credentials if credentials else None
        # Key lookup is a database read: keep it off the event loop.
        return await run_in_threadpool(authenticate, runtime, presented, scope)

    return dependency


EnrollerDep = Annotated[Principal, Depends(_principal_for(Scope.ENROLL))]
MatcherDep = Annotated[Principal, Depends(_principal_for(Scope.MATCH))]
WatchlistDep = Annotated[Principal, Depends(_principal_for(Scope.WATCHLIST))]
AdminDep = Annotated[Principal, Depends(_principal_for(Scope.ADMIN))]
