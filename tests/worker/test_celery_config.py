"""The queue configuration both sides share: ids only, late acks, one job at a time, a gpu queue."""

from __future__ import annotations

from service.queue import RUN_JOB_TASK, create_celery, transport_options
from tests.servers import settings_for


def test_late_acks_one_at_a_time_on_the_gpu_queue(tmp_path):
    settings = settings_for(tmp_path, broker_url="redis://127.0.0.1:1/0", broker_visibility_timeout_seconds=7200)
    conf = create_celery(settings).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and conf.worker_concurrency == 1
    assert conf.task_routes[RUN_JOB_TASK] == {"queue": "gpu"}
    assert conf.broker_transport_options == {"visibility_timeout": 7200, "socket_connect_timeout": 1.0, "socket_timeout": 1.0}
    assert conf.task_publish_retry_policy["max_retries"] == 1  # publishing gives up within seconds (tests/faults)


def test_server_less_transports_get_their_own_options(tmp_path):
    assert transport_options(settings_for(tmp_path)) == {"connect_args": {"timeout": 30}}  # sqla+sqlite:// by default
    assert "polling_interval" in transport_options(settings_for(tmp_path, broker_url="filesystem://"))


def test_worker_registers_the_task_that_the_api_sends(tmp_path):
    from worker.app import create_worker_app

    context = create_worker_app(settings_for(tmp_path))
    assert RUN_JOB_TASK in context.celery.tasks
    task = context.celery.tasks[RUN_JOB_TASK]
    assert task.acks_late and task.reject_on_worker_lost
