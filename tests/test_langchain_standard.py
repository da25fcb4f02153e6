"""LangChain's own standard test suites, run on `ParametricMemory` over the real default model.

Every capability flag is on: SmolLM2-135M-Instruct's template renders no tools, so they go into the
system message in the Hermes format, and a required call or structured output is generated under a
grammar built from the JSON schemas (templora_memory.constrained), so it always parses. The model is
loaded once per session (the `real_tool_engine` fixture: a 640-token window, room for tool schemas)
and shared by every test; each test talks as its own agent, forgotten afterwards.

Replies are capped at 8 tokens to keep the suite fast on a CPU, except in the tests that expect a
whole tool call or JSON object (about 20-60 tokens), which get 64.
"""

from __future__ import annotations

import hashlib

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from templora_memory import MemoryEngine, ParametricMemory

pytestmark = pytest.mark.real_model

WHOLE_ANSWERS = ("tool", "structured", "json", "runnables", "agent_loop")
"""Tests whose replies must be a whole tool call or JSON object (names containing these words)."""


class _SharedEngine:
    """Mixin: every model the suite builds shares the session's engine and talks as this test's agent."""

    engine: MemoryEngine
    agent_id: str
    max_tokens: int

    @pytest.fixture(autouse=True)
    def _share_engine(self, real_tool_engine: MemoryEngine, request: pytest.FixtureRequest):
        self.engine = real_tool_engine
        self.agent_id = "std-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
        self.max_tokens = 64 if any(word in request.node.name for word in WHOLE_ANSWERS) else 8
        yield
        real_tool_engine.forget(self.agent_id)

    @property
    def chat_model_class(self) -> type[ParametricMemory]:
        return ParametricMemory

    @property
    def chat_model_params(self) -> dict:
        return {"engine": self.engine, "agent_id": self.agent_id}

    @property
    def standard_chat_model_params(self) -> dict:
        # short replies keep the suite fast on a CPU (the suite's own default is 100 tokens)
        return {**super().standard_chat_model_params, "max_tokens": self.max_tokens}

    # Tool calling, tool choice, structured output and JSON mode all work on the default model.
    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False  # one engine holds one base model; a per-call `model=` cannot switch it

    @property
    def returns_usage_metadata(self) -> bool:
        return True


class TestParametricMemoryUnit(_SharedEngine, ChatModelUnitTests):
    """`ChatModelUnitTests`: construction, standard params, LangSmith params."""

    @pytest.mark.xfail(
        strict=True,
        reason="one engine serves one base model and a per-call `model=` does not switch it, so "
        "ls_model_name keeps naming the model that really answered",
    )
    def test_standard_params_model_override(self, model) -> None:
        super().test_standard_params_model_override(model)


class TestParametricMemoryIntegration(_SharedEngine, ChatModelIntegrationTests):
    """`ChatModelIntegrationTests`: invoke, stream, async, batch, usage, stop sequences, tools, structured output."""

    @pytest.mark.xfail(
        strict=True,
        reason="tool_choice='auto' leaves the choice to the model, and SmolLM2-135M answers 'What is the weather "
        "in San Francisco?' in prose instead of calling get_weather; required choices are constrained and pass "
        "(test_tool_calling, test_tool_choice, tests/test_tool_agent.py)",
    )
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(
        strict=True,
        reason="JSON mode constrains to any JSON object (like OpenAI's json_object); SmolLM2-135M writes "
        '{"setup": ...} without the "punchline" key the prompt asks for; json_schema and function_calling '
        "constrain the keys and pass (test_structured_output*)",
    )
    def test_json_mode(self, model) -> None:
        super().test_json_mode(model)
