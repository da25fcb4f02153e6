"""The `templora-memory` command: chat with an agent or run the demo (benchmarks: `python -m benchmarks`)."""

from __future__ import annotations

import argparse
import sys

from templora_memory.config import add_config_options, config_from_args
from templora_memory.errors import TemploraError


def _chat(args: argparse.Namespace) -> None:
    from templora_memory.chat_model import ParametricMemory

    memory = ParametricMemory(model=args.model, config=config_from_args(args), agent_id=args.agent)
    system = [("system", args.system)] if args.system else []
    print(f"Chatting with agent '{args.agent}' on {memory.model_name}. Ctrl-D or /quit to leave.")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if line in ("/quit", "/exit"):
            break
        if not line:
            continue
        print(f"{args.agent}> ", end="", flush=True)
        usage = None
        for chunk in memory.stream([*system, ("human", line)]):
            print(chunk.content, end="", flush=True)
            usage = chunk.usage_metadata or usage
        stats = memory.stats(args.agent)
        print(
            f"\n  [prompt {usage['input_tokens']} tokens | chunks trained {stats.chunks_trained} | "
            f"written {stats.tokens_written} | pending {stats.tokens_pending}]"
        )


def _demo(args: argparse.Namespace) -> None:
    from templora_memory.demo import run_demo

    run_demo(model=args.model, config=config_from_args(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="templora-memory", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    chat = commands.add_parser("chat", help="talk to an agent in a REPL; shows prompt size and chunks trained")
    chat.add_argument("--agent", default="default", help="agent id (each has its own adapter)")
    chat.add_argument("--system", default="", help="system message for the agent")
    chat.add_argument("--model", default=None, help="local dir, cached HF id or .gguf (default: embedded SmolLM2)")
    add_config_options(chat)
    chat.set_defaults(run=_chat)
    demo = commands.add_parser("demo", help="an NPC dialogue longer than the window, recalled from the adapter")
    demo.add_argument("--model", default=None, help="local dir, cached HF id or .gguf (default: embedded SmolLM2)")
    from templora_memory.demo import DEMO_CONFIG

    add_config_options(demo, **DEMO_CONFIG)
    demo.set_defaults(run=_demo)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run a parsed command; a `TemploraError` is printed as `error: ...` with exit status 2 (the CLI's boundary)."""
    try:
        args.run(args)
    except TemploraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
