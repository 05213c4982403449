"""Request and response bodies of the HTTP API (pydantic), separate from the ORM tables; the client reuses them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

JobStatus = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# The error answers every resource's operations may give, for the OpenAPI document (401: a missing or invalid API key;
# 429: a tenant's quota or rate).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 415, 422, 429, 503, 507)
}


class JobError(BaseModel):
    code: str
    message: str | None


class Job(BaseModel):
    id: str
    status: JobStatus
    stage: str | None = None  # pool (embedding its pool), preparing, bank (its sample bank), synthesizing, distilling, exporting
    progress: float = Field(ge=0, le=1)
    eta_seconds: float | None = None  # while running: seconds left, from the measured rate of the current stage
    # Before it runs: about how long the job takes on a worker of its budget (core.estimate), to decide whether to wait.
    estimated_seconds: float | None = None
    # While running: the worker's last sign of life (its claim or latest lease renewal), and when its lease lapses
    # without one; past that the job goes back to the queue (a lost worker).
    heartbeat_at: datetime | None = None
    lease_expires_at: datetime | None = None
    # True while the worker has missed its heartbeats (three in a row): it may be gone; the job goes back to the queue
    # at lease_expires_at unless it recovers. A warning event says so in the event stream.
    stalled: bool = False
    webhook_url: str | None = None  # where the job's end is delivered, signed (service.webhooks)
    webhook_events: list[str] | None = None
    seed: int
    teacher: str
    spec: dict[str, Any]  # the full spec with every default filled in, the generator, decoder and prior written out
    # What the submission was warned of: a generator with no image prior asked for by name (its student may be at chance).
    warnings: list[str] = Field(default_factory=list)
    error: JobError | None = None
    attempts: int
    metrics: dict[str, Any] | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")


class JobPage(BaseModel):
    data: list[Job]
    has_more: bool
    next_after: str | None = None  # pass as ?after= for the next page


class Event(BaseModel):
    id: int
    job_id: str
    created_at: datetime
    kind: Literal["status", "stage", "progress", "metrics", "warning", "error", "resumed"]
    status: str | None = None
    stage: str | None = None
    progress: float | None = None
    message: str | None = None
    data: dict[str, Any] | None = None


class EventPage(BaseModel):
    data: list[Event]
    has_more: bool
    next_after: int | None = None


class Artifact(BaseModel):
    name: str
    size: int
    sha256: str
    content_type: str
    url: str
    created_at: datetime


class ArtifactList(BaseModel):
    data: list[Artifact]


class Teacher(BaseModel):
    name: str
    source: str
    image_size: int | None = None
    description: str
    default: bool = False


class TeacherList(BaseModel):
    data: list[Teacher]


class Student(BaseModel):
    name: str
    description: str
    mflops: float | None = None  # forward FLOPs (millions) per 32 px image, 10 classes
    parameters: int | None = None  # at 32 px, 10 classes
    export_formats: list[str] = Field(default_factory=list)  # the spec's export formats this student supports


class StudentList(BaseModel):
    data: list[Student]


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class WebhookAttempt(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None = None  # what the receiver answered; None when it could not be reached
    error: str | None = None  # None: delivered (2xx)
    seconds: float


class WebhookDelivery(BaseModel):
    id: str  # the webhook-id header the receiver saw (deduplicate on it: delivery is at least once)
    event: Literal["job.succeeded", "job.failed", "job.cancelled", "evaluation.succeeded"]
    url: str
    status: Literal["pending", "delivered", "failed"]  # failed: gave up after the service's webhook_max_attempts
    attempts: list[WebhookAttempt]
    next_attempt_at: datetime | None = None  # while pending
    created_at: datetime
    finished_at: datetime | None = None


class WebhookDeliveryList(BaseModel):
    data: list[WebhookDelivery]


EvaluationStatus = Literal["queued", "running", "succeeded", "failed"]


class ModelScores(BaseModel):
    accuracy: float  # over every image sent
    per_class: dict[str, float | None]  # None for a class without images
    confusion: list[list[int]]  # rows: true class, columns: predicted class, in the job's class order


class EvaluationResult(BaseModel):
    images: int
    classes: list[str]  # the job's classes, the order of the confusion matrices
    student: ModelScores  # the exported ONNX student (the file users download), run by onnxruntime
    teacher: ModelScores  # the teacher's zero-shot head that taught it
    agreement: float  # share of images on which the student's top class is the teacher's
    student_mistakes: int


class ClassProbability(BaseModel):
    name: str  # a class of the job
    probability: float  # the student's softmax probability


class Prediction(BaseModel):
    filename: str | None  # the part's file name, as sent
    label: str  # the most likely class, always: a flag (``unknown``) says when it may be none of them, never replaces it
    unknown: bool | None = None  # may be none of the classes (score below the threshold); None when the job has no calibration
    unknown_score: float | None = None  # the top class's log-odds at the calibrated temperature, compared with the threshold
    unknown_threshold: float | None = None  # the model card's threshold: scores below it are flagged
    top: list[ClassProbability]  # the top_k classes, most likely first


class PredictionList(BaseModel):
    classes: list[str]  # the job's classes, in the student's output order
    predictions: list[Prediction]  # one per image, in the order sent


class Evaluation(BaseModel):
    id: str
    job_id: str
    status: EvaluationStatus
    error: JobError | None = None
    counts: dict[str, int]  # images per class
    result: EvaluationResult | None = None
    artifacts: list[Artifact]  # confusion.png, mistakes.png and evaluation.json once succeeded
    attempts: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed")


PoolEmbeddingStatus = Literal["queued", "running", "succeeded", "failed"]


class PoolEmbeddingResult(BaseModel):
    """What a job's ``metrics.pool_embeddings`` says of the same embeddings (core.pools)."""

    status: Literal["built", "reused", "rebuilt"]  # made now, found stored whole, or made again over a damaged one
    key: str  # the embeddings' key (pool content, teacher weights, view recipe, encoder), as jobs report it
    images: int
    views: int  # augmented views per image
    encoder: str  # the image tower that made them: torch, onnxruntime-fp32 or onnxruntime-int8
    seconds: float
    encoder_choice: dict[str, Any] | None = None  # why that tower (a large CPU teacher's onnxruntime check)
    reason: str | None = None  # why a stored one was rebuilt


class PoolEmbedding(BaseModel):
    """A teacher's embeddings of the pool's images and views, built by a worker ahead of the pool's first job."""

    id: str
    teacher: str
    views: int
    status: PoolEmbeddingStatus
    result: PoolEmbeddingResult | None = None  # once succeeded
    error: JobError | None = None  # once failed: e.g. unknown_teacher, teacher_unavailable, worker_lost
    attempts: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Pool(BaseModel):
    id: str
    name: str | None = None  # the user's label
    image_count: int  # distinct images (an image sent twice in one request is stored once)
    duplicates: int  # images dropped as repeats of another of the same request
    bytes: int  # stored bytes of its images
    thumbnails_url: str  # a PNG grid of its first images
    jobs_using: list[str]  # queued or running jobs that read it: while any, it cannot be deleted
    # Its teachers' embeddings built ahead (created with a teacher), newest first; while one is queued or running the
    # pool cannot be deleted either.
    embeddings: list[PoolEmbedding]
    created_at: datetime


class PoolList(BaseModel):
    data: list[Pool]  # newest first


class EvaluationList(BaseModel):
    data: list[Evaluation]  # newest first
