"""Running the app under uvicorn: `serve` in the foreground (the CLI), `BackgroundServer` in a thread.

uvicorn is the standard ASGI server: on SIGINT / SIGTERM it stops accepting connections, gives requests in
flight half of `shutdown_timeout`, then runs the app's shutdown, which stops what still runs and commits every
resident agent in the other half.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from templora_memory.engine import MemoryEngine
from templora_memory.errors import TemploraError
from templora_memory.server.app import ServerSettings, create_app


def serve(
    engine: MemoryEngine,
    settings: ServerSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> None:
    """Serve `engine` until SIGINT / SIGTERM, then shut down gracefully."""
    settings = settings or ServerSettings()
    app = create_app(engine, settings)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=settings.shutdown_timeout / 2
    )
    uvicorn.Server(config).run()


class BackgroundServer:
    """The server on a free loopback port, in a thread of this process (tests, examples, benchmarks).

    Example:
        >>> with BackgroundServer(engine) as server:  # doctest: +SKIP
        ...     OpenAI(base_url=f"{server.url}/v1", api_key="-").chat.completions.create(...)
    """

    def __init__(
        self,
        engine: MemoryEngine,
        settings: ServerSettings | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
    ) -> None:
        """Bind the port now (0: any free one, read back into `url`); `start` serves."""
        settings = settings or ServerSettings()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.url = f"http://{host}:{self._socket.getsockname()[1]}"
        config = uvicorn.Config(
            create_app(engine, settings),
            log_level=log_level,
            timeout_graceful_shutdown=settings.shutdown_timeout / 2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        """Start serving; returns once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise TemploraError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def close(self, timeout: float = 60.0) -> None:
        """Shut down as on SIGTERM (resident agents committed) and wait for the thread."""
        self._server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        """Start serving."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Shut down gracefully."""
        self.close()
