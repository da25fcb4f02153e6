"""Token picking: the repetition penalty counts the reply's own tokens, never the prompt's."""

from __future__ import annotations

import torch

from templora_memory.generation import Sampling, generate_tokens

FAVOURITE, RUNNER_UP = 5, 7


class FixedLogits:
    """A logits source that always prefers FAVOURITE slightly over RUNNER_UP (a `generation.LogitsSource`)."""

    def next_logits(self, feed: list[int]) -> torch.Tensor:
        logits = torch.zeros(16)
        logits[FAVOURITE], logits[RUNNER_UP] = 10.0, 9.5
        return logits


def test_the_penalty_spares_the_prompt_and_stops_the_reply_repeating_itself():
    prompt = [FAVOURITE] * 8  # an answer repeats the question's words and the facts it recalls
    sampling = Sampling(max_new_tokens=3, repetition_penalty=1.1)
    reply = list(generate_tokens(FixedLogits(), prompt, sampling, eos_ids=set()))
    # the prompt does not count, so the favourite comes first; once in the reply it is penalised (10 / 1.1 < 9.5);
    # then both are (10 / 1.1 > 9.5 / 1.1)
    assert reply == [FAVOURITE, RUNNER_UP, FAVOURITE]
    assert list(generate_tokens(FixedLogits(), prompt, Sampling(max_new_tokens=3), eos_ids=set())) == [FAVOURITE] * 3
