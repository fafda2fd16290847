"""Schemathesis over the service's own /openapi.json, in-process: generated requests for every documented
operation, valid and invalid, never get a 5xx. A derandomised search, so a run is reproducible.

(Schemathesis's pytest plugin does not run under this pytest; its strategies are driven by Hypothesis here.)"""

from __future__ import annotations

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.service.conftest import AppMaker

EXAMPLES = 100  # per operation: about 3,500 requests in all


def test_no_generated_request_gets_a_server_error(make_app: AppMaker) -> None:
    app: FastAPI = make_app()
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30

    for operation in operations:

        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def generated(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=[not_a_server_error])

        generated()
