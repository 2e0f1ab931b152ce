"""Log lines: one JSON object per line (default) or plain text (`WAJAH_LOG_FORMAT`).

A JSON line always has `time` (UTC, ISO 8601 with milliseconds), `level`, `logger` and
`message`; an access line (`app.api.edge`) adds `request_id`, `method`, `route`, `path`,
`status`, `latency_ms`, `org_id` and `key_id`. Whatever a caller passes in `extra=` under
`ACCESS_FIELDS` is copied; nothing else of a record is, so a stray attribute cannot leak.
Nothing here ever formats a request body, a header or a key: the access log is built from
the route template and ids, and subject ids in paths are pseudonymised before they get here.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

ACCESS_FIELDS = (
    "request_id",
    "method",
    "route",
    "path",
    "status",
    "latency_ms",
    "org_id",
    "key_id",
    "client",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in ACCESS_FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"), default=str)


PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(fmt: Literal["json", "plain"], level: int = logging.INFO) -> None:
    """Send every logger (the service's and uvicorn's) to stderr in one format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(PLAIN))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # Our access log replaces uvicorn's (which logs raw paths, subject ids included).
    logging.getLogger("uvicorn.access").disabled = True
