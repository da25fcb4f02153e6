"""The `templora-memory` command: chat with an agent, serve agents over HTTP, or run the demo.

Benchmarks: `python -m benchmarks`. Heavy libraries (torch, transformers, LangChain) are imported only once a
command runs, so `--help` and `--version` answer at once.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import ipaddress
import logging
import os
import socket
import sys
import warnings

from templora_memory.config import DEMO_CONFIG, add_config_options, config_from_args, env_var
from templora_memory.errors import TemploraError


def _chat(args: argparse.Namespace) -> None:
    from templora_memory.chat_model import ParametricMemory
    from templora_memory.repl import Repl

    memory = ParametricMemory(model=args.model, config=config_from_args(args), agent_id=args.agent, store=args.store)
    Repl(memory, args.system).run()


def _demo(args: argparse.Namespace) -> None:
    from templora_memory.demo import run_demo

    run_demo(model=args.model, config=config_from_args(args))


def _prepare(args: argparse.Namespace) -> None:
    """Before any model loads: torch's thread count, and library warnings kept out of the dialogue and the logs."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecations, not the user's to fix
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if getattr(args, "threads", None) is not None:  # a command without the option (a table of results) sets none
        import torch

        torch.set_num_threads(args.threads)


def _check_port(host: str, port: int) -> None:
    """Fail before the model loads (a minute on a CPU) if the port is taken, as uvicorn would only after."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise TemploraError(
                f"cannot listen on {host}:{port} ({exc.strerror}): another server may be running there; "
                "pass --port with a free port (or stop the other server)"
            ) from None


def _serve(args: argparse.Namespace) -> None:
    """Load the engine and serve it until SIGINT / SIGTERM."""
    try:
        from templora_memory.server import ServerSettings, serve
    except ImportError as exc:
        raise TemploraError(
            f"`templora-memory serve` needs the server extra ({exc.name} is missing): "
            'pip install "templora-memory[server]"'
        ) from None
    from templora_memory.engine import MemoryEngine

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    settings = ServerSettings(
        api_key=args.api_key or os.environ.get("TEMPLORA_API_KEY") or None,
        workers=args.workers,
        batch_rows=args.batch_rows,
        max_queue=args.max_queue,
        request_timeout=args.request_timeout,
        max_body_bytes=args.max_body_bytes,
        max_import_bytes=args.max_import_bytes,
        shutdown_timeout=args.shutdown_timeout,
        sync_write_tokens=args.sync_write_tokens,
        max_pending_tokens=args.max_pending_tokens,
        cors_origins=tuple(args.cors_origin),
    )
    if settings.api_key is None and not _loopback(args.host):
        logging.getLogger("templora_memory.server").warning(
            "serving on %s without an API key: anyone who can reach it can read and change every agent's memory; "
            "set TEMPLORA_API_KEY",
            args.host,
        )
    _check_port(args.host, args.port)
    if args.ray:
        _serve_on_ray(args, settings)
        return
    engine = MemoryEngine(args.model, config_from_args(args), store=args.store, max_resident=args.max_resident)
    serve(engine, settings, host=args.host, port=args.port, log_level=args.log_level)


def _serve_on_ray(args: argparse.Namespace, settings: object) -> None:
    """The same app on Ray Serve: a router and `--replicas` model replicas over one shared store."""
    if args.store is None or args.max_resident is None:
        raise TemploraError("--ray needs --store (a directory all replicas reach, or s3://...) and --max-resident")
    try:
        from templora_memory.server.ray_app import EngineSpec, run
    except ImportError as exc:
        raise TemploraError(str(exc)) from None
    spec = EngineSpec(args.store, args.max_resident, args.model, config_from_args(args))
    run(spec, settings, args.replicas, host=args.host, port=args.port, gpus=args.gpus_per_replica)


def _loopback(host: str) -> bool:
    """True if `host` is only reachable from this machine."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _add_serve_options(serve: argparse.ArgumentParser) -> None:
    """Where to listen, what to serve, and how to bound the work (defaults suit one CPU machine)."""
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    serve.add_argument("--model", default=None, help="local dir, cached HF id or .gguf (default: embedded SmolLM2)")
    serve.add_argument("--store", default=None, help="directory or s3://bucket/prefix where agents persist (RAM only)")
    serve.add_argument("--max-resident", type=int, default=None, help="most adapters in RAM (per replica with --ray)")
    serve.add_argument(
        "--api-key",
        default=None,
        help="bearer key every request must carry (default: $TEMPLORA_API_KEY; prefer it: options show in ps)",
    )
    serve.add_argument("--workers", type=int, default=8, help="threads running replies and training (default: 8)")
    serve.add_argument("--batch-rows", type=int, default=8, help="replies decoded in one batch at most (default: 8)")
    serve.add_argument("--max-queue", type=int, default=64, help="requests waiting or running; then 429 (default: 64)")
    serve.add_argument("--request-timeout", type=float, default=300.0, help="seconds per request; then 504 (300)")
    serve.add_argument("--max-body-bytes", type=int, default=4 * 2**20, help="largest request body (4 MiB)")
    serve.add_argument("--max-import-bytes", type=int, default=2**30, help="largest agent archive imported (1 GiB)")
    serve.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds from SIGTERM to exit: half for replies in flight, half to stop writes and commit (30)",
    )
    serve.add_argument(
        "--sync-write-tokens", type=int, default=2048, help="tokens a request trains before its reply (2048)"
    )
    serve.add_argument(
        "--max-pending-tokens", type=int, default=65536, help="an agent's backlog past which it gets 429 (65536)"
    )
    serve.add_argument("--cors-origin", action="append", default=[], help="browser origin allowed (repeatable)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--ray", action="store_true", help="serve on Ray Serve, agents spread over replicas (ray extra)")
    serve.add_argument("--replicas", type=int, default=2, help="model replicas with --ray (default: 2)")
    serve.add_argument(
        "--gpus-per-replica", type=float, default=0.0, help="GPUs Ray gives each replica with --ray (default: 0)"
    )
    serve.epilog = "Each option also reads $TEMPLORA_<OPTION> (TEMPLORA_PORT=9000; --cors-origin: commas)."
    add_config_options(serve)


SERVE_ENVIRONMENT = (
    "host", "port", "model", "store", "max_resident", "workers", "batch_rows", "max_queue", "request_timeout",
    "max_body_bytes", "max_import_bytes", "shutdown_timeout", "sync_write_tokens", "max_pending_tokens", "log_level",
    "replicas", "gpus_per_replica", "threads",
)  # fmt: skip
"""`serve` options also read from $TEMPLORA_<OPTION> (`TEMPLORA_PORT=9000`), like the config fields; besides these,
$TEMPLORA_CORS_ORIGIN takes commas. The key is $TEMPLORA_API_KEY (see `--api-key`)."""


def _serve_environment() -> dict[str, object]:
    """`serve`'s defaults from the environment; the command line wins. A string default is converted and checked by
    argparse as if it had been typed (a bad value names the option)."""
    found: dict[str, object] = {n: os.environ[env_var(n)] for n in SERVE_ENVIRONMENT if os.environ.get(env_var(n))}
    if origins := os.environ.get(env_var("cors_origin")):
        found["cors_origin"] = [origin.strip() for origin in origins.split(",") if origin.strip()]
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="templora-memory", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    chat = commands.add_parser("chat", help="talk to an agent in a REPL (/help inside lists its commands)")
    chat.add_argument("--agent", default="default", help="agent id (each has its own adapter)")
    chat.add_argument("--system", default="", help="system message for the agent")
    chat.add_argument("--model", default=None, help="local dir, cached HF id or .gguf (default: embedded SmolLM2)")
    chat.add_argument("--store", default=None, help="directory or s3://bucket/prefix to keep the memory in (RAM only)")
    add_config_options(chat)
    serve = commands.add_parser("serve", help="serve agents over HTTP, OpenAI-compatible (the `server` extra)")
    _add_serve_options(serve)
    demo = commands.add_parser("demo", help="an NPC dialogue longer than the window, recalled from the adapter")
    demo.add_argument("--model", default=None, help="local dir, cached HF id or .gguf (default: embedded SmolLM2)")
    add_config_options(demo, **DEMO_CONFIG)
    for command, runner in ((chat, _chat), (serve, _serve), (demo, _demo)):
        command.add_argument("--threads", type=int, default=None, help="CPU threads torch uses (default: all cores)")
        command.set_defaults(run=runner, parser=command)
    serve.set_defaults(**_serve_environment())  # after every option exists, --threads included
    return parser


def run(args: argparse.Namespace) -> int:
    """Run a parsed command; a `TemploraError` is printed as `error: ...` with exit status 2 (the CLI's boundary)."""
    try:
        _prepare(args)
        args.run(args)
    except TemploraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse and run; an unknown option is reported with the usage of the sub-command it was given to."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return run(args)


def _version() -> str:
    """The installed package's version (a checkout that is not installed says so)."""
    try:
        return importlib.metadata.version("templora-memory")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


if __name__ == "__main__":
    sys.exit(main())
