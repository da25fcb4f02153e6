"""Schemathesis against the server's own OpenAPI schema (issue 23): generated requests, valid and invalid, to every
route on the tiny model, and not one answer of 500 or more.

The suite runs a bounded set (TEMPLORA_FUZZ_EXAMPLES, 40 by default, a few seconds); the long run is

    TEMPLORA_FUZZ_EXAMPLES=1000 python -m pytest -q -s tests/test_fuzz.py

which prints the count of requests and statuses it sent.
"""

from __future__ import annotations

import collections
import os

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from templora_memory.server import create_app  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.timeout(3600)]
EXAMPLES = int(os.environ.get("TEMPLORA_FUZZ_EXAMPLES", "40"))
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


def test_generated_requests_never_get_a_server_error(make_engine, start_server, tmp_path):
    engine = make_engine(store=tmp_path / "store")
    server = start_server(engine, max_body_bytes=64_000, request_timeout=30)
    schema = schemathesis.openapi.from_dict(create_app(engine).openapi())
    strategy = st.one_of(
        [
            operation.ok().as_strategy(generation_mode=mode)
            for operation in schema.get_all_operations()
            for mode in MODES
        ]
    )
    statuses, failures = collections.Counter(), []

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=strategy, agent=st.sampled_from(["npc", "other", "n%C3%A9"]))
    def send(case, agent: str) -> None:
        response = case.call(base_url=server.url, headers={"x-agent-id": agent}, timeout=60)
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path} {response.status_code}: {response.text[:300]}")

    send()
    print(f"\n{sum(statuses.values())} requests; statuses: {dict(sorted(statuses.items()))}")
    assert not failures, failures[:5]
    assert sum(statuses.values()) >= EXAMPLES
