"""Dependencies: the runtime, and the caller whose API key a route's work authenticates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Concatenate, ParamSpec, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from app.api.admission import Admission
from app.crypto import Scope
from app.errors import ServiceNotReadyError, UnauthorizedError
from app.runtime import Runtime
from app.services.principal import Principal, authenticate, authenticate_cached
from app.services.residency import require_served

P = ParamSpec("P")
T = TypeVar("T")

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer wjh_live_<id>_<secret>`")


# Async, though it blocks on nothing: FastAPI runs a plain `def` dependency on a worker thread.
async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.ready:
        raise ServiceNotReadyError("the service is starting; retry shortly")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


@dataclass(frozen=True)
class Caller:
    """The API key a request presents, checked on the worker thread that runs its work.

    The key lookup is a database read, so it cannot run on the event loop; running it on the
    same worker thread as the route's own reads and writes makes one thread hop per request
    instead of two (each hop costs a few tenths of a millisecond at one client).
    """

    runtime: Runtime
    presented: str
    scope: Scope
    admission: Admission | None = None
    # The request's ASGI state: the principal is noted there for the access log.
    notes: dict[str, Any] = field(default_factory=dict)

    def authenticate(self) -> Principal:
        """The org and key behind the presented key (401/403 otherwise), charged to its rate
        limit (429). Blocks: call it on a worker thread."""
        return self._admitted(authenticate(self.runtime, self.presented, self.scope), True)

    def _admitted(
        self, principal: Principal, blocking: bool, settings: dict[str, Any] | None = None
    ) -> Principal:
        self.notes["principal"] = principal
        if self.admission is not None:
            self.admission.admit(self.runtime, principal, blocking=blocking)
        # An org this deployment's region may not hold is refused before anything is read
        # or written for it (403 `residency_mismatch`); not even its request log is written.
        self.notes["residency_refused"] = True
        require_served(self.runtime, principal.org_id, settings)
        del self.notes["residency_refused"]
        return principal

    def cached_principal(self) -> Principal | None:
        """The caller from this replica's caches alone, on the event loop, charged to its rate
        limit; None, charging nothing, when that takes the database (then `run` or
        `principal`): the key is not cached, or its org's settings (its own limit) are not."""
        principal = authenticate_cached(self.runtime, self.presented, self.scope)
        settings = None if principal is None else self.runtime.org_settings.get(principal.org_id)
        if principal is None or settings is None:
            return None
        return self._admitted(principal, False, settings)

    async def run(
        self,
        work: Callable[Concatenate[Runtime, Principal, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """`work(runtime, principal, *args, **kwargs)` on a worker thread, after the key."""

        def call() -> T:
            return work(self.runtime, self.authenticate(), *args, **kwargs)

        return await run_in_threadpool(call)

    async def principal(self) -> Principal:
        """Authenticate alone, for a route that must know the caller before it reads its
        body (an upload)."""
        return await run_in_threadpool(self.authenticate)


def _caller_for(scope: Scope):  # type: ignore[no-untyped-def]
    async def dependency(request: Request, runtime: RuntimeDep, credentials: Credentials) -> Caller:
        if credentials is None or not credentials.credentials:
            raise UnauthorizedError("missing API key: send `Authorization: Bearer <key>`")
        caller = Caller(
            runtime,
            credentials.credentials,
            scope,
            getattr(request.app.state, "admission", None),
            request.scope.setdefault("state", {}),
        )
        # For the 422 handler: a body is judged only after its key (see `app.api.errors`).
        request.state.caller = caller
        return caller

    return dependency


EnrollerDep = Annotated[Caller, Depends(_caller_for(Scope.ENROLL))]
MatcherDep = Annotated[Caller, Depends(_caller_for(Scope.MATCH))]
WatchlistDep = Annotated[Caller, Depends(_caller_for(Scope.WATCHLIST))]
AdminDep = Annotated[Caller, Depends(_caller_for(Scope.ADMIN))]
