"""An agent loop on the real default model: constrained tool calls, tool results, answers, and memory through it all.

SmolLM2-135M-Instruct calls a tool (generated under the tool's grammar), the loop executes it and sends
the result back, the model answers; the conversation outgrows the prompt window, so its turns — calls
and results included — are trained into the agent's adapter as chunks.
"""

from __future__ import annotations

from typing import Literal

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool

from templora_memory import MemoryEngine, ParametricMemory, TempLoraConfig

pytestmark = pytest.mark.real_model

PRICES = {"bread": "2.40 EUR", "milk": "1.10 EUR", "eggs": "3.20 EUR", "apples": "2.90 EUR"}
QUESTIONS = [f"How much do {item} cost at the market today?" for item in PRICES] * 2


@tool
def market_price(item: Literal["bread", "milk", "eggs", "apples"]) -> str:
    """Look up today's market price of an item."""
    return PRICES[item]


@pytest.fixture(scope="module")
def memory() -> ParametricMemory:
    """A window of 320 tokens (the tool section takes ~150) and chunks of 80, so the loop trains several chunks; one
    epoch of the plain next-token update (no probes, anchors or KL: the recall recipe is tested on its own) keeps
    it quick."""
    config = TempLoraConfig(
        chunk_tokens=80,
        window_tokens=320,
        train_context_tokens=128,
        max_new_tokens=40,
        epochs=1,
        probe_questions=0,
        anchor_probes=0,
        kl_weight=0.0,
    )
    return ParametricMemory(engine=MemoryEngine(config=config))


def test_agent_loop_calls_tools_answers_and_remembers_beyond_the_window(memory):
    caller = memory.bind_tools([market_price], tool_choice="any").bind(agent_id="shopper")
    answerer = memory.bind(agent_id="shopper", max_tokens=24)  # tools not offered: the model answers in words
    window = memory.config.window_tokens
    chosen = []
    for question in QUESTIONS:
        call = caller.invoke([HumanMessage(question)])  # only the new message: the agent's window has the rest
        assert call.invalid_tool_calls == [] and [c["name"] for c in call.tool_calls] == ["market_price"]
        item = call.tool_calls[0]["args"]["item"]
        assert item in PRICES  # the grammar allows only the schema's enum
        chosen.append(item)
        answer = answerer.invoke([ToolMessage(market_price.invoke(item), tool_call_id=call.tool_calls[0]["id"])])
        assert answer.content and not answer.tool_calls
        assert call.usage_metadata["input_tokens"] <= window and answer.usage_metadata["input_tokens"] <= window
    stats = memory.stats("shopper")
    assert stats.turns_seen == 4 * len(QUESTIONS)  # question, call, result and answer per round
    assert stats.tokens_written + stats.tokens_pending > 2 * window  # the conversation outgrew the window
    assert stats.chunks_trained >= 4
    written = memory.engine.tokenizer.decode(memory.engine.agent("shopper").written)
    assert "<tool_call>" in written or "<tool_response>" in written  # tool turns went into the adapter
    assert sum(item in question for item, question in zip(chosen, QUESTIONS, strict=True)) >= len(QUESTIONS) // 2
