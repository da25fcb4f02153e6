"""`TempLoraConfig`: every knob of the Temp-Lora algorithm, validated at construction, settable from the environment.

Each field is also read from `TEMPLORA_<FIELD>` (pydantic-settings: `TEMPLORA_WINDOW_TOKENS=2048`); a value passed
in Python or on the command line wins over the environment, which wins over the default.
"""

from __future__ import annotations

import argparse
import os
import typing
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from templora_memory.errors import ConfigError

ALL_LINEAR = "all-linear"
ENV_PREFIX = "TEMPLORA_"
DEMO_CONFIG = dict(window_tokens=256, chunk_tokens=128, train_context_tokens=128, max_new_tokens=40)
"""`templora-memory demo`'s window is small, so the dialogue outgrows it within minutes on a CPU (default recipe)."""
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"


class TempLoraConfig(BaseSettings):
    """Hyper-parameters of Temp-Lora (Wang et al., Algorithm 1), with defaults measured on a 2-core CPU.

    The paper's values target a 7B model on a GPU; the defaults here are chosen for the
    135M default model on a CPU (see README, "Why these defaults"): shorter chunks keep one
    training step around a few seconds, and a higher learning rate stores more per step.

    Example:
        >>> TempLoraConfig(chunk_tokens=256, window_tokens=1024).chunk_tokens
        256
    """

    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", use_attribute_docstrings=True, env_prefix=ENV_PREFIX, env_ignore_empty=True
    )

    chunk_tokens: int = Field(512, ge=16, le=32768)
    """Δ: tokens written into the adapter per training update (paper: 1024)."""
    window_tokens: int = Field(1024, ge=64, le=131072)
    """L_X: the most recent tokens kept in the prompt, system message included (paper: W − Δ)."""
    train_context_tokens: int = Field(512, ge=0, le=32768)
    """L_T: preceding tokens given as (unscored) input when training on a chunk (paper: 1024)."""
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    """α: AdamW learning rate of the Temp-Lora module (paper: 5e-5)."""
    epochs: int = Field(2, ge=1, le=100)
    """n: training passes over each chunk (paper: 2)."""
    warmup_chunks: int = Field(2, ge=0, le=1000)
    """Chunks over which the learning rate warms up linearly from 0 to α (paper: 2)."""
    kl_weight: float = Field(3.0, ge=0.0, le=100.0)
    """Weight of a KL term keeping the adapter near the base model: loss = CE + kl_weight × mean KL(p_base ‖ p_adapter)
    over the chunk's scored positions (costs one no-grad forward pass per chunk; 0 turns it off). 3.0 measured on
    the recall benchmark's tuning split: general ability on questions unlike the anchors 0.0 points from the base
    model (−15.6 without it), the same exact hits, answer NLL 0.1–0.3 nats higher (docs/benchmarks.md)."""
    synthetic_questions: int = Field(0, ge=0, le=16)
    """LIFT (Mao et al. 2024): before a chunk is trained, the base model writes up to this many question/answer
    pairs about it, trained with the chunk as chat turns, loss on the answers (costs generation time; 0: off)."""
    probe_questions: int = Field(8, ge=0, le=64)
    """Context distillation (see templora_memory.probes): question–answer probes about each chunk (written as
    probe_writer says); the base model reading the chunk teaches the adapter, which reads only the question, by KL on
    the answer tokens (one teacher pass over the chunk plus a short pass per probe; 0: off)."""
    probe_writer: Literal["statements", "shapes", "model"] = "statements"
    """Who writes the probes (templora_memory.probe_writer): "statements", rules on the user's first-person
    statements (no generation); "shapes", rules on every turn and sentence shape (questions and requests reported,
    the assistant's words recalled, a cloze per name or number); "model", the base model reading the chunk writes
    each question and answer (self-study; two short generations per probe), falling back on "shapes" where its
    answer misses the fact. The default was chosen by measurement: "shapes" lowered recall on the recall
    benchmark's tuning split at 135M (docs/benchmarks.md). "model" is for capable models and unmeasured at 135M."""
    distill_weight: float = Field(1.0, ge=0.0, le=100.0)
    """Weight of the probes' KL(teacher ‖ student) next to the chunk's next-token loss."""
    distill_temperature: float = Field(1.0, gt=0.0, le=10.0)
    """Temperature T of the teacher's and the student's distributions in the probes' KL (scaled by T²)."""
    replay_probes: int = Field(64, ge=0, le=4096)
    """Most taught probes kept per agent (a uniform, seeded sample of all of them) and replayed, up to
    probe_questions per update, so earlier facts are rehearsed while later ones are written (0: no replay)."""
    anchor_probes: int = Field(8, ge=0, le=16)
    """Generic questions with written answers (`templora_memory.probes.ANCHORS`), up to this many per update, on which
    the adapter is held to the base model by the same KL, so that facts written do not erode what the model knew
    (prompt distillation's regulariser on generic prompts; one short teacher pass; 0: off)."""
    recall_tokens: int = Field(0, ge=0, le=32768)
    """Hybrid recall: before each reply, turns that left the window and best match the newest user turn (BM25) are
    put back in the prompt, before the window, in up to this many tokens on top of window_tokens (needs the
    `retrieval` extra; the turns' text is kept for it; 0: off)."""
    lora_rank: int = Field(16, ge=1, le=1024)
    """LoRA rank r of the temporary module (paper: 64)."""
    lora_alpha: float = Field(32.0, gt=0.0)
    """LoRA scaling α_LoRA; the update is scaled by lora_alpha / lora_rank (paper: 64)."""
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA input during training (paper: 0.05). Off by default: on a CPU, drawing the masks (one per
    LoRA module and pass) is slow (writes 1.23x faster without), and recall held without it (README)."""
    target_modules: Annotated[list[str] | Literal["all-linear"], NoDecode] = ALL_LINEAR
    """Modules that get a LoRA: "all-linear" or module names, a list or comma-separated (paper: all linear layers but
    the LM head)."""
    deployment: Literal["cascaded", "parallel"] = "cascaded"
    """Paper §3.2: "cascaded" trains each full chunk before the next reply; "parallel" trains it in a background
    thread on a copy of the base model while replies keep using the previous adapter (one extra model in RAM)."""
    cache_reuse: bool = False
    """Paper §2: keep each resident agent's KV cache between calls, also across adapter updates, and compute only
    the prompt tokens it does not hold (costs the cache's RAM per resident agent; see README)."""
    attention_sinks: bool = False
    """Paper §2 (StreamingLLM), with cache_reuse: turns leaving the window are evicted from the cache and the
    states after them rotated to their new positions, so a sliding window is never recomputed (RoPE models;
    the prompt's stable start, i.e. the system message, is the sink and must be at least 4 tokens)."""
    train_precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Precision of the training passes' matrix products (bf16 autocast; weights, gradients and AdamW stay fp32):
    "auto" picks bf16 where the CPU has native bf16 (AVX512-BF16 or AMX) and fp32 elsewhere."""
    context_gradients: bool = False
    """False: the L_T context before a chunk runs without gradients and its KV cache is reused by the chunk's
    forward (the loss is the same; the gradient through the context's keys and values is dropped; ~1.5x faster)."""
    decode_weights: Literal["auto", "fp32", "bf16", "int8", "int4"] = "auto"
    """Weights replies are generated with (templora_memory.decoding): a compact copy of the linear layers next to the
    fp32 ones that training and scoring use. "int4": groups of 32 with scale and zero (the default GGUF model's own
    Q4_1 grid, so lossless there; +95 MB; output head int8), "int8": per output channel, "bf16" (fp32 on CPUs without
    native bf16), "fp32": no copy; "auto": int4 where the weights already lie on an int4 grid and the CPU has native
    bf16, else fp32. Replies from prompts of more than 8 new tokens compute those on the fp32 weights."""
    decode_backend: Literal["torch", "llama.cpp"] = "torch"
    """What computes replies' logits: "torch" (decode_weights above) or "llama.cpp" on the GGUF file the model was
    loaded from (the embedded default or a .gguf path), with each agent's LoRA exported as a GGUF adapter (1.7x the
    torch decode rate in one CPU run; needs the `llamacpp` extra, which builds llama.cpp from source; holds the model's
    whole context as KV cache, ~190 MB for SmolLM2; re-exports an adapter, ~0.05 s, on the next reply after a change).
    Tokens are picked as on the torch path; training and log_likelihood stay in torch."""
    device: str = Field("auto", pattern=rf"^({DEVICE_PATTERN})$")
    """Where the model, adapters and every tensor of training and decoding live: "auto" (a CUDA GPU, else Apple MPS,
    else the CPU), "cpu", "cuda", "cuda:N" or "mps". On a CUDA GPU the base weights are held in bf16 (fp16 without
    bf16), attention runs through SDPA, decode_weights "auto" uses those weights as they are and LoRA and optimizer
    stay fp32; the compact int8/int4 decode kernels and the llama.cpp backend are CPU-only."""
    adapter_dtype: Literal["fp32", "bf16"] = "fp32"
    """Precision an agent's LoRA is stored in: "fp32", as trained (the default), or "bf16", half the bytes on disk,
    with the trained weights rounded to bf16 in RAM too after each update, so a reload gives what RAM held. bf16
    changes training results and its cost in recall has not been measured, so it is opt-in."""
    store_optimizer: bool = True
    """Store the AdamW moments with the adapter (twice its fp32 size), so training after a reload continues exactly
    as without one (the default); False stores a third of the bytes and an agent loaded from the store starts its
    next update with fresh moments, which changes training results at a recall cost not yet measured (opt-in)."""
    ledger_turns: int = Field(2048, ge=16, le=1_000_000)
    """Most entries an agent's ledger keeps (every turn and absorbed text it was told, with an id, time and role:
    `MemoryEngine.turns`); past it the oldest go, a batch at a time, and can no longer be listed or forgotten."""
    snapshot_tokens: int = Field(8192, ge=0, le=10_000_000)
    """A copy of the adapter (weights, optimizer moments as store_optimizer says, replay probes) is kept every this
    many tokens written, so forgetting a turn retrains only what came after the nearest copy before it; each costs
    the adapter's stored size again (0: none, and a deletion retrains everything since the ledger's start)."""
    snapshots_kept: int = Field(3, ge=1, le=64)
    """Most adapter copies (snapshot_tokens) kept per agent, spread over its ledger: past it the copy whose loss
    leaves the smallest gap goes (the newest and the oldest stay)."""
    max_new_tokens: int = Field(256, ge=1, le=32768)
    """Default reply length cap; reserved on top of window_tokens inside the model's context."""
    seed: int = Field(0, ge=0)
    """Seed for each agent's LoRA initialisation and dropout, so runs are reproducible."""

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        """ "q_proj,v_proj" (the environment's and the command line's form) as a list of module names."""
        return _modules(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_consistency(self) -> TempLoraConfig:
        if self.window_tokens < self.chunk_tokens:
            raise ValueError(
                f"window_tokens={self.window_tokens} must be >= chunk_tokens={self.chunk_tokens}: "
                "turns not yet written into the adapter must still fit in the prompt; "
                "raise window_tokens or lower chunk_tokens"
            )
        if self.attention_sinks and not self.cache_reuse:
            raise ValueError(
                "attention_sinks=True needs cache_reuse=True: without cache reuse every call recomputes the "
                "window's KV states, so there is no cache to keep sinks in (paper §2, footnote 1)"
            )
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("target_modules=[] trains nothing; use 'all-linear' or name at least one module")
        return self

    def __init__(self, **values: object) -> None:
        """Validate every field; a bad value raises one `ConfigError` naming field, value and range."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    def check_against_context(self, context_tokens: int) -> None:
        """Raise `ConfigError` if training or prompting would not fit in the model's context window."""
        if self.chunk_tokens + self.train_context_tokens > context_tokens:
            raise ConfigError(
                f"chunk_tokens + train_context_tokens = {self.chunk_tokens} + {self.train_context_tokens} "
                f"exceeds the model's context of {context_tokens} tokens (Δ + L_T must be <= W)"
            )
        prompt = {"window_tokens": self.window_tokens, "recall_tokens": self.recall_tokens}
        parts = {**{k: v for k, v in prompt.items() if v}, "max_new_tokens": self.max_new_tokens}
        if sum(parts.values()) > context_tokens:
            raise ConfigError(
                f"{' + '.join(parts)} = {' + '.join(map(str, parts.values()))} "
                f"exceeds the model's context of {context_tokens} tokens; lower one of them"
            )


def _describe(exc: ValidationError) -> str:
    """One readable line per invalid field: name, value given, and the constraint it broke."""
    lines = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if error["loc"]:
            field = ".".join(str(part) for part in error["loc"])
            source = f" (from ${env_var(field)})" if env_var(field) in os.environ else ""
            message = f"{field}={error.get('input')!r}{source}: {message}"
        lines.append(message)
    return "invalid TempLoraConfig: " + "; ".join(lines)


def env_var(field: str) -> str:
    """The environment variable a config field is read from: `TEMPLORA_WINDOW_TOKENS` for `window_tokens`."""
    return f"{ENV_PREFIX}{field.upper()}"


def add_config_options(parser: argparse.ArgumentParser, **defaults: object) -> None:
    """One `--field-name` option per `TempLoraConfig` field, documented by the field's docstring; `defaults` are the
    command's own (below the environment). An option not given leaves the field to the environment or default."""
    group = parser.add_argument_group("Temp-Lora config (each also from $TEMPLORA_<FIELD>)")
    for name, field in TempLoraConfig.model_fields.items():
        default = defaults.get(name, field.default)
        help_text = f"{field.description} (default: {default}; ${env_var(name)})".replace("%", "%%")
        flag, options = f"--{name.replace('_', '-')}", dict(default=argparse.SUPPRESS, help=help_text)
        if field.annotation is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
            continue
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else None
        kind = field.annotation if field.annotation in (int, float) else str
        group.add_argument(flag, type=kind, choices=choices, **options)
    parser.set_defaults(config_defaults=defaults)


def config_from_args(args: argparse.Namespace) -> TempLoraConfig:
    """The config from the options given, over the environment, over the command's defaults, over the fields'."""
    defaults = {k: v for k, v in getattr(args, "config_defaults", {}).items() if env_var(k) not in os.environ}
    given = {name: getattr(args, name) for name in TempLoraConfig.model_fields if hasattr(args, name)}
    return TempLoraConfig(**{**defaults, **given})


def _modules(value: str) -> str | list[str]:
    """ "all-linear" or comma-separated module names."""
    return value if value == ALL_LINEAR else [m.strip() for m in value.split(",") if m.strip()]
