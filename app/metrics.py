"""The service's Prometheus metrics (served at `GET /metrics`, admin scope).

Labels are bounded on purpose: route templates (`/v1/subjects/{subject_id}`), never paths;
methods and status codes; pipeline stage names. Never an org id, key id or subject id: a
label per tenant would grow without bound and tell a scraper who the customers are.

The histograms live in one registry of this module, so the services that time things
(matching, the audit write, the pipeline hook) need nothing passed down. `uvicorn` runs
one process per replica (`wajah serve` has no worker processes), so no multiprocess mode
is needed: each replica is scraped on its own.

Gauges that describe a runtime (index sizes, inference queue depth, in-flight requests) are
read when scraped (`app.api.metrics`), not kept up to date on every change.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

# Requests take from about a millisecond (a vector verify) to seconds (a bundle of large
# frames); the buckets cover both ends.
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

HTTP_SECONDS = Histogram(
    "wajah_http_request_duration_seconds",
    "Time from the request's arrival to the end of its response, by route template.",
    ("method", "route", "status"),
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "wajah_pipeline_stage_duration_seconds",
    "Face pipeline stages per frame (decode, detect, gate, embed per batch).",
    ("stage",),
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
SEARCH_SECONDS = Histogram(
    "wajah_index_search_duration_seconds",
    "One search of an org's vector index (1:N search and duplicate checks).",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
    registry=REGISTRY,
)
AUDIT_WRITE_SECONDS = Histogram(
    "wajah_audit_write_duration_seconds",
    "Appending one audit row (sealing its details, chaining its hash), in its transaction.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
    registry=REGISTRY,
)

# The request log (app.services.request_logs): rows the edge could not queue (the writer fell
# behind), and rows the writer could not store (the database refused the batch).
REQUEST_LOG_DROPPED = Counter(
    "wajah_request_log_dropped",
    "Request-log rows lost: the in-process queue was full, or the database refused a batch.",
    ("reason",),
    registry=REGISTRY,
)


def observe_stage(stage: str, seconds: float) -> None:
    """The face pipeline's timing hook (`FacePipeline.observe_stage`)."""
    STAGE_SECONDS.labels(stage).observe(seconds)
