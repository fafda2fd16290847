"""Schemathesis over the service's own /openapi.json, in-process, with every check it has: generated
requests for every documented operation, valid and invalid, never get a 5xx, every answer's status, media
type, headers and body are the documented ones, schema-valid requests are accepted, schema-violating ones
refused, and an undocumented method gets 405 with Allow. A derandomised search, so a run is reproducible.

Two things a JSON schema cannot say are left out of the positive-data check, and only of it: whether the
bytes of a .npy, raw, CSV or image body are well formed (the schema says "binary"; tests/service/
test_binary.py, test_codecs.py and test_images.py hold their cases), and whether a row's reconstruction
error overflows float32 (values finite as inputs but far outside anything the model saw get 422
`non_finite_result`, never a number that is not one; where that happens depends on the weights).

(Schemathesis's pytest plugin does not run under this pytest; its strategies are driven by Hypothesis here.)"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import CheckContext, negative_data_rejection, positive_data_acceptance
from schemathesis.core.transport import Response

from tests.service.conftest import AppMaker

pytestmark = pytest.mark.slow

EXAMPLES = 250  # per operation and mode: about 2 minutes here


@schemathesis.check
def positive_data_accepted_unless_it_overflows(ctx: CheckContext, response: Response, case: schemathesis.Case) -> None:
    if case.media_type != "application/json":
        return None
    if response.status_code == 422 and '"code":"non_finite_result"' in response.text:
        return None
    return positive_data_acceptance(ctx, response, case)


@schemathesis.check
def negative_data_refused_413_included(ctx: CheckContext, response: Response, case: schemathesis.Case) -> None:
    # Too many rows (n beyond max-batch-rows) is refused as 413, as a body too large would be.
    if response.status_code == 413:
        return None
    return negative_data_rejection(ctx, response, case)


def test_generated_requests_conform_to_the_documented_api(make_app: AppMaker) -> None:
    app: FastAPI = make_app()
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30

    for operation, mode in ((o, m) for o in operations for m in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)):

        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(mode))
        def generated(case: schemathesis.Case) -> None:
            case.call_and_validate(
                excluded_checks=[positive_data_acceptance, negative_data_rejection],
                additional_checks=[positive_data_accepted_unless_it_overflows, negative_data_refused_413_included],
            )

        try:
            generated()
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE  # an operation without parameters or body: nothing to break
