"""Service settings: one pydantic-settings object, from ``CLIPFORGE_*`` variables, ``.env`` and an optional config file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.spec import DEFAULT_TEACHER
from service.storage import parse_storage_url

PRESIGNED_URL_MAX_SECONDS = 7 * 24 * 3600  # the longest a SigV4 presigned URL may live


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPFORGE_", env_file=".env", extra="ignore")

    # Where the embedded defaults keep their files; database, broker and storage default to folders in it.
    data_dir: Path = Path("clipforge-data")
    database_url: str = ""  # default: sqlite:///<data_dir>/clipforge.db
    broker_url: str = ""  # default: sqla+sqlite:///<data_dir>/broker.db (kombu's SQLAlchemy transport, no server)
    storage_dir: Path | None = None  # default: <data_dir>/storage; unused with storage_url
    # Object storage instead of the folder: ``s3://bucket/prefix`` on any S3-compatible store (endpoint, credentials and
    # region from the usual AWS variables, which boto3 reads itself); empty: the local folder above.
    storage_url: str = ""
    # GET of an artifact (a job's or an evaluation's) answers 307 to a presigned URL of the store instead of streaming
    # it through the API; HEAD and Range requests still go through the API. Object storage only.
    storage_presigned_downloads: bool = False
    storage_presigned_expiry_seconds: Annotated[int, Field(ge=1, le=PRESIGNED_URL_MAX_SECONDS)] = 300
    # Where clients reach the store, when not where the service does (compose: http://minio:9000 inside, a public
    # address outside); presigned URLs are signed for this endpoint. Empty: the service's own endpoint.
    storage_presigned_endpoint_url: str = ""
    cache_dir: Path | None = None  # teacher cache; default ~/.cache/clipforge
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"  # the worker's device: auto, cpu, cuda, cuda:N
    queue: str = "gpu"
    # The worker's CPU niceness: where a worker shares a machine with the API (``serve``), status reads come first and
    # the job gets the CPU time they leave (2-thread job on 2 cores: read p99 23-50 ms with 10, 72-89 ms with 0).
    worker_nice: Annotated[int, Field(ge=0, le=19)] = 10
    migrate_on_start: bool = True
    # The Bearer token a Prometheus server sends to scrape /metrics from another host. /metrics counts every tenant's
    # jobs and requests, so without a token it answers loopback clients only.
    metrics_token: SecretStr | None = None

    # The teacher of a job whose spec names none (filled in at submission); its default is core.spec.DEFAULT_TEACHER.
    default_teacher: str = DEFAULT_TEACHER
    extra_teachers: list[str] = Field(default_factory=list)  # names the workers can load beyond the bundled and cached ones

    # Validation limits, checked before anything is queued.
    max_classes: Annotated[int, Field(ge=2)] = 100
    max_class_text_chars: Annotated[int, Field(ge=1)] = 200
    max_images_per_class: Annotated[int, Field(ge=1)] = 16
    max_image_bytes: Annotated[int, Field(ge=1)] = 5 * 1024 * 1024
    max_request_bytes: Annotated[int, Field(ge=1)] = 64 * 1024 * 1024
    max_json_bytes: Annotated[int, Field(ge=1)] = 256 * 1024
    max_image_pixels: Annotated[int, Field(ge=1)] = 4096 * 4096  # decompression-bomb guard (Pillow's MAX_IMAGE_PIXELS)
    max_image_side: Annotated[int, Field(ge=1)] = 8192  # longest side of an upload, whatever its pixel count
    # Evaluations (POST /v1/jobs/{id}/evaluations): labelled images per request, and a zip's total uncompressed size
    # and per-entry compression ratio (zip bombs). The request's bytes are bounded by max_request_bytes.
    max_evaluation_images: Annotated[int, Field(ge=1)] = 5000
    max_pool_images: Annotated[int, Field(ge=1)] = 100_000  # unlabelled images in one image pool (jobs stream them: core.pools)
    max_prediction_images: Annotated[int, Field(ge=1, le=256)] = 16  # images in one POST /v1/jobs/{id}/predictions
    predictions_per_minute: Annotated[int, Field(ge=1)] = 600  # images a tenant's predictions may run per minute (429 beyond)
    prediction_sessions: Annotated[int, Field(ge=1)] = 8  # students an API process keeps loaded for predictions (LRU)
    max_archive_uncompressed_bytes: Annotated[int, Field(ge=1)] = 256 * 1024 * 1024
    max_archive_compression_ratio: Annotated[float, Field(gt=1)] = 100.0

    # Quotas per tenant (the anonymous tenant of an open service included): queued, running and cancelling jobs.
    max_active_jobs_per_tenant: Annotated[int, Field(ge=1)] = 50
    quota_retry_after_seconds: Annotated[int, Field(ge=1)] = 30  # the Retry-After of a 429

    # Worker leases: a running job whose lease is not renewed in time is requeued (or failed after max_attempts).
    lease_seconds: Annotated[float, Field(gt=0)] = 30.0
    reaper_interval_seconds: Annotated[float, Field(gt=0)] = 5.0
    # A running job's worker writes a heartbeat this often (at most a third of the lease); three missed in a row and the
    # job says it is stalled (the API's ``stalled``, a warning event) long before its lease lapses.
    heartbeat_interval_seconds: Annotated[float, Field(gt=0)] = 2.0
    max_attempts: Annotated[int, Field(ge=1)] = 3
    # The reaper publishes a queued job whose message may be missing (its publisher died after the commit) once it is
    # this late: long enough for the API's own publish right after the commit, so that it rarely sends a duplicate.
    publish_grace_seconds: Annotated[float, Field(ge=0)] = 10.0
    progress_interval_seconds: Annotated[float, Field(ge=0)] = 1.0  # throttle for progress rows and events
    # One job over many workers (service.chunks): a job's synthesis is split into chunks of this many of its batches,
    # which every idle worker runs in parallel; a job of one chunk runs in one task (0: never split). One batch per
    # chunk is the finest split that keeps the surrogate set the same (a batch is what synthesis seeds on its own), and
    # budgets size a batch to fill the device, so a chunk is seconds (the cpu budget: 256 images) to minutes (the gpu
    # budget: 400 steps) against well under a second of overhead (a message, a claim, a tensor file); more chunks than
    # workers also balance the load.
    synthesis_chunk_batches: Annotated[int, Field(ge=0)] = 1
    # At most this many chunks a job (more batches per chunk beyond it): messages, rows and files stay bounded.
    synthesis_max_chunks: Annotated[int, Field(ge=2, le=1000)] = 64
    # Sample banks (core.bank): prior samples per bank, built in storage by the first job on a teacher, decoder and prior
    # and shared by every later one (0: no banks, every job decodes and scores its own prior samples).
    sample_bank_images: Annotated[int, Field(ge=0, le=1_000_000)] = 16384
    # A CPU job estimated longer than this is refused when a worker starts it (too_slow_for_cpu, naming faster ways);
    # 0: no limit.
    cpu_job_max_seconds: Annotated[float, Field(ge=0)] = 3600.0
    # Webhooks (service.webhooks): attempts per delivery, the first retry's wait (doubling, with jitter), the POST's
    # timeout, how often the dispatcher looks for due deliveries, and whether private or loopback targets are allowed.
    webhook_max_attempts: Annotated[int, Field(ge=1, le=50)] = 8
    webhook_retry_base_seconds: Annotated[float, Field(gt=0)] = 5.0
    webhook_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 10.0
    webhook_interval_seconds: Annotated[float, Field(gt=0)] = 1.0
    webhook_allow_private_targets: bool = False  # SSRF guard: only public addresses unless an operator allows these
    event_stream_poll_seconds: Annotated[float, Field(gt=0, le=60)] = 0.5  # how often a live event stream reads new events
    cancel_check_interval_seconds: Annotated[float, Field(ge=0)] = 0.5
    # Distillation state saved to storage this often (core.checkpoints): the most work a worker's death costs a job;
    # each save is the student and optimiser state (a few MB for the CPU students). 0: no checkpoints.
    checkpoint_interval_seconds: Annotated[float, Field(ge=0)] = 10.0
    broker_visibility_timeout_seconds: Annotated[int, Field(ge=1)] = 3600  # Redis: redelivery of unacked messages
    broker_polling_interval_seconds: Annotated[float, Field(gt=0)] = 0.5  # server-less transports poll

    @model_validator(mode="after")
    def _derived_defaults(self) -> Settings:
        data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{data_dir / 'clipforge.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{data_dir / 'broker.db'}"
        if self.storage_dir is None:
            self.storage_dir = data_dir / "storage"
        if self.storage_url:
            parse_storage_url(self.storage_url)  # a malformed URL stops the service at start-up, not at its first upload
        if self.metrics_token is not None and not self.metrics_token.get_secret_value().strip():
            self.metrics_token = None  # CLIPFORGE_METRICS_TOKEN= (compose's empty default) is no token, not the empty one
        return self

    @property
    def storage_root(self) -> Path:
        assert self.storage_dir is not None
        return self.storage_dir

    @property
    def uses_object_storage(self) -> bool:
        return bool(self.storage_url)

    @property
    def beat_seconds(self) -> float:
        """How often a worker renews its lease and writes its heartbeat."""
        return min(self.heartbeat_interval_seconds, self.lease_seconds / 3)

    @property
    def stall_after_seconds(self) -> float:
        """A running job whose heartbeat is older than this is stalled: three beats missed."""
        return 3 * self.beat_seconds

    def ensure_local_dirs(self) -> None:
        """Create the folders that SQLite files and local storage need (none for storage in an object store)."""
        for url in (self.database_url, self.broker_url):
            if "sqlite:///" in url:
                Path(url.split("sqlite:///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
        if not self.uses_object_storage:
            self.storage_root.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings(config_file: Path | None = None) -> Settings:
    """The settings: environment variables override ``config_file`` (KEY=VALUE lines), which overrides ``.env``."""
    env_files: tuple[Path, ...] = (Path(".env"),) if config_file is None else (Path(".env"), config_file)
    return Settings(_env_file=env_files)  # type: ignore[call-arg]
