"""Problem details: every 503 says when to come back."""

from __future__ import annotations

import json

from krypton.gateway.problems import PROBLEM_JSON, problem


def test_a_503_always_carries_retry_after() -> None:
    response = problem(503, "index unavailable")
    assert response.headers["retry-after"] == "2"
    assert response.headers["content-type"] == PROBLEM_JSON
    assert json.loads(response.body)["status"] == 503


def test_a_given_retry_after_is_kept_and_other_statuses_get_none() -> None:
    assert problem(503, "busy", headers={"Retry-After": "30"}).headers["retry-after"] == "30"
    assert "retry-after" not in problem(404, "not found").headers
