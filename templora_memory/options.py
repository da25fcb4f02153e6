"""The options every front end takes, under one set of names: none is silently ignored.

`ParametricMemory` (LangChain) and `TemploraLLM` (LlamaIndex) share these rules. Names users bring from ChatOllama
and OpenAI that mean the same thing are aliases (`num_predict` → `max_tokens`); a `TempLoraConfig` field given at
the top level goes into the config (`ParametricMemory(window_tokens=2048)`); anything else is refused with an
error that lists what is accepted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from templora_memory.config import TempLoraConfig
from templora_memory.errors import ConfigError, InvalidInputError
from templora_memory.generation import Sampling

ALIASES = {
    "num_predict": "max_tokens",  # ChatOllama
    "max_completion_tokens": "max_tokens",  # OpenAI
    "max_new_tokens": "max_tokens",  # transformers (a call's; at construction it is the config field)
    "repeat_penalty": "repetition_penalty",  # ChatOllama, llama.cpp
    "stop_sequences": "stop",  # Anthropic, Bedrock
}
SAMPLING = ("max_tokens", "temperature", "top_p", "repetition_penalty", "seed", "stop")
"""What a single call may set, besides the agent id and the tool options."""


def renamed(options: Mapping[str, Any], accepted: Iterable[str], where: str, extra_help: str = "") -> dict[str, Any]:
    """`options` under their accepted names (aliases resolved); an unknown name raises, listing the accepted ones."""
    accepted = set(accepted)
    out: dict[str, Any] = {}
    unknown = []
    for name, value in options.items():
        target = name if name in accepted else ALIASES.get(name, name)
        if target not in accepted:
            unknown.append(name)
        elif target in out:
            raise InvalidInputError(f"{where} got {target!r} twice (as {name!r} too); pass it once")
        else:
            out[target] = value
    if unknown:
        aliases = ", ".join(f"{alias} → {name}" for alias, name in ALIASES.items() if name in accepted)
        raise InvalidInputError(
            f"{where} does not take {', '.join(map(repr, sorted(unknown)))}; it accepts: {', '.join(sorted(accepted))}"
            + (f" (aliases: {aliases})" if aliases else "")
            + extra_help
        )
    return out


def settled(
    options: Mapping[str, Any], own: Iterable[str], config: TempLoraConfig | dict | None, where: str
) -> tuple[dict[str, Any], TempLoraConfig | None]:
    """A constructor's keywords split into its own fields and the config (None if none was given): `TempLoraConfig`
    fields given at the top level are merged into `config` (own fields win a shared name, e.g. `seed`); unknown
    names raise."""
    own, fields = set(own), set(TempLoraConfig.model_fields)
    mine = renamed(
        {k: v for k, v in options.items() if k in own or k not in fields},
        own,
        where,
        extra_help=", and any TempLoraConfig field",
    )
    top_level = {k: v for k, v in options.items() if k in fields and k not in own}
    if isinstance(config, dict):
        config = TempLoraConfig(**config)
    if top_level:
        base = config.model_dump(exclude_unset=True) if config is not None else {}
        config = TempLoraConfig(**{**base, **top_level})
    return mine, config


def check_engine_options(engine: object, given: Mapping[str, Any], config: TempLoraConfig | None, where: str) -> None:
    """With a shared engine, the options that build one (model, store, max_resident, config) would be ignored: refuse
    them, naming the fix."""
    building = sorted(name for name in ("model", "store", "max_resident") if given.get(name) is not None)
    if config is not None and config != getattr(engine, "config", None):
        building.append("config (or its fields)")
    if building:
        raise ConfigError(
            f"{where}(engine=...) shares that engine as it was built, so {', '.join(building)} would be ignored: "
            "pass them to MemoryEngine(...) instead, or leave engine out"
        )


def call_sampling(
    options: dict[str, Any], defaults: Mapping[str, Any], config: TempLoraConfig, where: str
) -> tuple[Sampling, tuple[str, ...]]:
    """A call's `Sampling` and stop strings: its options (aliases resolved, unknown ones refused) over `defaults`."""
    given = renamed(options, SAMPLING, where)
    value = {**defaults, **{k: v for k, v in given.items() if v is not None}}.get
    max_tokens = value("max_tokens") or config.max_new_tokens
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ConfigError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    stop = value("stop") or ()
    sampling = Sampling(
        max_new_tokens=max_tokens,
        temperature=value("temperature") or 0.0,
        top_p=value("top_p") or 1.0,
        repetition_penalty=value("repetition_penalty") or 1.0,
        seed=value("seed"),
    )
    return sampling, (stop,) if isinstance(stop, str) else tuple(stop)
