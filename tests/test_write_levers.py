"""The write-side speed levers on the tiny model: a context run without gradients, bf16 autocast, batched teaching."""

from __future__ import annotations

import random

import pytest
import torch
from peft.tuners.lora import LoraLayer

from templora_memory import precision
from templora_memory.distill import ProbeTeacher
from templora_memory.probes import ANCHORS, probes_for
from templora_memory.trainer import build_example, chunk_loss, scored_logits, train_chunk

SYSTEM = {"role": "system", "content": "You are the innkeeper."}
TOLD = [
    {"role": "user", "content": "My daughter is called Mira. I have 12 sheep on my farm. I left my horse at the mill."},
    {"role": "assistant", "content": "I will remember that."},
]


def _turns(n: int) -> list[dict]:
    return [
        {"role": ("user", "assistant")[i % 2], "content": f"My cat number {i} is called Whiskers{i}."} for i in range(n)
    ]


def _example(engine, context_tokens: int = 40, chunk_tokens: int = 24):
    ids = engine.render_prompt([SYSTEM], _turns(10))
    return build_example(
        ids[:context_tokens], ids[context_tokens : context_tokens + chunk_tokens], context_tokens, "cpu"
    )


def _loss_and_grads(model, input_ids, labels, **options) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = chunk_loss(model, input_ids, labels, **options)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


def _detach_lora_before(model, position: int):
    """Hooks that cut every LoRA layer's output before `position` from the graph: parameter gradients then come
    from the later positions only, which is what a context run without gradients computes."""

    def cut(module, args, output):
        return torch.cat([output[:, :position].detach(), output[:, position:]], dim=1)

    return [m.register_forward_hook(cut) for m in model.modules() if isinstance(m, LoraLayer)]


def _cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    flat_a, flat_b = torch.cat([g.flatten() for g in a]), torch.cat([g.flatten() for g in b])
    return torch.nn.functional.cosine_similarity(flat_a, flat_b, dim=0).item()


@pytest.fixture
def trained(make_engine):
    """An engine whose agent "a" has a trained (non-zero) adapter and no dropout, so passes are deterministic."""
    engine = make_engine(lora_dropout=0.0)
    engine.add_turns("a", _turns(12))
    return engine


def test_a_context_without_gradients_gives_the_same_loss_and_the_chunks_own_gradients(trained):
    input_ids, labels = _example(trained)
    with trained.bank.active("a") as model:
        model.train()
        full_loss, full_grads = _loss_and_grads(model, input_ids, labels)
        split_loss, split_grads = _loss_and_grads(model, input_ids, labels, context_gradients=False)
        hooks = _detach_lora_before(model, position=39)  # the context's last token predicts the chunk: graded
        try:
            _, chunk_grads = _loss_and_grads(model, input_ids, labels)
        finally:
            for hook in hooks:
                hook.remove()
        model.eval()
    assert split_loss == pytest.approx(full_loss, abs=1e-5)
    for split, own in zip(split_grads, chunk_grads, strict=True):
        assert torch.allclose(split, own, atol=1e-6, rtol=1e-4)
    # what is dropped is the gradient through the context's keys and values: real, but not the bulk of it
    assert 0.5 < _cosine(split_grads, full_grads) < 0.99999


def test_bf16_autocast_stays_within_tolerance_of_fp32(trained):
    input_ids, labels = _example(trained)
    with trained.bank.active("a") as model:
        model.train()
        fp32_loss, fp32_grads = _loss_and_grads(model, input_ids, labels)
        with precision.autocast(torch.bfloat16):
            bf16_loss, bf16_grads = _loss_and_grads(model, input_ids, labels)
        model.eval()
    assert bf16_loss != fp32_loss  # bf16 did run
    assert bf16_loss == pytest.approx(fp32_loss, rel=2e-2)
    assert _cosine(bf16_grads, fp32_grads) > 0.99
    assert all(g.dtype == torch.float32 for g in bf16_grads)  # weights and gradients stay fp32


def test_auto_precision_falls_back_to_fp32_on_a_cpu_without_bf16(monkeypatch, trained):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"fpu", "avx2", "avx512f", "avx512_vnni"})
    assert precision.resolve("auto") == torch.float32
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    assert precision.resolve("auto") == torch.float32 and precision.resolve("bf16") == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    assert precision.resolve("auto") == torch.bfloat16 and precision.resolve("fp32") == torch.float32


@pytest.mark.parametrize("cpu_has_bf16", [False, True])
def test_training_runs_in_the_precision_auto_resolves_to(monkeypatch, make_engine, cpu_has_bf16):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: cpu_has_bf16)
    losses = {}
    for setting in ("auto", "fp32", "bf16"):
        engine = make_engine(lora_dropout=0.0, train_precision=setting)
        input_ids, labels = _example(engine)
        engine.add_turns("a", _turns(2))  # creates the agent without a full chunk
        with engine.bank.active("a") as model:
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
            losses[setting] = train_chunk(model, input_ids, labels, optimizer, engine.config, first_step=5)
    assert losses["fp32"] != losses["bf16"]
    assert losses["auto"] == losses["bf16" if cpu_has_bf16 else "fp32"]


def test_levers_keep_training_reproducible(make_engine):
    weights = []
    for _ in range(2):
        engine = make_engine(train_precision="bf16", context_gradients=False, probe_questions=2)
        engine.add_turns("a", TOLD + _turns(12))
        weights.append([p.detach().clone() for p in engine.bank.parameters("a")])
    assert engine.agent("a").stats.chunks_trained >= 2
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))


def test_the_batched_teacher_matches_each_probe_read_alone(make_engine):
    engine = make_engine(probe_questions=4, train_precision="fp32")  # batching alone, compared in one precision
    teacher = ProbeTeacher(engine.renderer, engine.config)
    context = engine.render_prompt([SYSTEM], TOLD)
    with engine.bank.active(None) as base:
        taught = teacher.teach(base, context, TOLD, [SYSTEM], seed=3)
        assert len(taught) == 4 and len({len(p.answer) for p in taught}) > 1  # padding is exercised
        for probe, told in zip(probes_for(TOLD, 4, seed=3), taught, strict=True):
            follow = engine.renderer.follow_up(TOLD[-1], [{"role": "user", "content": probe.question}])
            ids = torch.tensor([context + follow + told.answer])
            with torch.no_grad():
                logits = base(input_ids=ids).logits[0, len(context) + len(follow) - 1 : -1]
            alone = torch.log_softmax(logits.float(), dim=-1).gather(1, told.top_ids)
            assert torch.allclose(alone, told.top_logprobs, atol=1e-4)


def test_the_head_run_on_scored_positions_only_gives_the_full_logits_and_gradients_there(trained):
    teacher = ProbeTeacher(trained.renderer, trained.config.model_copy(update={"anchor_probes": 4}))
    with trained.bank.active("a") as model:
        batch = teacher.batch(teacher.anchor(model, [SYSTEM], seed=1), "cpu").students  # right-padded, answers labelled
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        full = model(**inputs).logits[:, :-1][batch.labels[:, 1:] != -100]
        head_only = scored_logits(model, batch.labels, **inputs)
        assert head_only.shape == full.shape == (int((batch.labels != -100).sum()), full.shape[-1])
        assert torch.allclose(head_only, full, atol=1e-5)
        grads = [
            torch.autograd.grad(logits.logsumexp(-1).sum(), trained.bank.parameters("a"))
            for logits in (
                model(**inputs).logits[:, :-1][batch.labels[:, 1:] != -100],
                scored_logits(model, batch.labels, **inputs),
            )
        ]
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(*grads, strict=True))


def test_anchors_are_taught_once_per_system_message_and_picked_as_before(make_engine, monkeypatch):
    engine = make_engine(anchor_probes=3)
    teacher = ProbeTeacher(engine.renderer, engine.config)
    passes = []
    monkeypatch.setattr(
        teacher, "_taught", lambda *args, **kw: passes.append(1) or ProbeTeacher._taught(teacher, *args, **kw)
    )
    with engine.bank.active(None) as base:
        first, again = teacher.anchor(base, [SYSTEM], seed=5), teacher.anchor(base, [SYSTEM], seed=5)
        other = teacher.anchor(base, [SYSTEM], seed=6)
        assert len(passes) == 1  # the base model never changes: one teaching pass serves every update
        teacher.anchor(base, [{"role": "system", "content": "You are the smith."}], seed=5)
        assert len(passes) == 2  # another system message is another prompt
    told = [
        engine.renderer.reply([SYSTEM], [{"role": "user", "content": q}], {"role": "assistant", "content": a})
        for q, a in random.Random(5).sample(ANCHORS, 3)
    ]  # the same anchors a fresh sample picked before
    assert [(p.prompt, p.answer) for p in first] == told
    assert all(a is b for a, b in zip(first, again, strict=True))
    assert [p.prompt for p in other] != [p.prompt for p in first]
