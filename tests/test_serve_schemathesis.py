"""Property-based API test: schemathesis generates requests from /openapi.json; no answer may be a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 20


def test_no_request_from_the_schema_gets_a_server_error(start_server, synthetic_repository):
    # Explicit model control, so that load and unload do their work: in none mode they answer 503
    # as Triton does (test_serve_live_repository.py), which is that mode's documented refusal.
    server = start_server(synthetic_repository, model_control_mode="explicit", load_model="*", allow_unverified=True)
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        def no_server_error(case):
            case.call_and_validate(checks=[not_a_server_error], timeout=30)

        no_server_error()
