"""Tiny random models of five Hugging Face causal-LM families, each with its family's chat-template conventions.

The templates are trimmed copies of the real ones, keeping what the engine must cope with: Llama 3.1 renders
tools and answers calls as one bare JSON object with "parameters"; Qwen2 uses Hermes `<tool_call>` blocks;
Mistral v0.3 insists that user and assistant alternate, puts the system message into the last user turn and
calls tools as `[TOOL_CALLS] [...]`; Phi-3 and Gemma-2 render no tools, and Gemma-2 refuses a system role and
non-alternating roles outright.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tests.tiny import HERMES, TINY_SHAPE, tiny_tokenizer

LLAMA3 = """\
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}\
{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system_message + '<|eot_id|>' }}
{%- if tools %}{{- '<|start_header_id|>user<|end_header_id|>\\n\\nRespond with a JSON object {"name": function name, \
"parameters": arguments}.\\n\\n' }}{%- for t in tools %}{{- t | tojson }}{{- '\\n' }}{%- endfor %}\
{{- '<|eot_id|>' }}{%- endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' and message.tool_calls %}\
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- for call in message.tool_calls %}\
{{- '{"name": "' + call.function.name + '", "parameters": ' + (call.function.arguments | tojson) + '}' }}\
{%- endfor %}{{- '<|eot_id|>' }}
{%- elif message.role == 'tool' %}{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + message.content \
+ '<|eot_id|>' }}
{%- else %}{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content + '<|eot_id|>' }}
{%- endif %}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"""
MISTRAL = """\
{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}\
{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}
{%- set user_messages = loop_messages | selectattr('role', 'equalto', 'user') | list %}
{%- for message in loop_messages | rejectattr('role', 'equalto', 'tool') | selectattr('tool_calls', 'undefined') %}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{- raise_exception('After the optional system \
message, conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
{%- if message.role == 'user' %}
{%- if tools and message == user_messages[-1] %}{{- '[AVAILABLE_TOOLS] ' + (tools | tojson) + '[/AVAILABLE_TOOLS]' }}\
{%- endif %}
{%- if system_message is defined and message == user_messages[-1] %}\
{{- '[INST] ' + system_message + '\\n\\n' + message.content + '[/INST]' }}
{%- else %}{{- '[INST] ' + message.content + '[/INST]' }}{%- endif %}
{%- elif message.role == 'assistant' and message.tool_calls %}{{- '[TOOL_CALLS] [' }}\
{%- for call in message.tool_calls %}{{- '{"name": "' + call.function.name + '", "arguments": ' \
+ (call.function.arguments | tojson) + '}' }}{%- if not loop.last %}{{- ', ' }}{%- endif %}{%- endfor %}\
{{- ']' + eos_token }}
{%- elif message.role == 'assistant' %}{{- ' ' + message.content + eos_token }}
{%- elif message.role == 'tool' %}{{- '[TOOL_RESULTS] {"content": ' + (message.content | tojson) + '}[/TOOL_RESULTS]' }}
{%- else %}{{- raise_exception('Only user, assistant and tool roles are supported after the system message') }}
{%- endif %}{%- endfor %}"""
PHI3 = """\
{%- for message in messages %}{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- else %}{{- eos_token }}{%- endif %}"""
GEMMA2 = """\
{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{{- raise_exception('System role not supported') }}{%- endif %}
{%- for message in messages %}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\
{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}
{{- '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"""


@dataclass(frozen=True)
class Family:
    """One architecture: its config class and kwargs, chat template, special tokens and bos/eos."""

    name: str
    config: type[PretrainedConfig]
    model: type[PreTrainedModel]
    template: str
    specials: tuple[str, ...]
    bos: str | None
    eos: str
    extra: tuple[tuple[str, object], ...] = ()


FAMILIES = [
    Family(
        "llama",
        LlamaConfig,
        LlamaForCausalLM,
        LLAMA3,
        ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>"),
        "<|begin_of_text|>",
        "<|eot_id|>",
    ),
    Family(
        "qwen2",
        Qwen2Config,
        Qwen2ForCausalLM,
        HERMES,
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        None,
        "<|im_end|>",
    ),
    Family(
        "mistral",
        MistralConfig,
        MistralForCausalLM,
        MISTRAL,
        (
            "<unk>",
            "<s>",
            "</s>",
            "[INST]",
            "[/INST]",
            "[TOOL_CALLS]",
            "[AVAILABLE_TOOLS]",
            "[/AVAILABLE_TOOLS]",
            "[TOOL_RESULTS]",
            "[/TOOL_RESULTS]",
        ),
        "<s>",
        "</s>",
    ),
    Family(
        "phi3",
        Phi3Config,
        Phi3ForCausalLM,
        PHI3,
        ("<unk>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
        None,
        "<|end|>",
        (("pad_token_id", None),),
    ),
    Family(
        "gemma2",
        Gemma2Config,
        Gemma2ForCausalLM,
        GEMMA2,
        ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
        "<bos>",
        "<end_of_turn>",
        (("head_dim", 8), ("sliding_window", 64), ("query_pre_attn_scalar", 8)),
    ),
]


def family_tokenizer(family: Family) -> PreTrainedTokenizerFast:
    """The tiny byte-level BPE with the family's special tokens, bos/eos and chat template."""
    tokenizer = tiny_tokenizer(specials=family.specials, eos=family.eos, pad=family.specials[0])
    if family.bos is not None:
        tokenizer.bos_token = family.bos
    tokenizer.chat_template = family.template
    return tokenizer


def family_model(family: Family, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> PreTrainedModel:
    """A two-layer model of the family, hidden size 32, with random weights."""
    torch.manual_seed(seed)
    kwargs = dict(
        vocab_size=len(tokenizer),
        **TINY_SHAPE,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    model = family.model(family.config(**{**kwargs, **dict(family.extra)}))
    model.eval()
    return model
