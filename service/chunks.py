"""One job over many workers: a job's synthesis in chunks, run in parallel by every idle worker, joined in the database.

After ``preparing``, the worker that claimed a job whose synthesis has more than one chunk (``core.pipeline.synthesis_plan``:
runs of the surrogate set's batches, each seeded from the job's seed and its batch index, so that the set does not depend
on who runs what) calls ``split``: in one transaction the job records its ``synthesis_chunks`` and gives up its own lease,
and one row per chunk is queued with an outbox flag. The worker then publishes a Celery group of
``clipforge.synthesize_chunk`` messages (job id and chunk index, nothing else) and stops. Any idle worker claims a chunk
(``claim``: a compare-and-set under a lease, as jobs are claimed), synthesizes its batches, stores them as a tensor file
under the job's artifact prefix (``chunk_key``: internal, never an artifact row) and marks the chunk done (``complete``).
The completion that finds every chunk done is the finisher: in its transaction it flags the job for its distillation
message (the job's ``publish_due_at``: the outbox again), and after the commit it publishes ``clipforge.distill_job``
(the job id), whose worker takes the job's lease (``claim_distillation``), assembles the chunks, distils, exports and
finishes the job as a job run in one task does.

Why the join is in the database and not a Celery chord (the issue calls it a chord; the semantics are the same: the
distillation runs once, after every chunk is done, whatever order they end in and wherever): a chord needs a result
backend, which this service does not have (job state lives in the database), and its counter counts task results,
while a chunk here may run more than once (its lease lapses and the reaper queues it again alone; a duplicate message
is dropped by the claim), so the chord could neither tell which run counts nor hear of a chunk retried outside it.

Every transaction here first locks the job's row (``_lock_job``), so that the completions, cancellations and reaper
decisions of one job are serialised: exactly one completion sees the last chunk done, and exactly one caller ends a job.

Per chunk, as per job: a chunk whose worker dies (its lease lapses) is queued again alone by the reaper and published
(``reap_expired``, ``unpublished``), or fails the job ``worker_lost`` after ``max_attempts``. Cancelling a split job makes
its running chunks stop at their next check; the last one to stop (or the reaper, when none is running) ends the job
``cancelled``. Progress is summed over the chunks (each weighed by its batches) and written to the job row as its
``synthesizing`` fraction. Files: a worker whose completion is refused (its chunk requeued meanwhile, or its job ended or
deleted) removes the file it wrote, which only it can have written (``chunk_folder`` is per attempt); the caller that
ends a job removes its chunk prefix, and deleting a job removes its whole artifact prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service import jobs
from service.jobs import CANCELLED as JOB_CANCELLED
from service.jobs import CANCELLING as JOB_CANCELLING
from service.jobs import FAILED as JOB_FAILED
from service.jobs import RUNNING as JOB_RUNNING
from service.leases import LeasedTable
from service.models import Job, JobChunk, Upload, utcnow
from service.storage import StoredObject

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
OPEN = (QUEUED, RUNNING)
CHUNKS: Final = LeasedTable(JobChunk, ("job_id", "chunk_index"))  # chunks' leases and outbox flags (service.leases)
CHUNK_FILE = "surrogate.pt"  # the chunk's images, labels and styles (core.synthesis.chunk_to_bytes)
COVERAGE_FILE = "coverage.json"  # core.coverage.Coverage.to_json of the job, written before its chunks are queued

# What a claim or a stop did for its caller.
CLAIMED, SKIPPED, ENDED = "claimed", "skipped", "ended"  # ENDED: this call ended the job: remove its chunk files


def chunks_prefix(job_id: str) -> str:
    """Every chunk file of the job, under its artifact prefix (so deleting the job removes them)."""
    return f"artifacts/{job_id}/chunks"


def coverage_key(job_id: str) -> str:
    """The prior's coverage the split job's preparation measured (core.coverage), read by its chunks and distillation."""
    return f"{chunks_prefix(job_id)}/{COVERAGE_FILE}"


def chunk_folder(job_id: str, index: int, attempt_token: str) -> str:
    """One attempt's folder: a worker may remove it without touching another attempt's file of the same chunk."""
    return f"{chunks_prefix(job_id)}/{index}-{attempt_token}"


def chunk_key(job_id: str, index: int, attempt_token: str) -> str:
    return f"{chunk_folder(job_id, index, attempt_token)}/{CHUNK_FILE}"


def worker_process(owner: str | None) -> str | None:
    """The process part of a lease owner (``host:pid:token``): which worker ran a chunk."""
    return None if owner is None else owner.rsplit(":", 1)[0]


def _lock_job(session: Session, job_id: str) -> Job | None:
    """The job's row, locked until this transaction ends: a no-op update takes the row lock on PostgreSQL and the
    database's write lock on SQLite (whose reads after it then see every commit before it)."""
    statement = update(Job).where(Job.id == job_id).values(updated_at=Job.updated_at)
    session.execute(statement.execution_options(synchronize_session=False))
    return session.get(Job, job_id, populate_existing=True)


def _chunk(session: Session, job_id: str, index: int) -> JobChunk | None:
    return session.get(JobChunk, (job_id, index), populate_existing=True)


def _cas(session: Session, job_id: str, index: int, conditions: Sequence[Any], **values: Any) -> bool:
    """Compare-and-set on one chunk row; True when this caller made the change."""
    return CHUNKS.cas(session, (job_id, index), conditions, **values)


def _held(owner: str) -> list[Any]:
    return CHUNKS.held_by(owner)


def _job_cas(session: Session, job_id: str, conditions: Sequence[Any], **values: Any) -> bool:
    return jobs.JOBS.cas(session, (job_id,), conditions, **values)


def _uploads(session: Session, job_id: str) -> list[tuple[str, str]]:
    query = select(Upload).where(Upload.job_id == job_id).order_by(Upload.class_name, Upload.position)
    return [(upload.class_name, upload.storage_key) for upload in session.scalars(query)]


# ------------------------------------------------------------------------------------------
# Splitting a claimed job
# ------------------------------------------------------------------------------------------


def split(
    session: Session, job_id: str, owner: str, chunks: Sequence[Sequence[int]], *, progress: float, publish_grace_seconds: float
) -> bool:
    """Hand the synthesis of a job ``owner`` holds over to ``chunks`` (consecutive batch indices each): the job records
    their number, moves to ``synthesizing`` at ``progress`` and gives up its lease, and one queued row per chunk is
    flagged for publication, in one transaction. False when the job is no longer ``owner``'s running job."""
    if len(chunks) < 2 or any(list(c) != list(range(c[0], c[0] + len(c))) for c in chunks):
        raise ValueError("a split needs two or more chunks of consecutive batches")
    job = _lock_job(session, job_id)
    if job is None or job.status != JOB_RUNNING or job.lease_owner != owner:
        return False
    now = utcnow()
    if not _job_cas(
        session,
        job_id,
        [Job.lease_owner == owner, Job.status == JOB_RUNNING],
        synthesis_chunks=len(chunks),
        stage="synthesizing",
        progress=progress,
        eta_seconds=None,
        lease_owner=None,
        lease_expires_at=None,
    ):
        return False
    due = now + timedelta(seconds=publish_grace_seconds)
    rows = {"status": QUEUED, "progress": 0.0, "attempts": 0, "publish_due_at": due, "created_at": now, "updated_at": now}
    session.add_all(
        JobChunk(job_id=job_id, chunk_index=index, first_batch=batches[0], batch_count=len(batches), **rows)
        for index, batches in enumerate(chunks)
    )
    jobs.add_event(session, job_id, "stage", stage="synthesizing", progress=progress,
                   message=f"stage synthesizing, in {len(chunks)} chunks", data={"chunks": len(chunks)})  # fmt: skip
    session.flush()
    return True


# ------------------------------------------------------------------------------------------
# Worker side: claim a chunk, renew, report, complete or stop
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkTask:
    """What a worker needs to run a claimed chunk (read in the claim's transaction)."""

    job_id: str
    index: int
    batches: list[int]
    attempt: int
    spec: dict[str, Any]
    uploads: list[tuple[str, str]]  # (class name, storage key) of the job's example images


def claim(session: Session, job_id: str, index: int, owner: str, lease_seconds: float, max_attempts: int) -> tuple[str, ChunkTask | None]:
    """Take a queued chunk (or one whose worker's lease lapsed) of a running job for ``owner``: (CLAIMED, the task); or
    (SKIPPED, None) when it is not this worker's to run (done, leased to a live worker, its job gone); or (ENDED, None)
    when this call ended the job (cancelled with nothing left running, or its chunk's workers lost too often)."""
    job = _lock_job(session, job_id)
    chunk = _chunk(session, job_id, index) if job is not None else None
    if job is None or chunk is None or job.synthesis_chunks is None:
        return SKIPPED, None
    now = utcnow()
    live = chunk.status == RUNNING and not CHUNKS.lapsed(chunk, now)
    if job.status == JOB_CANCELLING:
        if chunk.status in OPEN and not live:
            _cas(session, job_id, index, [JobChunk.status == chunk.status], status=CANCELLED, lease_expires_at=None, publish_due_at=None)
        return (ENDED if _end_cancelled_if_idle(session, job_id, now) else SKIPPED), None
    if job.status != JOB_RUNNING or chunk.status not in OPEN or live:
        return SKIPPED, None
    taken_over = chunk.status == RUNNING  # its lease lapsed: the previous worker is lost (the reaper had not come by yet)
    if taken_over:
        jobs.increment(session, "leases_lost")
    if chunk.attempts >= max_attempts:
        message = f"the worker of chunk {index} was lost {chunk.attempts} times"
        _end_job(session, job_id, JOB_FAILED, code="worker_lost", message=message)
        return ENDED, None
    same = [JobChunk.status == chunk.status, JobChunk.attempts == chunk.attempts]
    if not CHUNKS.claim(session, (job_id, index), same, owner, lease_seconds, now, progress=0.0):
        return SKIPPED, None
    batches = list(range(chunk.first_batch, chunk.first_batch + chunk.batch_count))
    return CLAIMED, ChunkTask(job_id, index, batches, chunk.attempts + 1, dict(job.spec), _uploads(session, job_id))


def renew_lease(session: Session, job_id: str, index: int, owner: str, lease_seconds: float) -> bool:
    """Extend ``owner``'s lease on the chunk; False when it is no longer theirs. The job's heartbeat moves with it (the
    job row first: every transaction takes a job's row before its chunks'), so the API shows the job is alive."""
    now = utcnow()
    session.execute(update(Job).where(Job.id == job_id, Job.status.in_((JOB_RUNNING, JOB_CANCELLING))).values(heartbeat_at=now))
    return CHUNKS.renew(session, (job_id, index), owner, lease_seconds)


def state(session: Session, job_id: str, index: int, owner: str) -> str | None:
    """The job's status while ``owner`` holds the chunk, else None (the chunk was requeued or ended, or the job deleted)."""
    row = session.execute(
        select(Job.status, JobChunk.status, JobChunk.lease_owner)
        .join(JobChunk, JobChunk.job_id == Job.id)
        .where(Job.id == job_id, JobChunk.chunk_index == index)
    ).first()
    if row is None or row[1] != RUNNING or row[2] != owner:
        return None
    return row[0]


def synthesis_fraction(session: Session, job_id: str) -> float:
    """How much of the job's synthesis is done (0..1): its chunks' progress weighed by their batches."""
    rows = session.execute(select(JobChunk.status, JobChunk.progress, JobChunk.batch_count).where(JobChunk.job_id == job_id)).all()
    batches = sum(count for _, _, count in rows)
    done = sum((1.0 if status == DONE else progress) * count for status, progress, count in rows)
    return done / batches if batches else 0.0


def record_progress(session: Session, job_id: str, index: int, owner: str, progress: float, job_fraction: Callable[[float], float]) -> bool:
    """The chunk's own progress (0..1), and the job's: ``job_fraction`` of the summed synthesis fraction, never below
    what the row already says (a requeued chunk starts again from 0). False when the chunk is no longer ``owner``'s."""
    job = _lock_job(session, job_id)
    if job is None or job.status not in (JOB_RUNNING, JOB_CANCELLING):
        return False
    if not _cas(session, job_id, index, _held(owner), progress=min(1.0, max(0.0, progress))):
        return False
    fraction = max(job.progress or 0.0, round(job_fraction(synthesis_fraction(session, job_id)), 4))
    if _job_cas(session, job_id, [Job.status.in_((JOB_RUNNING, JOB_CANCELLING)), Job.lease_owner.is_(None)], progress=fraction):
        jobs.add_event(session, job_id, "progress", stage="synthesizing", progress=fraction, data={"chunk": index, "eta_seconds": None})
    return True


@dataclass(frozen=True)
class Completion:
    accepted: bool  # False: the chunk was no longer this worker's; the file it wrote is its own to remove
    distill_due_at: datetime | None = None  # the finisher's: publish the distillation, then clear this flag
    ended: bool = False  # this completion ended a cancelled job: remove its chunk files


def complete(
    session: Session, job_id: str, index: int, owner: str, stored: StoredObject, *, job_progress: float, publish_grace_seconds: float
) -> Completion:
    """Record ``owner``'s chunk as done with its file. The completion that leaves no chunk of the job undone is the
    finisher (one, under the job's row lock): the job is flagged for its distillation message in this transaction."""
    job = _lock_job(session, job_id)
    now = utcnow()
    if job is None or not _cas(session, job_id, index, _held(owner), status=DONE, progress=1.0, lease_expires_at=None,
                               storage_key=stored.key, size=stored.size, sha256=stored.sha256, finished_at=now):  # fmt: skip
        return Completion(False)
    if job.status == JOB_CANCELLING:
        return Completion(True, ended=_end_cancelled_if_idle(session, job_id, now))
    undone = session.scalar(select(func.count()).select_from(JobChunk).where(JobChunk.job_id == job_id, JobChunk.status != DONE))
    if undone or job.status != JOB_RUNNING:
        return Completion(True)
    due = now + timedelta(seconds=publish_grace_seconds)
    conditions = [Job.status == JOB_RUNNING, Job.lease_owner.is_(None), Job.publish_due_at.is_(None)]
    if not _job_cas(session, job_id, conditions, publish_due_at=due, progress=max(job.progress or 0.0, job_progress)):
        return Completion(True)
    jobs.add_event(session, job_id, "progress", stage="synthesizing", progress=max(job.progress or 0.0, job_progress),
                   message=f"all {job.synthesis_chunks} chunks synthesized; distillation queued")  # fmt: skip
    return Completion(True, distill_due_at=due)


def stop(session: Session, job_id: str, index: int, owner: str, *, code: str | None = None, message: str | None = None) -> bool:
    """``owner`` stops its chunk without a result. With a ``code`` the chunk failed, and so does the job (a chunk's error
    is its job's: the same batches would fail again); without, it was cancelled. True when this call ended the job (the
    caller removes its chunk files)."""
    job = _lock_job(session, job_id)
    if job is None or not _cas(session, job_id, index, _held(owner), status=FAILED if code else CANCELLED, lease_expires_at=None,
                               finished_at=utcnow()):  # fmt: skip
        return False
    if code is not None:
        return _end_job(session, job_id, JOB_FAILED, code=code, message=message)
    return _end_cancelled_if_idle(session, job_id, utcnow())


def _end_job(session: Session, job_id: str, status: str, *, code: str | None = None, message: str | None = None) -> bool:
    """End a split job that no worker holds the lease of (running or cancelling, its chunks out): its open chunks are
    cancelled (their workers stop at their next check) and its distillation flag cleared. Under the job's row lock."""
    if not jobs.finish(session, job_id, None, status, code=code, message=message):
        return False
    session.execute(update(Job).where(Job.id == job_id).values(publish_due_at=None).execution_options(synchronize_session=False))
    session.execute(
        update(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.status.in_(OPEN))
        .values(status=CANCELLED, lease_expires_at=None, publish_due_at=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return True


def _end_cancelled_if_idle(session: Session, job_id: str, now: datetime) -> bool:
    """A cancelling split job with no worker on it (no job lease, no live chunk lease) ends ``cancelled``."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.status != JOB_CANCELLING or job.synthesis_chunks is None or job.lease_owner is not None:
        return False
    live = (
        select(func.count())
        .select_from(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.status == RUNNING, JobChunk.lease_expires_at >= now)
    )
    if session.scalar(live):
        return False
    return _end_job(session, job_id, JOB_CANCELLED, message="cancelled while synthesizing")


# ------------------------------------------------------------------------------------------
# The distillation: the join's one consumer
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredChunk:
    index: int
    key: str
    sha256: str


@dataclass(frozen=True)
class DistillationTask:
    spec: dict[str, Any]
    uploads: list[tuple[str, str]]
    chunks: list[StoredChunk]  # in chunk order
    stage_seconds: dict[str, float]  # preparing and synthesizing, as they ran over the workers
    workers: int  # how many worker processes synthesized the chunks


def claim_distillation(session: Session, job_id: str, owner: str, lease_seconds: float) -> tuple[str, DistillationTask | None]:
    """Take the lease of a split job whose chunks are all done, for its distillation: (CLAIMED, the task), (SKIPPED,
    None) when it is not ready or not this worker's (a duplicate message), or (ENDED, None) when this call ended it
    (cancelled meanwhile). The attempt count is the job's: the reaper adds one when a distillation's worker is lost."""
    job = _lock_job(session, job_id)
    if job is None or job.synthesis_chunks is None:
        return SKIPPED, None
    now = utcnow()
    if job.status == JOB_CANCELLING:
        return (ENDED if _end_cancelled_if_idle(session, job_id, now) else SKIPPED), None
    if job.status != JOB_RUNNING or job.lease_owner is not None:
        return SKIPPED, None
    rows = list(session.scalars(select(JobChunk).where(JobChunk.job_id == job_id).order_by(JobChunk.chunk_index)))
    if len(rows) != job.synthesis_chunks or any(r.status != DONE or r.storage_key is None or r.sha256 is None for r in rows):
        return SKIPPED, None
    if not _job_cas(session, job_id, [Job.status == JOB_RUNNING, Job.lease_owner.is_(None)], lease_owner=owner,
                     lease_expires_at=now + timedelta(seconds=lease_seconds), heartbeat_at=now, publish_due_at=None):  # fmt: skip
        return SKIPPED, None
    began = min(r.created_at for r in rows)
    ended = max(r.finished_at or r.updated_at for r in rows)
    seconds = {"synthesizing": round((ended - began).total_seconds(), 3)}
    if job.started_at is not None:
        seconds = {"preparing": round((began - job.started_at).total_seconds(), 3), **seconds}
    stored = [StoredChunk(r.chunk_index, r.storage_key, r.sha256) for r in rows]  # type: ignore[arg-type]
    workers = len({worker_process(r.lease_owner) for r in rows})
    return CLAIMED, DistillationTask(dict(job.spec), _uploads(session, job_id), stored, seconds, workers)


def unpublished_distillations(
    session: Session, *, due_by: datetime, including: Sequence[str] = (), limit: int = 100
) -> list[tuple[str, datetime]]:
    """(job id, its ``publish_due_at``) of split jobs waiting for their distillation message: flagged by the finisher (or
    by the reaper after a lost distillation) and due by ``due_by``, or among ``including``. Cleared by jobs.mark_published."""
    waiting = [Job.status == JOB_RUNNING, Job.synthesis_chunks.is_not(None), Job.lease_owner.is_(None)]
    found = jobs.JOBS.unpublished(session, due_by=due_by, including=[(job_id,) for job_id in including], where=waiting, limit=limit)
    return [(job_id, due_at) for (job_id,), due_at in found]


# ------------------------------------------------------------------------------------------
# The outbox and the reaper, per chunk
# ------------------------------------------------------------------------------------------


def unpublished(
    session: Session, *, due_by: datetime, including: Sequence[tuple[str, int]] = (), limit: int = 100
) -> list[tuple[str, int, datetime]]:
    """(job id, chunk index, ``publish_due_at``) of queued chunks to publish: due by ``due_by``, or among ``including``
    (just requeued by this caller). Oldest first; a backlog drains over rounds."""
    found = CHUNKS.unpublished(session, due_by=due_by, including=including, limit=limit)
    return [(job_id, index, due_at) for (job_id, index), due_at in found]


def publication_flags(session: Session, job_id: str) -> list[tuple[int, datetime]]:
    """(chunk index, ``publish_due_at``) of the job's queued chunks still flagged: what its splitter publishes."""
    query = select(JobChunk.chunk_index, JobChunk.publish_due_at).where(
        JobChunk.job_id == job_id, JobChunk.status == QUEUED, JobChunk.publish_due_at.is_not(None)
    )
    return [(index, due) for index, due in session.execute(query.order_by(JobChunk.chunk_index)).all()]


def mark_published(session: Session, job_id: str, index: int, publish_due_at: datetime) -> bool:
    """Clear a chunk's flag after a successful publish, only if it is still the one read before publishing."""
    return CHUNKS.mark_published(session, (job_id, index), publish_due_at)


@dataclass
class ChunkReap:
    requeued: list[tuple[str, int]] = field(default_factory=list)  # (job id, chunk index) queued again, flagged for publication
    ended: list[str] = field(default_factory=list)  # jobs ended here: the caller removes their chunk files


def reap_expired(session: Session, max_attempts: int, now: datetime | None = None, publish_grace_seconds: float = 0.0) -> ChunkReap:
    """Chunks whose worker stopped renewing its lease go back to the queue alone (or fail their job after
    ``max_attempts``); cancelling split jobs that nothing runs any more end ``cancelled``. Jobs in id order, each under
    its row lock."""
    now = now or utcnow()
    expired = [CHUNKS.key_of(chunk) for chunk in CHUNKS.expired(session, now)]
    stalled = session.scalars(
        select(Job.id).where(Job.status == JOB_CANCELLING, Job.synthesis_chunks.is_not(None), Job.lease_owner.is_(None))
    ).all()
    by_job: dict[str, list[int]] = {job_id: [] for job_id in stalled}
    for job_id, index in expired:
        by_job.setdefault(job_id, []).append(index)
    result = ChunkReap()
    for job_id in sorted(by_job):
        job = _lock_job(session, job_id)
        for index in by_job[job_id]:
            chunk = _chunk(session, job_id, index)
            if chunk is None or chunk.status != RUNNING or chunk.lease_expires_at is None or not CHUNKS.lapsed(chunk, now):
                continue  # renewed, completed or taken over since the first read
            jobs.increment(session, "leases_lost")
            same = CHUNKS.same_expired(chunk, now)
            if job is None or job.status != JOB_RUNNING:
                _cas(session, job_id, index, same, status=CANCELLED, lease_expires_at=None, publish_due_at=None)
            elif chunk.attempts >= max_attempts:
                if _end_job(session, job_id, JOB_FAILED, code="worker_lost",
                            message=f"the worker of chunk {index} was lost {chunk.attempts} times"):  # fmt: skip
                    result.ended.append(job_id)
                break
            elif CHUNKS.requeue(session, (job_id, index), same, now, publish_grace_seconds, progress=0.0):
                jobs.add_event(session, job_id, "warning", stage="synthesizing",
                               message=f"worker {chunk.lease_owner} of chunk {index} lost its lease; chunk requeued",
                               data={"chunk": index})  # fmt: skip
                jobs.increment(session, "chunks_requeued")
                result.requeued.append((job_id, index))
        if job is not None and job_id not in result.ended and _end_cancelled_if_idle(session, job_id, now):
            result.ended.append(job_id)
    return result
