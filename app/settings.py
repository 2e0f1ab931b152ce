"""Service settings: one `Settings` object, read from `WAJAH_*` environment variables.

Built once in `create_app` / the CLI and passed down; nothing reads the environment elsewhere.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.regions import check_region

PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "secret", "password", "dev", "test"})


class Mode(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


def default_home() -> Path:
    return Path(platformdirs.user_cache_dir("wajah"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WAJAH_", extra="ignore")

    mode: Mode = Mode.DEVELOPMENT
    home: Path = Field(default_factory=default_home, description="Cache/data directory.")
    region: str = Field(
        default="ID",
        description=(
            "Region this deployment keeps and processes data in: an ISO 3166-1 alpha-2 code "
            "(`ID`, `SG`, ...). An org whose `data_residency` forbids it is refused here "
            "(403 `residency_mismatch`)."
        ),
    )
    security_contact: str = Field(
        default="mailto:security@wajah.dev",
        description="Contact in /.well-known/security.txt (mailto: or https: URI).",
    )
    host: str = "127.0.0.1"
    port: int = 8000

    # --- the edge: TLS, proxies, logs, admission (see app.serving, app.api.edge) -----------
    tls_cert: Path | None = Field(
        default=None, description="PEM certificate chain; with `tls_key`, serve HTTPS."
    )
    tls_key: Path | None = Field(default=None, description="PEM private key of `tls_cert`.")
    trusted_proxies: str = Field(
        default="",
        description=(
            "Comma-separated addresses or networks of TLS-terminating proxies whose "
            "X-Forwarded-For/-Proto headers are honoured (from no one else)."
        ),
    )
    log_format: Literal["json", "plain"] = Field(
        default="json", description="`json`: one JSON object per line; `plain`: text."
    )
    rate_limit_per_second: float = Field(
        default=100.0,
        ge=0,
        description="Requests per second per API key (token bucket per replica); 0: off.",
    )
    rate_limit_burst: int = Field(
        default=200, ge=1, description="Requests an API key may make at once (bucket size)."
    )
    decode_pixel_budget: int = Field(
        default=80_000_000,
        ge=10_000,
        description=(
            "Pixels this process decodes and analyses at once, over all requests; a frame "
            "waits for room (bounds memory: about 8 bytes per pixel)."
        ),
    )

    # --- storage -------------------------------------------------------------------------
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default is a SQLite file under `home`."
    )
    object_store_dir: Path | None = Field(
        default=None, description="Sealed-frame directory; default `home/objects`."
    )
    object_store: Literal["auto", "local", "database"] = Field(
        default="auto",
        description=(
            "Where sealed frames live: `local` (the directory above), `database` (a table of "
            "the database, shared by replicas); `auto` is `database` on PostgreSQL and "
            "`local` otherwise."
        ),
    )
    index_dir: Path | None = Field(
        default=None, description="Index snapshot directory; default `home/indexes`."
    )

    # --- keys ------------------------------------------------------------------------------
    kms_backend: Literal["local", "pkcs11"] = "local"
    root_key: SecretStr | None = Field(
        default=None, description="Base64 32-byte root key of the local keyring."
    )
    root_key_file: Path | None = None
    pkcs11_module: Path | None = None
    pkcs11_token_label: str | None = None
    pkcs11_pin: SecretStr | None = None
    max_wraps_per_kek_version: int = Field(default=2**30, ge=1)

    # --- webhooks (app.services.webhooks; https is required in production mode) -----------
    webhooks_allow_private: bool = Field(
        default=False,
        description=(
            "Let webhook URLs name IP literals and hosts resolving to loopback, private, "
            "link-local or metadata addresses (a receiver on the same network; tests)."
        ),
    )

    # --- models ----------------------------------------------------------------------------
    model_pack: str = "yunet-sface-2021dec"
    model_dir: Path | None = Field(
        default=None, description="Directory of an ArcFace pack (e.g. buffalo_l)."
    )
    model_cache_dir: Path | None = Field(
        default=None, description="Where prepared packs live; default `home/models`."
    )
    inference_threads: int = Field(
        default=1, ge=1, description="onnxruntime intra-op threads per session."
    )
    inference_workers: int = Field(
        default=2, ge=1, description="Size of the thread pool running inference."
    )
    solo_inference_threads: int = Field(
        default=0,
        ge=0,
        description=(
            "onnxruntime intra-op threads for a capture whose request is the only one in "
            "flight (0: every usable core; 1, or no more than `inference_threads`: off). "
            "Lowers latency when the service is quiet; under load captures run one per core."
        ),
    )

    # --- image limits ----------------------------------------------------------------------
    max_image_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=40_000_000, ge=10_000)
    max_frames_per_request: int = Field(default=8, ge=1)

    # --- quality gate ----------------------------------------------------------------------
    min_interocular_px: float = Field(default=24.0, ge=0)
    min_detector_score: float = Field(default=0.75, ge=0, le=1)
    min_blur_variance: float = Field(default=40.0, ge=0)
    max_yaw_degrees: float = Field(default=45.0, ge=0, le=90)
    max_pitch_degrees: float = Field(default=40.0, ge=0, le=90)
    multiple_faces: Literal["reject", "largest"] = "reject"

    # --- index ------------------------------------------------------------------------------
    # Threads that scan one big namespace together (the name predates the C scan that
    # replaced FAISS's). One by default: the cores are the inference pool's.
    faiss_threads: int = Field(default=1, ge=1)
    index_url: str = Field(
        default="",
        pattern=r"^(|milvus://[A-Za-z0-9.\-]+(:[0-9]{1,5})?/?)$",
        description=(
            "Where the vector indexes live: empty for the embedded exact index in this process "
            "(snapshots under `index_dir`), or `milvus://host:port` for a Milvus cluster, one "
            "collection per org and per shared watchlist (docs/milvus.md)."
        ),
    )
    index_prefix: str = Field(
        default="wajah",
        pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$",
        description="Milvus collection names start with this, so deployments can share a cluster.",
    )
    freshness_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description=(
            "How long a search, duplicate check or screen waits for this replica's index to "
            "reach the database's position before it answers 503 `index_not_current`."
        ),
    )

    # --- webhook delivery (app.services.webhook_delivery) -----------------------------------
    webhooks_worker: bool = Field(
        default=True,
        description="Run the webhook delivery worker in this server (every replica may).",
    )
    webhooks_poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description=(
            "How often the delivery worker looks for due deliveries when it was not woken "
            "(a commit in this process that wrote deliveries wakes it at once)."
        ),
    )
    webhooks_batch_size: int = Field(
        default=50, ge=1, le=1000, description="Deliveries the worker claims per round."
    )
    webhooks_concurrency: int = Field(
        default=8, ge=1, le=64, description="Deliveries the worker sends at once."
    )
    webhooks_disable_after_hours: float = Field(
        default=72.0,
        gt=0,
        description=(
            "An endpoint whose every attempt failed for this long is disabled (the org "
            "enables it again); any success resets the clock."
        ),
    )

    @field_validator("region")
    @classmethod
    def _check_region(cls, value: str) -> str:
        return check_region(value)

    @model_validator(mode="after")
    def _check_edge(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both WAJAH_TLS_CERT and WAJAH_TLS_KEY, or neither")
        if self.decode_pixel_budget < self.max_image_pixels:
            raise ValueError(
                "WAJAH_DECODE_PIXEL_BUDGET must be at least WAJAH_MAX_IMAGE_PIXELS "
                "(else the largest image allowed could never be decoded)"
            )
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.mode is Mode.PRODUCTION and self.kms_backend == "local":
            key = self.root_key.get_secret_value() if self.root_key else None
            if key is None and self.root_key_file is None:
                raise ValueError(
                    "production mode needs WAJAH_ROOT_KEY or WAJAH_ROOT_KEY_FILE "
                    "(an auto-generated root key is for development only)"
                )
            if key is not None and key.strip().lower() in PLACEHOLDER_SECRETS:
                raise ValueError("WAJAH_ROOT_KEY is a placeholder; set a real 32-byte key")
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'wajah.db'}"

    @property
    def uses_postgresql(self) -> bool:
        """PostgreSQL: replicas may share the database. SQLite: one serving process."""
        return self.resolved_database_url.split(":", 1)[0].split("+", 1)[0] in (
            "postgresql",
            "postgres",
        )

    @property
    def resolved_object_store_dir(self) -> Path:
        return self.object_store_dir or self.home / "objects"

    @property
    def resolved_index_dir(self) -> Path:
        return self.index_dir or self.home / "indexes"

    @property
    def models_dir(self) -> Path:
        return self.model_cache_dir or self.home / "models"
