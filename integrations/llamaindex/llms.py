"""`TemploraLLM`: a LlamaIndex LLM over a `MemoryEngine`; each agent id has its own Temp-Lora memory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
from templora_memory.integrations.llamaindex._messages import to_template

from templora_memory import MemoryEngine, TempLoraConfig
from templora_memory.generation import Sampling


class TemploraLLM(CustomLLM):
    """A local chat LLM that remembers: turns leaving the prompt window are trained into the agent's LoRA.

    Example:
        >>> from llama_index.core.chat_engine import SimpleChatEngine  # doctest: +SKIP
        >>> llm = TemploraLLM(agent_id="npc-7")  # embedded SmolLM2-135M-Instruct  # doctest: +SKIP
        >>> SimpleChatEngine.from_defaults(llm=llm).chat("The gate code is 4512.")  # doctest: +SKIP
    """

    model: str | None = Field(default=None, description="Local model directory, cached HF id or .gguf; None: default.")
    agent_id: str = Field(default="default", description="The agent whose memory answers and remembers.")
    temperature: float = Field(default=0.0, ge=0.0, description="Sampling temperature; 0 is greedy.")
    max_tokens: int | None = Field(default=None, ge=1, description="Reply length cap; None uses the config's.")
    repetition_penalty: float = Field(default=1.1, ge=1.0, description="Penalty on repeated tokens (1.0: off).")

    _engine: MemoryEngine = PrivateAttr()

    def __init__(self, engine: MemoryEngine | None = None, config: TempLoraConfig | None = None, **kwargs: Any) -> None:
        """Load the model, or share an existing `MemoryEngine` (and its agents)."""
        super().__init__(**kwargs)
        self._engine = engine or MemoryEngine(self.model, config)

    @classmethod
    def class_name(cls) -> str:
        return "TemploraLLM"

    @property
    def engine(self) -> MemoryEngine:
        """The framework-free engine shared with `TemploraMemory` and LangChain's `ParametricMemory`."""
        return self._engine

    @property
    def metadata(self) -> LLMMetadata:
        config = self._engine.config
        return LLMMetadata(
            context_window=config.window_tokens,
            num_output=self.max_tokens or config.max_new_tokens,
            is_chat_model=True,
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

    def _stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        agent_id = kwargs.pop("agent_id", None) or self.agent_id
        stream = self._engine.respond(agent_id, to_template(messages), self._sampling(kwargs))
        text = ""
        for piece in stream:
            text += piece
            yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=piece)
        reply = stream.reply
        usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
        final = ChatMessage(role=MessageRole.ASSISTANT, content=reply.content)
        yield ChatResponse(message=final, delta="", additional_kwargs=usage)

    def _stream_complete(self, prompt: str, formatted: bool, **kwargs: Any) -> CompletionResponseGen:
        agent_id = kwargs.pop("agent_id", None) or self.agent_id
        if formatted:  # raw text with the agent's adapter; nothing is written
            pieces = self._engine.stream_completion(agent_id, self._engine.encode(prompt), self._sampling(kwargs))
        else:
            pieces = self._engine.respond(agent_id, [{"role": "user", "content": prompt}], self._sampling(kwargs))
        text = ""
        for piece in pieces:
            text += piece
            yield CompletionResponse(text=text, delta=piece)
        yield CompletionResponse(text=text, delta="")  # at least one response, even for an empty reply

    def _sampling(self, overrides: dict[str, Any]) -> Sampling:
        return Sampling(
            max_new_tokens=overrides.get("max_tokens", self.max_tokens or self._engine.config.max_new_tokens),
            temperature=overrides.get("temperature", self.temperature),
            repetition_penalty=overrides.get("repetition_penalty", self.repetition_penalty),
        )
