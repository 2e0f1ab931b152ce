"""`GET /metrics`: Prometheus text format, for a key with the admin scope."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.api.contract import errors
from app.api.deps import AdminDep
from app.metrics import REGISTRY
from app.runtime import Runtime
from app.services.health import index_sizes
from app.services.principal import Principal

router = APIRouter(tags=["ops"])


class RuntimeCollector(Collector):
    """Gauges read from the runtime when scraped, not kept up to date on every change."""

    def __init__(self, runtime: Runtime, in_flight: Callable[[], int]) -> None:
        self.runtime = runtime
        self.in_flight = in_flight

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "wajah_http_requests_in_flight",
            "Requests received and not yet answered (this scrape included).",
            value=self.in_flight(),
        )
        yield GaugeMetricFamily(
            "wajah_inference_queue_depth",
            "Captures submitted to the inference pool and not finished (waiting or running).",
            value=self.runtime.inference.outstanding,
        )
        sizes = index_sizes(self.runtime)
        vectors = GaugeMetricFamily(
            "wajah_index_vectors", "Vectors held by this replica's indexes.", labels=("kind",)
        )
        vectors.add_metric(("org",), sizes.vectors)
        vectors.add_metric(("watchlist",), sizes.watchlist_vectors)
        yield vectors
        namespaces = GaugeMetricFamily(
            "wajah_index_namespaces", "Index namespaces held by this replica.", labels=("kind",)
        )
        namespaces.add_metric(("org",), sizes.orgs)
        namespaces.add_metric(("watchlist",), sizes.watchlists)
        yield namespaces


def _exposition(runtime: Runtime, _: Principal, in_flight: Callable[[], int]) -> bytes:
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(RuntimeCollector(runtime, in_flight))
    return generate_latest(REGISTRY) + generate_latest(scrape)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        **errors(),
        200: {
            "description": "The Prometheus text exposition format.",
            "content": {
                CONTENT_TYPE_LATEST: {
                    "schema": {"type": "string"},
                    "example": "wajah_http_requests_in_flight 1.0\n",
                }
            },
        },
    },
    summary="Prometheus metrics (admin scope)",
)
async def metrics(request: Request, caller: AdminDep) -> Response:
    """Request latency by method, route template and status, pipeline stage times, index
    and audit times, and gauges read at scrape. No org, key or subject label."""
    in_flight: Callable[[], int] = request.app.state.in_flight
    body = await caller.run(_exposition, in_flight)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
