"""kopf's logged errors count in job_operator_errors_total{stage="kopf"}."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from job_operator import metrics


def kopf_errors() -> float:
    value = metrics.ERRORS.labels("kopf")._value.get()
    assert isinstance(value, float)
    return value


@pytest.fixture
def counting() -> Iterator[logging.Logger]:
    handler = metrics.KopfErrors()
    logging.getLogger("kopf").addHandler(handler)
    try:
        yield logging.getLogger("kopf._cogs.clients.api")
    finally:
        logging.getLogger("kopf").removeHandler(handler)


def test_an_error_kopf_logs_is_counted(counting: logging.Logger) -> None:
    before = kopf_errors()
    counting.error("Request attempt 1 failed; will retry: GET ... -> APIForbiddenError(...)")
    assert kopf_errors() == before + 1


def test_warnings_are_not_errors(counting: logging.Logger) -> None:
    before = kopf_errors()
    counting.warning("Not enough permissions to watch for resources")
    logging.getLogger("job_operator.operator").error("not kopf's")
    assert kopf_errors() == before
