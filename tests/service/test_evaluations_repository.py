"""The evaluation state machine on SQLite and PostgreSQL: claim once, lease lapse and requeue, give up after the
attempts, the outbox flag, the webhook in the finishing transaction, and deletion (alone or with its job)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service import evaluations as repo
from service import jobs
from service.db import session_scope
from service.errors import ServiceError
from service.ids import new_id
from service.models import Evaluation, EvaluationImage, WebhookDelivery, utcnow
from service.storage import StoredObject
from tests.service.test_jobs_repository import SPEC, factory  # noqa: F401  (the two-database fixture)


def _succeeded_job(factory, **job_fields) -> str:  # noqa: F811
    job_id = new_id("job")
    with session_scope(factory) as session:
        jobs.create_job(session, job_id=job_id, spec=SPEC, **job_fields)
    with session_scope(factory) as session:
        assert jobs.claim(session, job_id, "w", 30, 3) is not None
    with session_scope(factory) as session:
        assert jobs.finish(session, job_id, "w", jobs.SUCCEEDED)
    return job_id


def _evaluation(factory, job_id: str, grace: float = 10.0) -> str:  # noqa: F811
    evaluation_id = repo.new_evaluation_id()
    images = [repo.NewImage("a", 0, "a.png", "image/png", StoredObject(f"k/{evaluation_id}/0", 3, "0" * 64), repo.new_image_id())]
    with session_scope(factory) as session:
        repo.create(session, evaluation_id=evaluation_id, job_id=job_id, counts={"a": 1}, images=images, publish_grace_seconds=grace)
    return evaluation_id


def _get(factory, evaluation_id: str) -> Evaluation:  # noqa: F811
    with session_scope(factory) as session:
        return session.get_one(Evaluation, evaluation_id)


def test_claim_once_then_finish_with_artifacts_and_webhook(factory):  # noqa: F811
    job_id = _succeeded_job(factory, webhook_url="https://example.com/hook", webhook_events=["evaluation.succeeded"])
    evaluation_id = _evaluation(factory, job_id)
    with session_scope(factory) as session:
        assert repo.claim(session, evaluation_id, "w1", 30, 3) is not None
    with session_scope(factory) as session:
        assert repo.claim(session, evaluation_id, "w2", 30, 3) is None  # a duplicate message: the lease is live
    stored = StoredObject("artifacts/x/evaluation.json", 2, "1" * 64)
    result = {"student": {"accuracy": 0.5}, "teacher": {"accuracy": 1.0}}
    with session_scope(factory) as session:
        assert not repo.finish(session, evaluation_id, "w2", repo.SUCCEEDED, result=result)  # not the owner
        files = [("evaluation.json", "application/json", stored)]
        assert repo.finish(session, evaluation_id, "w1", repo.SUCCEEDED, result=result, artifacts=files)
    done = _get(factory, evaluation_id)
    assert done.status == "succeeded" and done.result == result and done.publish_due_at is None and done.lease_owner is None
    with session_scope(factory) as session:
        assert [a.name for a in repo.artifacts(session, [evaluation_id])[evaluation_id]] == ["evaluation.json"]
        deliveries = session.query(WebhookDelivery).filter_by(job_id=job_id).all()
        assert [d.event for d in deliveries] == ["evaluation.succeeded"]
        assert deliveries[0].payload["data"]["student_accuracy"] == 0.5


def test_a_lapsed_lease_requeues_then_gives_up(factory):  # noqa: F811
    evaluation_id = _evaluation(factory, _succeeded_job(factory))
    later = utcnow() + timedelta(seconds=60)
    for attempt in (1, 2):
        with session_scope(factory) as session:
            assert repo.claim(session, evaluation_id, f"w{attempt}", 30, 2) is not None
        with session_scope(factory) as session:
            assert repo.reap_expired(session, 2, now=utcnow()) == []  # not lapsed yet
            requeued = repo.reap_expired(session, 2, now=later)
        state = _get(factory, evaluation_id)
        if attempt == 1:
            assert requeued == [evaluation_id] and state.status == "queued" and state.publish_due_at is not None
            with session_scope(factory) as session:
                assert [e for e, _ in repo.unpublished(session, due_by=utcnow(), including=requeued)] == [evaluation_id]
        else:
            assert requeued == [] and state.status == "failed" and state.error_code == "worker_lost"


def test_the_outbox_flag_is_due_after_its_grace_and_cleared_once(factory):  # noqa: F811
    evaluation_id = _evaluation(factory, _succeeded_job(factory), grace=5.0)
    with session_scope(factory) as session:
        assert repo.unpublished(session, due_by=utcnow()) == []
        [(found, due_at)] = repo.unpublished(session, due_by=utcnow() + timedelta(seconds=6))
    assert found == evaluation_id
    with session_scope(factory) as session:
        assert repo.mark_published(session, evaluation_id, due_at)
        assert not repo.mark_published(session, evaluation_id, due_at)


def test_only_a_succeeded_job_is_evaluable_and_deleting_the_job_removes_its_evaluations(factory):  # noqa: F811
    queued = new_id("job")
    with session_scope(factory) as session:
        jobs.create_job(session, job_id=queued, spec=SPEC)
    with session_scope(factory) as session, pytest.raises(ServiceError) as refused:
        repo.evaluable_job(session, queued, jobs.ANY_TENANT)
    assert refused.value.code == "job_not_succeeded"
    job_id = _succeeded_job(factory)
    evaluation_id = _evaluation(factory, job_id)
    with session_scope(factory) as session:
        repo.claim(session, evaluation_id, "w", 30, 3)
    with session_scope(factory) as session, pytest.raises(ServiceError) as busy:
        jobs.delete_job(session, job_id)
    assert busy.value.code == "evaluation_active"
    with session_scope(factory) as session:
        repo.finish(session, evaluation_id, "w", repo.FAILED, code="x", message="y")
    with session_scope(factory) as session:
        jobs.delete_job(session, job_id)
    with session_scope(factory) as session:
        assert session.get(Evaluation, evaluation_id) is None
        assert session.query(EvaluationImage).filter_by(evaluation_id=evaluation_id).count() == 0
