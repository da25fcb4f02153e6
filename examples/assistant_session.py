"""A long-running assistant session: the prompt stays within the window while the adapter takes the rest.

python -m examples.assistant_session --turns 12
"""

from __future__ import annotations

from examples._common import memory, parser
from templora_memory import AgentStats, MemoryEngine

NOTES = [
    "Note for later: my dentist appointment is on Thursday at 9.",
    "Please remember that my sister Lena's birthday is on 14 March.",
    "I am learning Portuguese; today I learned the word 'saudade'.",
    "The wifi password at the cabin is pinecone77.",
    "I parked on level 3, spot 42.",
]


def main(argv: list[str] | None = None, engine: MemoryEngine | None = None) -> AgentStats:
    args = parser("one long session; old turns go into the adapter", turns=12).parse_args(argv)
    assistant = memory(engine, args.max_tokens, agent_id="assistant")
    history = assistant.history("assistant")  # a LangChain BaseChatMessageHistory over the agent's memory
    for turn in range(args.turns):
        line = NOTES[turn % len(NOTES)] if turn < args.turns - 1 else "Where did I park?"
        reply = assistant.invoke(line)  # only the new turn is sent: the memory holds the rest
        stats = assistant.stats()
        print(
            f"[{turn + 1}] user: {line}\n    assistant: {reply.content}\n"
            f"    prompt {stats.prompt_tokens} tokens, {stats.tokens_written} written, {stats.chunks_trained} chunks"
        )
    print(f"window now holds {len(history.messages)} messages")
    return assistant.stats()


if __name__ == "__main__":
    main()
