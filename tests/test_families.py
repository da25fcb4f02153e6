"""Any causal LM: tiny random Llama, Qwen2, Mistral, Phi-3 and Gemma-2 models, each with its family's chat template,
get LoRAs on every linear layer, write, reply, call tools in their own format, restart from the store and export
their adapter to llama.cpp."""

from __future__ import annotations

import gguf
import pytest
import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from templora_memory import MemoryEngine, TempLoraConfig
from templora_memory.generation import Sampling
from templora_memory.gguf_lora import write_gguf_lora
from templora_memory.offer import ToolOffer
from templora_memory.tools import parse_reply
from tests.conftest import TINY_CONFIG
from tests.families import FAMILIES, family_model, family_tokenizer

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add a number",
        "parameters": {"type": "object", "properties": {"a": {"enum": [1, 2]}}, "required": ["a"]},
    },
}
SYSTEM = {"role": "system", "content": "You are Tom the blacksmith."}
GGUF_ARCH = {"llama": "llama", "qwen2": "qwen2", "mistral": "llama", "phi3": "phi3", "gemma2": "gemma2"}


def _talk(n: int) -> list[dict]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": f"turn {i}: my cat is called Whiskers."} for i in range(n)]


def _engine(family, tokenizer, store) -> MemoryEngine:
    config = TempLoraConfig(**{**TINY_CONFIG, "window_tokens": 512, "max_new_tokens": 128})
    return MemoryEngine(config=config, loaded=(family_model(family, tokenizer), tokenizer, family.name), store=store)


def _next_token_logprobs(engine, agent_id: str) -> torch.Tensor:
    prompt = engine.prompt_ids(agent_id)
    with engine.bank.active(agent_id) as model, torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1], dim=-1)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_every_family_writes_replies_calls_tools_restarts_and_exports(family, tmp_path, one_thread):
    tokenizer = family_tokenizer(family)
    engine = _engine(family, tokenizer, tmp_path / "store")

    # LoRA targets resolved from the architecture: every linear layer of every block (Phi-3's fused qkv and
    # gate_up included), never the output head
    engine.agent("a")
    adapted = {
        name.removeprefix("base_model.model.")
        for name, m in engine.bank.model.named_modules()
        if isinstance(m, LoraLayer)
    }
    linears = {name for name, m in family_model(family, tokenizer).named_modules() if isinstance(m, nn.Linear)}
    assert adapted == linears - {"lm_head"} and len(adapted) >= 8

    engine.add_turns("a", [SYSTEM, *_talk(12)])
    stats = engine.stats("a")
    assert stats.chunks_trained >= 3 and stats.turns_seen == 12
    reply = engine.respond("a", [{"role": "user", "content": "What is my cat called?"}], Sampling(6)).result()
    assert reply.completion_tokens <= 6
    prompt = tokenizer.decode(engine.prompt_ids("a"))
    assert "You are Tom the blacksmith." in prompt  # Gemma-2 refuses a system role: folded into a user turn
    assert "What is my cat called?" in prompt

    # the tool-call format the family's template writes is the one replies are parsed in
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 2}}}
    asked = [{"role": "user", "content": "Add two."}]
    _, written = engine.renderer.reply([], asked, {"role": "assistant", "content": "", "tool_calls": [call]})
    parsed = parse_reply(tokenizer.decode(written, skip_special_tokens=True), tokenizer.chat_template)
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in parsed.tool_calls] == [("add", {"a": 2})]
    offer = ToolOffer.of([ADD], "required", chat_template=tokenizer.chat_template)
    forced = engine.respond("a", [{"role": "user", "content": "Add two."}], Sampling(128), offer=offer).result()
    assert [c["function"]["name"] for c in forced.tool_calls] == ["add"], forced.text

    # restart: a new process over the same store sees the same memory and the same next-token distribution
    before, stats, prompt_ids = _next_token_logprobs(engine, "a"), engine.stats("a"), engine.prompt_ids("a")
    engine.close()
    again = _engine(family, tokenizer, tmp_path / "store")
    assert again.stats("a") == stats and again.prompt_ids("a") == prompt_ids
    assert torch.equal(_next_token_logprobs(again, "a"), before)

    # llama.cpp LoRA export: one lora_a/lora_b pair per adapted layer, named as llama.cpp names the base tensors
    path = write_gguf_lora(again.bank.lora_tensors("a"), again.bank.model.config, tmp_path / "a.gguf")
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == GGUF_ARCH[family.name]
    names = {t.name for t in reader.tensors}
    assert len(names) == 2 * len(adapted) and all(n.startswith("blk.") for n in names)
