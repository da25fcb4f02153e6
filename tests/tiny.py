"""A tiny randomly initialised Llama and a byte-level BPE tokenizer with a ChatML template, built in-process."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# A trimmed Qwen2.5 template: tools in the system turn, calls as <tool_call> blocks, results as <tool_response>.
HERMES = """\
{%- if tools %}<|im_start|>system
{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}
{% endif %}# Tools
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>
Call a tool as <tool_call>{"name": <name>, "arguments": <args>}</tool_call><|im_end|>
{% elif messages[0]['role'] == 'system' %}<|im_start|>system
{{ messages[0]['content'] }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' %}
{%- elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% elif message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{{ message.content }}{% for call in message.tool_calls %}<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
CORPUS = [
    "The quick brown fox jumps over the lazy dog. The blacksmith sells swords and shields in Oakridge.",
    "user assistant system tool Hello there! What is your name? My cat is called Whiskers. 0123456789",
    "Once upon a time a traveller asked the innkeeper about the old castle on the hill.",
]


TINY_SHAPE = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
"""Two layers, hidden size 32: a forward/backward pass takes milliseconds."""


def tiny_tokenizer(
    vocab_size: int = 512, specials: Sequence[str] = SPECIAL, eos: str = "<|im_end|>", pad: str = "<|endoftext|>"
) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on a few sentences: any text encodes, `specials` stay single tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad)
    fast.chat_template = CHATML
    return fast


def tiny_model(tokenizer: PreTrainedTokenizerFast, context: int = 1024, seed: int = 0) -> LlamaForCausalLM:
    """Two-layer Llama, hidden size 32: a forward/backward pass takes milliseconds."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **TINY_SHAPE,
        max_position_embeddings=context,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def with_random_lora(engine, agent_id: str = "a"):
    """The engine, its agent `agent_id` given a seeded random LoRA with non-zero B (as after training), so every
    layer's update changes the logits."""
    engine.agent(agent_id)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in engine.bank.parameters(agent_id):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return engine
