"""Schemathesis against /openapi.json on a real uvicorn server: every operation, with and without an API key, with a
fixed small budget (derandomized: the same examples on every run). No 5xx, and every answer fits the schema.

The worker does not run: submitted jobs stay queued.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from service.auth import create_key
from service.db import session_scope
from tests.servers import ApiThread, settings_for

MAX_EXAMPLES = 8  # per operation and test: about 12 operations x 2 tests, well under a minute on 2 cores


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory) -> Iterator[ApiThread]:
    # A quota high enough that the fuzzer's submissions are not all answered 429.
    with ApiThread(settings_for(tmp_path_factory.mktemp("fuzz"), max_active_jobs_per_tenant=10_000)) as api:
        yield api


@pytest.fixture(scope="module")
def api_key(fuzz_server) -> str:
    with session_scope(fuzz_server.app.state.session_factory) as session:
        return create_key(session, "fuzzer")[1]


@pytest.fixture(scope="module")
def openapi(fuzz_server):
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


BUDGET = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
)


def _fuzz_every_operation(openapi, check: Callable[[Any], None]) -> list[str]:
    """Runs ``check`` on MAX_EXAMPLES generated cases of every operation; the failures, one line each."""
    # Each operation runs under its own @given (not schemathesis' pytest plugin, which this pytest cannot collect).
    failures: list[str] = []
    operations = [result.ok() for result in openapi.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    for operation in operations:

        @BUDGET
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            check(case)

        try:
            run()
        except Exception as exc:  # collected, so that one report names every failing operation
            failures.append(f"{operation.label}: {type(exc).__name__}: {str(exc)[:2000]}")
    return failures


# Schema-valid data may still be refused: the schema cannot say "at most 100 classes, no duplicates after NFKC" and the
# like, which are checked by hand with their own 4xx codes (tests/api/test_hostile_input.py).
EXCLUDED = [schemathesis.checks.positive_data_acceptance]


def test_with_a_valid_key(openapi, fuzz_server, api_key):
    headers = {"Authorization": f"Bearer {api_key}"}

    def check(case: Any) -> None:
        case.call_and_validate(base_url=fuzz_server.url, headers=headers, excluded_checks=EXCLUDED)

    failures = _fuzz_every_operation(openapi, check)
    assert not failures, "\n\n".join(failures)


def test_without_a_key(openapi, fuzz_server, api_key):
    # A key exists (the api_key fixture), so every /v1 operation must answer 401, in the schema's error shape.
    def check(case: Any) -> None:
        response = case.call_and_validate(base_url=fuzz_server.url, excluded_checks=EXCLUDED)
        if case.path.startswith("/v1/"):
            assert response.status_code == 401, response.text

    failures = _fuzz_every_operation(openapi, check)
    assert not failures, "\n\n".join(failures)
