"""An OpenAI-compatible HTTP server over one `MemoryEngine` (the `server` extra: FastAPI + uvicorn).

`POST /v1/chat/completions` (streaming, tools, response formats), `POST /v1/completions` (raw text with an agent's
memory), `GET /v1/models`, memory routes under
`/v1/agents/{agent_id}` and `GET /health`. Start it with `templora-memory serve`, or from Python:

    >>> from templora_memory.server import serve  # doctest: +SKIP
    >>> serve(MemoryEngine(store="npc-memories"))  # doctest: +SKIP
"""

from templora_memory.server.app import ServerSettings, create_app
from templora_memory.server.run import BackgroundServer, serve

__all__ = ["BackgroundServer", "ServerSettings", "create_app", "serve"]
