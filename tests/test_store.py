"""Persistence and residency on the tiny model: exact restarts, plain-peft files, LRU eviction, bad input.

Every test that takes `store_url` runs twice: on a local directory and on the local S3 server (moto over HTTP).
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import safetensors.torch
import torch
from peft import PeftModel

from templora_memory import InvalidInputError, StoreError
from templora_memory.blobs import open_blobs
from templora_memory.message import fingerprint
from templora_memory.store import CURRENT, STATE, AgentStore, store_key
from tests.tiny import tiny_model


def _turns(n: int, start: int = 0, topic: str = "the blacksmith") -> list[dict]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": f"turn {i} about {topic}"} for i in range(start, start + n)]


def _next_token_logprobs(engine, agent_id: str) -> torch.Tensor:
    """Log-probabilities of every vocabulary token after the agent's next prompt."""
    prompt = engine.prompt_ids(agent_id)
    with engine.bank.active(agent_id) as model, torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1], dim=-1)


def _lora(engine, agent_id: str) -> list[torch.Tensor]:
    return [p.detach().clone() for p in engine.bank.parameters(agent_id)]


def _version_file(store: AgentStore, agent_id: str, name: str) -> str:
    """The path (inside the store) of one file of the agent's committed version, read from its pointer."""
    key = store_key(agent_id)
    version = json.loads(store.blobs.read(f"agents/{key}/{CURRENT}"))["version"]
    return f"agents/{key}/{version}/{name}"


def test_a_restarted_engine_continues_exactly_where_it_stopped(make_engine, store_url):
    first = make_engine(store=store_url)
    opening = [{"role": "system", "content": "You are Tom."}, *_turns(14)]
    first.add_turns("npc", opening)
    assert first.stats("npc").chunks_trained >= 2 and first.stats("npc").tokens_pending > 0
    before, stats, prompt = _next_token_logprobs(first, "npc"), first.stats("npc"), first.prompt_ids("npc")
    first.close()  # as at a process's exit: committed, lease given back

    second = make_engine(store=store_url)  # a new process would see exactly this
    assert second.stats("npc") == stats
    assert second.prompt_ids("npc") == prompt
    assert torch.equal(_next_token_logprobs(second, "npc"), before)

    more = _turns(10, start=14)  # training goes on identically: same optimizer state, seeds and L_T context
    uninterrupted = make_engine()
    uninterrupted.add_turns("npc", opening)
    uninterrupted.add_turns("npc", more)
    second.add_turns("npc", more)
    assert second.stats("npc").chunks_trained > 2
    assert all(torch.equal(a, b) for a, b in zip(_lora(uninterrupted, "npc"), _lora(second, "npc"), strict=True))


def test_by_default_the_adapter_is_stored_in_fp32_as_trained_with_its_optimizer(make_engine, tmp_path):
    """The default storage keeps the adapter as trained (not rounded, in RAM or on disk) and AdamW's moments: the
    compact form changes training results and its cost in recall is not measured, so it is opt-in."""
    engine = make_engine(store=tmp_path)
    assert (engine.config.adapter_dtype, engine.config.store_optimizer) == ("fp32", True)
    engine.add_turns("npc", [{"role": "system", "content": "You are Tom."}, *_turns(14)])
    lora = _lora(engine, "npc")
    assert not all(torch.equal(p, p.bfloat16().float()) for p in lora)  # off the bf16 grid: not rounded
    engine.close()
    folder = tmp_path / "agents" / store_key("npc")
    files = {p.name: p for p in (folder / json.loads((folder / CURRENT).read_text())["version"]).iterdir()}
    assert "optimizer.pt" in files
    stored = safetensors.torch.load_file(files["adapter_model.safetensors"])
    assert {t.dtype for t in stored.values()} == {torch.float32}
    assert sum(t.numel() for t in stored.values()) == sum(p.numel() for p in lora)


def test_the_compact_storage_keeps_a_bf16_adapter_without_optimizer_and_reloads_as_it_was_in_ram(make_engine, tmp_path):
    """Opt-in (adapter_dtype="bf16", store_optimizer=False): what a reload gives is what RAM held (the trained
    weights are rounded to bf16 after each update); training then goes on from fresh AdamW moments."""
    compact = dict(adapter_dtype="bf16", store_optimizer=False)
    first = make_engine(store=tmp_path, **compact)
    first.add_turns("npc", [{"role": "system", "content": "You are Tom."}, *_turns(14)])
    before, lora, trained = _next_token_logprobs(first, "npc"), _lora(first, "npc"), first.stats("npc").chunks_trained
    assert all(torch.equal(p, p.bfloat16().float()) for p in lora)  # on the bf16 grid in RAM too
    first.close()
    files = {p.name: p for p in (tmp_path / "agents" / store_key("npc")).glob("v*/*")}
    assert "optimizer.pt" not in files
    stored = safetensors.torch.load_file(files["adapter_model.safetensors"])
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    numel = sum(p.numel() for p in lora)
    assert 2 * numel < files["adapter_model.safetensors"].stat().st_size < 2 * numel + 200 * len(stored)  # + header
    second = make_engine(store=tmp_path, **compact)
    assert torch.equal(_next_token_logprobs(second, "npc"), before)
    assert all(torch.equal(a, b) for a, b in zip(_lora(second, "npc"), lora, strict=True))
    second.add_turns("npc", _turns(10, start=14))
    assert second.stats("npc").chunks_trained > trained  # (first.stats would read the store's newer record now)
    assert not all(torch.equal(a, b) for a, b in zip(_lora(second, "npc"), lora, strict=True))
    assert all(torch.isfinite(p).all() for p in _lora(second, "npc"))


def test_stored_adapter_loads_with_plain_peft(make_engine, store_url, tmp_path, tokenizer):
    engine = make_engine(store=store_url)
    engine.add_turns("npc", _turns(12))
    exported = engine.export("npc", tmp_path / "npc-export")
    assert {"adapter_model.safetensors", "adapter_config.json", "state.json"} <= {p.name for p in exported.iterdir()}

    peft_model = PeftModel.from_pretrained(tiny_model(tokenizer), exported)
    prompt = engine.prompt_ids("npc")
    with torch.no_grad():
        plain = peft_model(input_ids=torch.tensor([prompt])).logits[0, -1]
    with engine.bank.active("npc") as model, torch.no_grad():
        ours = model(input_ids=torch.tensor([prompt])).logits[0, -1]
    assert torch.allclose(plain, ours, atol=1e-5)


def test_export_and_import_move_an_agent_between_stores(make_engine, store_url, tmp_path):
    source = make_engine(store=store_url)
    source.add_turns("npc", _turns(12))
    source.export("npc", tmp_path / "moved")
    target = make_engine(store=tmp_path / "b")
    stats = target.import_(tmp_path / "moved", "npc-copy")
    assert stats.tokens_written == source.stats("npc").tokens_written > 0
    assert torch.equal(_next_token_logprobs(target, "npc-copy"), _next_token_logprobs(source, "npc"))
    with pytest.raises(StoreError, match="already holds"):
        target.import_(tmp_path / "moved", "npc-copy")


def test_least_recently_used_agents_leave_ram_and_come_back_unchanged(make_engine, store_url):
    engine = make_engine(store=store_url, max_resident=2)
    for agent in ("a", "b", "c"):
        engine.add_turns(agent, _turns(12, topic=agent))
    assert engine.resident_ids() == ["b", "c"]
    assert engine.agent_ids() == ["a", "b", "c"]
    assert engine.stats("a").chunks_trained >= 1  # read from the store without loading the adapter
    assert len(engine.bank.model.peft_config) == 1 + 2  # placeholder + two resident agents

    reference = make_engine()
    reference.add_turns("a", _turns(12, topic="a"))
    started = time.perf_counter()
    back = _next_token_logprobs(engine, "a")  # a comes back, b leaves
    switch_seconds = time.perf_counter() - started
    assert engine.resident_ids() == ["c", "a"]
    assert torch.equal(back, _next_token_logprobs(reference, "a"))
    assert switch_seconds < 5


def test_without_a_store_evicted_agents_spill_to_a_temporary_directory(make_engine):
    engine = make_engine(max_resident=1)
    engine.add_turns("a", _turns(12))
    written = engine.stats("a").tokens_written
    engine.add_turns("b", _turns(4))
    assert engine.resident_ids() == ["b"]
    assert engine.stats("a").tokens_written == written and engine.window("a")


def test_a_secret_never_reaches_another_agent_even_after_eviction(make_engine, store_url):
    engine = make_engine(store=store_url, max_resident=1)
    secret = engine.tokenizer("the vault code is 7719 and the guard is asleep", add_special_tokens=False)["input_ids"]
    prompt = engine.tokenizer("note:", add_special_tokens=False)["input_ids"]
    base = sum(engine.log_likelihood(None, prompt, secret))
    engine.log_likelihood("b", prompt, secret)  # b exists before a learns anything
    engine.write_tokens("a", secret * 6)
    learned = sum(engine.log_likelihood("a", prompt, secret))  # evicts b
    other = sum(engine.log_likelihood("b", prompt, secret))  # b comes back from the store, a leaves
    assert learned > base + 1.0, (base, learned)
    assert other == pytest.approx(base, abs=1e-5), (base, other)


def test_forget_deletes_the_agent_from_the_store(make_engine, store_url):
    engine = make_engine(store=store_url)
    engine.add_turns("a", _turns(4))
    folder = f"agents/{store_key('a')}"
    assert engine.store.has(store_key("a")) and engine.store.blobs.children(folder)
    assert engine.forget("a") is True
    assert engine.store.blobs.children(folder) == []
    assert engine.forget("a") is False
    assert make_engine(store=store_url).agent_ids() == []


@pytest.mark.parametrize(
    "bad", ["", "   ", "x" * 129, "../x", "/etc/passwd", "a\x00b", "a\\b", ".hidden", "two\nlines"]
)
def test_unsafe_agent_ids_are_refused_with_a_clear_error(make_engine, tmp_path, bad):
    engine = make_engine(store=tmp_path)
    with pytest.raises(InvalidInputError, match="agent_id"):
        engine.add_turns(bad, _turns(1))
    assert engine.store.blobs.children("agents") == [] and [p.name for p in tmp_path.iterdir()] == [
        "templora-store.json"
    ]


def test_a_damaged_agent_file_names_the_file_and_other_agents_still_work(make_engine, store_url):
    engine = make_engine(store=store_url)
    engine.add_turns("broken", _turns(4))
    engine.add_turns("fine", _turns(4))
    engine.close()
    pointer = json.loads(engine.store.blobs.read(f"agents/{store_key('broken')}/{CURRENT}"))
    for version in filter(None, (pointer["version"], pointer.get("previous"))):  # no good version to fall back to
        engine.store.blobs.write(f"agents/{store_key('broken')}/{version}/{STATE}", b"{ not json")

    restarted = make_engine(store=store_url)
    with pytest.raises(StoreError, match=r"state\.json"):
        restarted.add_turns("broken", _turns(1, start=4))
    assert restarted.add_turns("fine", _turns(1, start=4))  # unaffected
    assert restarted.stats("fine").turns_seen == 5


def test_a_foreign_directory_or_another_models_adapter_is_refused(make_engine, store_url):
    open_blobs(f"{store_url}/photos").write("cat.jpg", b"\xff\xd8")
    with pytest.raises(StoreError, match="not a templora-memory store"):
        AgentStore(f"{store_url}/photos")

    first = make_engine(store=f"{store_url}/s", lora_rank=4)
    first.add_turns("a", _turns(4))
    first.close()
    with pytest.raises(StoreError, match="lora_rank=4"):
        make_engine(store=f"{store_url}/s", lora_rank=8).add_turns("a", _turns(1, start=4))


def test_unusable_store_locations_are_refused_with_the_fix(tmp_path):
    with pytest.raises(StoreError, match="only local directories and s3://"):
        AgentStore("gs://bucket/memories")
    with pytest.raises(StoreError, match="storage_options apply to s3:// stores only"):
        AgentStore(tmp_path, storage_options={"endpoint_url": "http://x"})


def test_wrong_message_types_and_oversized_turns_leave_memory_untouched(make_engine, tmp_path):
    engine = make_engine(store=tmp_path)
    engine.add_turns("a", _turns(3))
    before = engine.stats("a")
    for bad in (
        "hello",
        [{"content": "no role"}],
        [{"role": "wizard", "content": "x"}],
        [{"role": "user", "content": 3}],
    ):
        with pytest.raises(InvalidInputError, match="message"):
            engine.add_turns("a", bad)
    with pytest.raises(InvalidInputError, match="longer than window_tokens"):
        engine.add_turns("a", [{"role": "user", "content": "fine"}, {"role": "assistant", "content": "word " * 400}])
    assert engine.stats("a") == before
    assert make_engine(store=tmp_path).stats("a") == before


def test_many_threads_lose_and_duplicate_no_turn(make_engine, store_url):
    engine = make_engine(store=store_url, max_resident=3)
    agents = [f"agent-{i}" for i in range(5)]
    sent = {agent: [] for agent in agents}
    errors = []

    def talk(agent: str, thread: int) -> None:
        try:
            for call in range(6):
                message = {"role": "user", "content": f"{agent} thread {thread} call {call}"}
                sent[agent].append(message)
                engine.add_turns(agent, [message])
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=talk, args=(agent, t)) for agent in agents for t in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    engine.close()
    restarted = make_engine(store=store_url)
    for agent in agents:
        state = restarted.agent(agent)
        assert sorted(state.fingerprints) == sorted(fingerprint(m) for m in sent[agent])
        assert len(set(state.fingerprints)) == 12
        streamed = sum(turn.tokens for turn in restarted.turns(agent))  # the ledger holds every turn's size
        assert state.stats.tokens_written + len(state.pending) == streamed


def test_store_files_are_json_and_safetensors_a_user_can_read(make_engine, store_url):
    engine = make_engine(store=store_url)
    engine.add_turns("a", _turns(12))
    blobs = engine.store.blobs
    record = json.loads(blobs.read(_version_file(engine.store, "a", STATE)))
    assert record["agent_id"] == "a" and record["model"] == "tiny-llama"
    assert record["config"]["chunk_tokens"] == engine.config.chunk_tokens
    peft_config = json.loads(blobs.read(_version_file(engine.store, "a", "adapter_config.json")))
    assert peft_config["r"] == engine.config.lora_rank


def test_parametric_memory_persists_through_its_store_field(monkeypatch, tokenizer, tmp_path):
    from langchain_core.messages import HumanMessage

    from templora_memory import ParametricMemory, TempLoraConfig
    from tests.conftest import TINY_CONFIG

    monkeypatch.setattr(
        "templora_memory.engine.load_model", lambda model: (tiny_model(tokenizer), tokenizer, "tiny-llama")
    )
    config = TempLoraConfig(**TINY_CONFIG)
    memory = ParametricMemory(config=config, store=tmp_path, max_resident=1)
    for i in range(6):
        memory.invoke([HumanMessage(f"question {i} about the harbour")], agent_id="sailor")
    memory.invoke("hello", agent_id="other")  # sends the sailor to the store
    assert memory.engine.resident_ids() == ["other"]

    stats, messages = memory.stats("sailor"), memory.history("sailor").messages
    memory.engine.close()  # as at a process's exit: every agent committed, its lease given back

    restarted = ParametricMemory(config=config, store=tmp_path)
    assert restarted.stats("sailor") == stats
    assert restarted.history("sailor").messages == messages
    restarted.engine.close()
    assert memory.export("sailor", tmp_path / "out").is_dir()


def test_a_store_written_before_leases_still_loads_with_its_journal(make_engine, tmp_path):
    engine = make_engine(store=tmp_path)
    engine.add_turns("npc", _turns(6))
    engine.close()
    folder = tmp_path / "agents" / store_key("npc")  # rewrite it as the old layout: bare pointer, one-file journal
    version = json.loads((folder / CURRENT).read_text())["version"]
    (folder / version).rename(folder / "v00000003")
    (folder / CURRENT).write_text("v00000003")
    lines = [json.dumps({"seq": 6 + i, "message": m}) for i, m in enumerate(_turns(2, start=6))]
    (folder / "journal.jsonl").write_text("\n".join(lines) + "\n{ torn")

    restarted = make_engine(store=tmp_path)
    assert restarted.stats("npc").turns_seen == 6  # the committed record, read without loading
    restarted.add_turns("npc", _turns(1, start=8))
    assert restarted.stats("npc").turns_seen == 9 and not (folder / "journal.jsonl").exists()
    assert not (folder / "v00000003").exists() and json.loads((folder / CURRENT).read_text())["writer"]
