"""The Celery app both sides share: the API sends job ids, the worker registers the task on the same configuration.

Messages carry a job id only; everything else is in the database and storage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from celery import Celery, group

from service.settings import Settings

RUN_JOB_TASK = "clipforge.run_job"
RUN_EVALUATION_TASK = "clipforge.run_evaluation"
# A split job (service.chunks): one message per synthesis chunk (job id, chunk index), then one for its distillation.
SYNTHESIZE_CHUNK_TASK = "clipforge.synthesize_chunk"
DISTILL_JOB_TASK = "clipforge.distill_job"
EMBED_POOL_TASK = "clipforge.embed_pool"  # a pool's teacher embeddings built ahead (service.pool_embeddings)
TASKS = (RUN_JOB_TASK, RUN_EVALUATION_TASK, SYNTHESIZE_CHUNK_TASK, DISTILL_JOB_TASK, EMBED_POOL_TASK)

# Publishing never hangs on a broker that is down or stalled: a refused or silent connection fails within a few
# seconds (connect 1 s, each reply 1 s, one retry), and the API answers 503 instead of holding the request.
BROKER_CONNECT_TIMEOUT_S = 1.0
BROKER_SOCKET_TIMEOUT_S = 1.0
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.0, "interval_step": 0.2, "interval_max": 0.2}


class BrokerUnavailable(RuntimeError):
    code = "broker_unavailable"


def create_celery(settings: Settings) -> Celery:
    app = Celery("clipforge", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # job state lives in the database, not in a result backend
        task_acks_late=True,  # ack after the job ends, so a job whose worker dies is delivered again
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # one job per device at a time, none reserved behind it
        worker_concurrency=1,
        task_routes={task: {"queue": settings.queue} for task in TASKS},
        task_default_queue=settings.queue,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=BROKER_CONNECT_TIMEOUT_S,
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        broker_transport_options=transport_options(settings),
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app


def transport_options(settings: Settings) -> dict[str, object]:
    scheme = settings.broker_url.split("://", 1)[0]
    if scheme.startswith("sqla+"):
        # Passed to SQLAlchemy's create_engine: wait for SQLite's lock instead of failing while the other process writes.
        return {"connect_args": {"timeout": 30}} if "sqlite" in scheme else {}
    if scheme in ("redis", "rediss"):
        # An unacked message is redelivered after this long (acks_late); longer than any job's normal run.
        return {
            "visibility_timeout": settings.broker_visibility_timeout_seconds,
            "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_S,
            "socket_timeout": BROKER_SOCKET_TIMEOUT_S,
        }
    return {"polling_interval": settings.broker_polling_interval_seconds}


def _publish(what: str, send: Callable[[], object]) -> None:
    """The one broker-error path: ``send`` publishes; any failure to (kombu's OperationalError, redis' ConnectionError
    and TimeoutError, OSError) is BrokerUnavailable, within seconds (the timeouts above)."""
    try:
        send()
    except Exception as exc:
        raise BrokerUnavailable(f"the broker did not take the {what}: {exc}") from exc


def _send_task(app: Celery, settings: Settings, task: str, *args: object) -> Callable[[], object]:
    return lambda: app.send_task(task, args=list(args), queue=settings.queue)


def enqueue_job(app: Celery, settings: Settings, job_id: str) -> None:
    """Publish the job's message (its id only); BrokerUnavailable when the broker cannot take it."""
    _publish("job's message", _send_task(app, settings, RUN_JOB_TASK, job_id))


def enqueue_evaluation(app: Celery, settings: Settings, evaluation_id: str) -> None:
    """Publish an evaluation's message (its id only); BrokerUnavailable when the broker cannot take it."""
    _publish("evaluation's message", _send_task(app, settings, RUN_EVALUATION_TASK, evaluation_id))


def enqueue_pool_embedding(app: Celery, settings: Settings, embedding_id: str) -> None:
    """Publish a pool embedding's message (its id only); BrokerUnavailable when the broker cannot take it."""
    _publish("pool embedding's message", _send_task(app, settings, EMBED_POOL_TASK, embedding_id))


def enqueue_chunks(app: Celery, settings: Settings, job_id: str, indices: Sequence[int]) -> None:
    """Publish a split job's chunk messages as one Celery group (ids only: the job and the chunk index); the join is in
    the database (service.chunks), so the group has no callback and needs no result backend. BrokerUnavailable when
    the broker cannot take them (the chunks stay flagged in the outbox)."""
    signatures = [app.signature(SYNTHESIZE_CHUNK_TASK, args=(job_id, index), queue=settings.queue) for index in indices]
    _publish("chunks' messages", group(signatures, app=app).apply_async)


def enqueue_distillation(app: Celery, settings: Settings, job_id: str) -> None:
    """Publish a split job's distillation message (its id); BrokerUnavailable when the broker cannot take it."""
    _publish("distillation's message", _send_task(app, settings, DISTILL_JOB_TASK, job_id))


def ping_broker(app: Celery, timeout: float = 2.0) -> None:
    """BrokerUnavailable when the broker cannot be reached within ``timeout`` seconds."""
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # kombu's OperationalError, redis' ConnectionError, OSError
        raise BrokerUnavailable(f"the broker cannot be reached: {exc}") from exc
