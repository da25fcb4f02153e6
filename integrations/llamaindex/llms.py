"""`TemploraLLM`: a LlamaIndex LLM over a `MemoryEngine`; each agent id has its own Temp-Lora memory.

It is a `FunctionCallingLLM`: tools are offered through the engine's `ToolOffer` (the same tool choices as
LangChain's `ParametricMemory`), a required call is generated under a grammar built from the tools' JSON
schemas, and calls come back OpenAI-style in the assistant message's `additional_kwargs["tool_calls"]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection

from templora_memory import InvalidInputError, MemoryEngine, TempLoraConfig
from templora_memory.generation import CHAT_REPETITION_PENALTY, Sampling
from templora_memory.integrations.llamaindex._messages import call_arguments, from_template, to_template
from templora_memory.offer import ToolOffer
from templora_memory.options import SAMPLING, call_sampling, check_engine_options, settled
from templora_memory.replies import Reply, ReplyStream

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

LLAMAINDEX_NAMES = {"context_window": "window_tokens", "num_output": "max_tokens"}
"""LlamaIndex's names for settings this LLM has under another name."""


class TemploraLLM(FunctionCallingLLM, CustomLLM):
    """A local chat LLM that remembers: turns leaving the prompt window are trained into the agent's LoRA.

    `chat` and `stream_chat` take `tools` (OpenAI tool schemas), `tool_choice` ("auto", "none",
    "required" / "any" / True, or a tool name) and `response_format` (JSON mode or a JSON schema);
    `chat_with_tools`, `predict_and_call`, `structured_predict` and `as_structured_llm` build on them.

    Example:
        >>> from llama_index.core.chat_engine import SimpleChatEngine  # doctest: +SKIP
        >>> llm = TemploraLLM(agent_id="npc-7")  # embedded SmolLM2-135M-Instruct  # doctest: +SKIP
        >>> SimpleChatEngine.from_defaults(llm=llm).chat("The gate code is 4512.")  # doctest: +SKIP
    """

    model: str | None = Field(default=None, description="Local model directory, cached HF id or .gguf; None: default.")
    agent_id: str = Field(default="default", description="The agent whose memory answers and remembers.")
    temperature: float = Field(default=0.0, ge=0.0, description="Sampling temperature; 0 is greedy.")
    max_tokens: int | None = Field(default=None, ge=1, description="Reply length cap; None uses the config's.")
    repetition_penalty: float = Field(
        default=CHAT_REPETITION_PENALTY, ge=1.0, description="Penalty on tokens the assistant already said (1.0: off)."
    )
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (with temperature > 0).")
    seed: int | None = Field(default=None, description="Seed for sampling, so sampled replies are reproducible.")
    stop: list[str] | None = Field(default=None, description="Strings that end a reply (not returned).")
    store: str | None = Field(default=None, description="Directory or s3://bucket/prefix where agents persist.")
    max_resident: int | None = Field(default=None, ge=1, description="Most adapters in RAM; the rest wait in store.")

    _engine: MemoryEngine = PrivateAttr()

    def __init__(self, engine: MemoryEngine | None = None, config: TempLoraConfig | None = None, **kwargs: Any) -> None:
        """Load the model, or share an existing `MemoryEngine` (and its agents).

        `TempLoraConfig` fields may be given at the top level; LlamaIndex's `context_window` is the prompt window
        (`window_tokens`, which `metadata.context_window` reports) and `num_output` is `max_tokens`. Any other
        unknown keyword raises `InvalidInputError` listing the accepted ones.
        """
        kwargs = {LLAMAINDEX_NAMES.get(name, name): value for name, value in kwargs.items()}
        kwargs, config = settled(kwargs, type(self).model_fields, config, "TemploraLLM")
        if engine is not None:
            check_engine_options(engine, kwargs, config, "TemploraLLM")
        super().__init__(**kwargs)
        self._engine = engine or MemoryEngine(self.model, config, store=self.store, max_resident=self.max_resident)

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex serialises this class under."""
        return "TemploraLLM"

    @property
    def engine(self) -> MemoryEngine:
        """The framework-free engine shared with `TemploraMemory` and LangChain's `ParametricMemory`."""
        return self._engine

    @property
    def metadata(self) -> LLMMetadata:
        """Window, reply cap and model name; a chat model that calls functions."""
        config = self._engine.config
        return LLMMetadata(
            context_window=config.window_tokens,
            num_output=self.max_tokens or config.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self._engine.model_name,
        )

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Reply as the agent; new turns and the reply are written into its memory."""
        *_, final = self._stream_chat(messages, **kwargs)  # the last response carries the whole reply
        return final

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream the agent's reply; each response carries the text so far and the newest piece as `delta`."""
        return self._stream_chat(messages, **kwargs)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """`prompt` as the agent's next user turn; `formatted=True` completes raw text and writes nothing."""
        *_, final = self._stream_complete(prompt, formatted, **kwargs)
        return final

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Streaming `complete`: each response carries the text so far and the newest piece as `delta`."""
        return self._stream_complete(prompt, formatted, **kwargs)

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """`chat` arguments offering `tools`: tool choice "required" if `tool_required`, else "auto" (or as passed)."""
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(
                ChatMessage(role=MessageRole.USER, content=user_msg) if isinstance(user_msg, str) else user_msg
            )
        choice = kwargs.pop("tool_choice", None) or ("required" if tool_required else "auto")
        schemas = [tool.metadata.to_openai_tool(skip_length_check=True) for tool in tools]
        return {"messages": messages, "tools": schemas, "tool_choice": choice, **kwargs}

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The reply's calls (in `additional_kwargs["tool_calls"]`); none raises if `error_on_no_tool_call`."""
        calls = response.message.additional_kwargs.get("tool_calls") or []
        if not calls and error_on_no_tool_call:
            raise InvalidInputError(f"expected a tool call, got a reply without one: {response.message.content!r:.80}")
        return [
            ToolSelection(tool_id=call["id"], tool_name=call["function"]["name"], tool_kwargs=call_arguments(call))
            for call in calls
        ]

    def _stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Start the reply (a bad tool choice or message fails here, before any streaming) and stream it."""
        agent_id = kwargs.pop("agent_id", None) or self.agent_id
        offer = self._offer(kwargs)
        return _responses(self._engine.respond(agent_id, to_template(messages), *self._sampling(kwargs), offer=offer))

    def _offer(self, kwargs: dict[str, Any]) -> ToolOffer:
        """Pop a call's tool options (tools, tool_choice, response_format) into the engine's `ToolOffer`."""
        return ToolOffer.of(
            kwargs.pop("tools", None),
            kwargs.pop("tool_choice", None),
            kwargs.pop("response_format", None),
            self._engine.tokenizer.chat_template,
        )

    def _stream_complete(self, prompt: str, formatted: bool, **kwargs: Any) -> CompletionResponseGen:
        """Completion responses: text so far and the newest piece."""
        agent_id = kwargs.pop("agent_id", None) or self.agent_id
        sampling, stop = self._sampling(kwargs)
        if formatted:  # raw text with the agent's adapter; nothing is written
            pieces = self._engine.stream_completion(agent_id, self._engine.encode(prompt), sampling, stop)
        else:
            pieces = self._engine.respond(agent_id, [{"role": "user", "content": prompt}], sampling, stop)
        text = ""
        for piece in pieces:
            text += piece
            yield CompletionResponse(text=text, delta=piece)
        yield CompletionResponse(text=text, delta="")  # at least one response, even for an empty reply

    def _sampling(self, options: dict[str, Any]) -> tuple[Sampling, tuple[str, ...]]:
        """The call's sampling and stop strings (the package's shared rules), its keywords over the LLM's fields."""
        defaults = {name: getattr(self, name) for name in SAMPLING}
        return call_sampling(options, defaults, self._engine.config, "TemploraLLM.chat")


def _responses(stream: ReplyStream) -> ChatResponseGen:
    """Chat responses of a streaming reply; the last carries the remembered message (with any tool calls)."""
    text = ""
    for piece in stream:
        text += piece
        yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=piece)
    reply = stream.reply
    yield ChatResponse(message=from_template(reply.message()), delta="", additional_kwargs=_details(reply))


def _details(reply: Reply) -> dict[str, Any]:
    """Token counts, finish reason and the call blocks that did not parse (`invalid_tool_calls`)."""
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "finish_reason": reply.finish_reason,
        "invalid_tool_calls": reply.invalid_calls,
    }
