"""An NPC dialogue loop: several NPCs share one base model, each remembering in its own adapter.

python -m examples.npc_dialogue --turns 4
"""

from __future__ import annotations

from langchain_core.messages import HumanMessage, SystemMessage

from examples._common import memory, parser
from templora_memory import AgentStats, MemoryEngine

NPCS = {
    "blacksmith": "You are Brom, the blacksmith of Oakridge. You sell swords and shields. Answer in one sentence.",
    "innkeeper": "You are Tilda, who keeps the Sleeping Fox inn. You know every rumour. Answer in one sentence.",
    "guard": "You are Sergeant Hale of the Oakridge gate. You are suspicious of strangers. Answer in one sentence.",
}
PLAYER_LINES = [
    "Good morning! I'm a traveller called Ivo.",
    "What can you tell me about the old castle on the hill?",
    "I found a silver key near the well.",
    "Do you remember my name?",
]


def main(argv: list[str] | None = None, engine: MemoryEngine | None = None) -> dict[str, AgentStats]:
    args = parser("several NPCs, one base model, one adapter each", turns=4).parse_args(argv)
    world = memory(engine, args.max_tokens)  # one model in memory for every NPC
    histories = {npc: [SystemMessage(persona)] for npc, persona in NPCS.items()}
    for turn in range(args.turns):
        line = PLAYER_LINES[turn % len(PLAYER_LINES)]
        print(f"player: {line}")
        for npc, history in histories.items():
            history.append(HumanMessage(line))
            reply = world.invoke(history, agent_id=npc)
            history.append(reply)
            print(f"  {npc}: {reply.content}")
    stats = {npc: world.stats(npc) for npc in NPCS}
    for npc, s in stats.items():
        print(f"{npc}: {s.turns_seen} turns seen, {s.tokens_written} tokens written into its adapter")
    return stats


if __name__ == "__main__":
    main()
