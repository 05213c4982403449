from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def shapes_teacher():
    from core.teachers import create_teacher

    return create_teacher("shapes-mini", device="cpu")


# ------------------------------------------------------------------------------------------
# The service: real Redis and PostgreSQL servers (see tests/servers.py)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url():
    from tests.servers import redis_server

    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url():
    from tests.servers import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible store (moto's server on a free port) with a bucket: tests.servers.ThrowawayS3."""
    from tests.servers import start_s3_server

    with start_s3_server() as store:
        yield store
