"""An agent chain: LangChain's `create_agent` on the default model, old turns moved into the agent's adapter.

python -m examples.agent_chain --turns 6
"""

from __future__ import annotations

from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from examples._common import memory, parser
from templora_memory import AgentStats, MemoryEngine
from templora_memory.integrations.langchain_middleware import ParametricMemoryMiddleware

FACTS = [
    "My name is Mara and I run the bakery on Elm Street.",
    "The delivery van is blue and its plate is K-4512.",
    "We open at six and close at two on weekdays.",
    "Our best seller is the rye loaf with caraway.",
]


def main(argv: list[str] | None = None, engine: MemoryEngine | None = None) -> AgentStats:
    args = parser("create_agent with ParametricMemory and its middleware", turns=6).parse_args(argv)
    model = memory(engine, args.max_tokens, agent_id="bakery-assistant")
    middleware = ParametricMemoryMiddleware(model, "bakery-assistant")
    agent = create_agent(
        model,
        system_prompt="You are Mara's assistant. Answer briefly.",
        middleware=[middleware],
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": "bakery"}}
    for turn in range(args.turns):
        line = FACTS[turn] if turn < len(FACTS) else "What is the plate of the delivery van?"
        state = agent.invoke({"messages": [HumanMessage(line)]}, config)
        print(f"user: {line}\nagent: {state['messages'][-1].content}\n")
    stats = model.stats()
    print(
        f"state holds {len(state['messages'])} messages; adapter: {stats.tokens_written} tokens written "
        f"in {stats.chunks_trained} chunks"
    )
    return stats


if __name__ == "__main__":
    main()
