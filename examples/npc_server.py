"""Three NPCs played through the OpenAI-compatible server, as a game engine would: plain HTTP, one agent per NPC.

python -m examples.npc_server --turns 2                                 # starts a server on a free local port
python -m examples.npc_server --base-url http://127.0.0.1:8000          # or talks to `templora-memory serve`

Each request carries the NPC's persona and only the player's new line: the server remembers the rest.
The client is the standard library's urllib, to show there is nothing Python-specific about it.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.request
from collections.abc import Iterator
from urllib.parse import quote

from examples._common import memory, parser
from examples.npc_dialogue import NPCS, PLAYER_LINES
from templora_memory import MemoryEngine


def main(argv: list[str] | None = None, engine: MemoryEngine | None = None) -> dict[str, dict]:
    """Play the NPCs for --turns lines; returns each NPC's stats as the server reports them."""
    options = parser("three NPCs through the HTTP server, one agent id each", turns=4)
    options.add_argument("--base-url", default=None, help="a running server (default: start one on a free port)")
    args = options.parse_args(argv)
    key = os.environ.get("TEMPLORA_API_KEY", "")
    with _server(args.base_url, engine, args.max_tokens) as base_url:
        for turn in range(args.turns):
            line = PLAYER_LINES[turn % len(PLAYER_LINES)]
            print(f"player: {line}")
            for npc, persona in NPCS.items():
                messages = [{"role": "system", "content": persona}, {"role": "user", "content": line}]
                body = {"model": "default", "messages": messages, "max_tokens": args.max_tokens}
                reply = _request(f"{base_url}/v1/chat/completions", npc, key, body)
                print(f"  {npc}: {reply['choices'][0]['message']['content']}")
        stats = {npc: _request(f"{base_url}/v1/agents/{quote(npc, safe='')}", npc, key) for npc in NPCS}
    for npc, s in stats.items():
        print(f"{npc}: {s['turns_seen']} turns seen, {s['tokens_written']} tokens written into its adapter")
    return stats


def _request(url: str, agent_id: str, key: str, body: dict | None = None) -> dict:
    """GET (or POST `body` as JSON) with the agent's id and the API key; the JSON answer."""
    headers = {
        "Content-Type": "application/json",
        "X-Agent-Id": quote(agent_id, safe=""),
        "Authorization": f"Bearer {key}",
    }
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=600) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def _server(base_url: str | None, engine: MemoryEngine | None, max_tokens: int) -> Iterator[str]:
    """The server to talk to: the one at `base_url`, or one started here over `engine` (default: the examples')."""
    if base_url is not None:
        yield base_url.rstrip("/")
        return
    from templora_memory.server import BackgroundServer

    with BackgroundServer(engine or memory(None, max_tokens).engine) as server:
        yield server.url


if __name__ == "__main__":
    main()
