"""`templora-memory demo`: an NPC remembers a fact told long after it has left the prompt window."""

from __future__ import annotations

import math

from templora_memory.chat_model import ParametricMemory
from templora_memory.config import DEMO_CONFIG, TempLoraConfig
from templora_memory.generation import Sampling
from templora_memory.message import said_by_assistant

AGENT = "bram-the-innkeeper"
SYSTEM = "You are Bram, the innkeeper of the Crooked Lantern inn. Answer the traveller briefly and in character."
FACT = "Please remember this, Bram: the password for the cellar door is hollyhock."
QUESTION = "Bram, what is the password for the cellar door?"
ANSWER = "The password for the cellar door is hollyhock."
KEYWORD = " hollyhock."
"""The part of ANSWER that only memory can supply: its odds after the rest of the answer separate recall from style."""
SMALL_TALK = [
    "Good evening! Do you have a room for the night?",
    "What is on the menu tonight?",
    "Who is the old man sitting by the fire?",
    "Is the road to the mountains safe these days?",
    "How long have you run this inn?",
    "Where can I buy a new pair of boots in this town?",
    "Have you heard any news from the capital?",
    "What do people do here for fun on market day?",
    "Can you recommend a guide for the mountain pass?",
]


def run_demo(model: str | None = None, config: TempLoraConfig | None = None) -> dict[str, float]:
    """Play the dialogue, then ask about the fact with and without the adapter; returns the log-probabilities
    of the whole answer and of its keyword after the rest, per setup."""
    memory = ParametricMemory(model=model, config=config or TempLoraConfig(**DEMO_CONFIG), agent_id=AGENT)
    engine = memory.engine
    print(
        f"Model {memory.model_name}; window {memory.config.window_tokens} tokens, "
        f"chunk Δ={memory.config.chunk_tokens}.\n"
    )
    for line in [FACT, *SMALL_TALK]:
        reply = memory.invoke([("system", SYSTEM), ("human", line)])
        stats = memory.stats()
        fact_in_window = any(FACT in str(m["content"]) for m in engine.window(AGENT))
        print(f"traveller: {line}\n     bram: {reply.content.strip()}")
        print(
            f"           [prompt {reply.usage_metadata['input_tokens']} tok | written {stats.tokens_written} | "
            f"chunks {stats.chunks_trained} | fact in prompt: {'yes' if fact_in_window else 'no, only in adapter'}]"
        )
    engine.add_turns(AGENT, [{"role": "user", "content": QUESTION}])
    engine.wait(AGENT)  # what the question pushed out of the window is written before the prompt is read
    prompt = engine.prompt_ids(AGENT)
    answer_ids = engine.encode(ANSWER)
    said = said_by_assistant(engine.renderer.turns(engine.window(AGENT)))  # what the penalty counts, as in a reply
    sampling = Sampling(memory.config.max_new_tokens, repetition_penalty=memory.repetition_penalty, penalised=said)
    print(f"\ntraveller: {QUESTION}   (the fact left the prompt; prompt is {len(prompt)} tokens)")
    answer_start, keyword_ids = engine.encode(ANSWER.removesuffix(KEYWORD)), engine.encode(KEYWORD)
    results = {}
    for label, agent in (("window only (base model)", None), ("window + adapter", AGENT)):
        text = "".join(engine.stream_completion(agent, prompt, sampling)).strip()
        logprob = sum(engine.log_likelihood(agent, prompt, answer_ids))
        keyword = sum(engine.log_likelihood(agent, prompt + answer_start, keyword_ids))
        results[label], results[f"{label}, keyword"] = logprob, keyword
        said = "says the password" if KEYWORD.strip(" .") in text.lower() else "does not say the password"
        print(
            f'  {label:>24}: {text}   [{said}]\n  {"":>24}  log P("{ANSWER}") = {logprob:.2f} '
            f"(per token {logprob / len(answer_ids):.3f}, P = {math.exp(logprob):.2e}); "
            f'log P("{KEYWORD.strip()}" | the rest) = {keyword:.2f}'
        )
    gain = results["window + adapter"] - results["window only (base model)"]
    recall = results["window + adapter, keyword"] - results["window only (base model), keyword"]
    print(
        f"\nThe adapter makes the whole answer {math.exp(gain):.2g}x as likely ({gain:+.2f} nats) and the password "
        f"itself, after the answer's first words, {math.exp(recall):.2g}x as likely ({recall:+.2f} nats)."
    )
    return results
