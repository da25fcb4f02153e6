"""`templora-memory chat`: a REPL with one agent. Slash commands never reach the model; Ctrl-C stops a reply.

While the agent's first words are awaited (the prompt is read and, when a chunk is due, older turns are trained
into its adapter, which takes seconds on a CPU) a spinner shows (rich). Ctrl-C during a reply stops it at the next
piece (a chunk being written is finished first, so the adapter is never left half-trained); a stopped reply is not
remembered. Ctrl-C at the prompt only clears the line; Ctrl-D or /quit leaves.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

from rich.console import Console

from templora_memory.chat_model import ParametricMemory

COMMANDS = {
    "/help": "show these commands",
    "/stats": "what the agent's memory holds: turns seen, tokens written into its adapter, chunks trained",
    "/forget": "destroy the agent's memory (its adapter and its window)",
    "/quit": "leave (also /exit or Ctrl-D); with --store the memory is kept for next time",
}


class Repl:
    """One agent's dialogue in a terminal."""

    def __init__(self, memory: ParametricMemory, system: str = "", console: Console | None = None) -> None:
        self.memory = memory
        self.agent = memory.agent_id
        self.system = [("system", system)] if system else []
        self.console = console or Console(highlight=False)
        self._stop = threading.Event()

    def run(self, read: Callable[[str], str] = input) -> None:
        """Read lines until Ctrl-D or /quit, then commit the agent to the store (when there is one)."""
        try:
            self._dialogue(read)
        finally:
            self.memory.engine.close()

    def _dialogue(self, read: Callable[[str], str]) -> None:
        """A slash command runs here; any other line goes to the agent."""
        where = self.memory.store or "RAM only: pass --store DIR to keep it"
        print(f"Chatting with agent '{self.agent}' on {self.memory.model_name} (memory: {where}).")
        print("/help lists the commands; Ctrl-C stops a reply; Ctrl-D or /quit leaves.")
        while True:
            try:
                line = read("you> ").strip()
            except EOFError:
                print()
                return
            except KeyboardInterrupt:
                print("\n(Ctrl-D or /quit leaves)")
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return
            elif line:
                self.reply(line)

    def command(self, line: str) -> bool:
        """Run a slash command; False when it is time to leave."""
        name = line.split()[0].lower()
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            for command, text in COMMANDS.items():
                print(f"  {command:<8} {text}")
        elif name == "/stats":
            self.print_stats()
        elif name == "/forget":
            forgot = self.memory.forget(self.agent)
            print(f"  forgot everything '{self.agent}' knew" if forgot else f"  '{self.agent}' had no memory")
        else:
            print(f"  unknown command {name}; /help lists the commands (nothing was sent to the agent)")
        return True

    def print_stats(self) -> None:
        """The agent's counters, or that it has no memory yet."""
        if not self.memory.exists(self.agent):
            print(f"  '{self.agent}' has no memory yet: say something")
            return
        stats = self.memory.stats(self.agent)
        print(
            f"  turns seen {stats.turns_seen} | written into the adapter {stats.tokens_written} tokens in "
            f"{stats.chunks_trained} chunks | pending {stats.tokens_pending} | last prompt {stats.prompt_tokens} tokens"
        )

    def reply(self, line: str) -> None:
        """Stream the agent's reply to `line`; Ctrl-C stops it (not remembered)."""
        before = self.memory.stats(self.agent).chunks_trained if self.memory.exists(self.agent) else 0
        started, usage, stopped = time.perf_counter(), None, False
        stream = self.memory.stream([*self.system, ("human", line)])
        with self._interruptible(), self._waiting() as waiting:
            for chunk in stream:
                if self._stop.is_set():
                    stopped = True
                    break
                waiting.done()
                print(chunk.content, end="", flush=True)
                usage = chunk.usage_metadata or usage
            stopped = stopped or self._stop.is_set()
            waiting.done()
        stream.close()
        if stopped:
            print("  [stopped: this reply is not remembered]")
            return
        stats = self.memory.stats(self.agent)
        trained = stats.chunks_trained - before
        wrote = f" | wrote {trained} chunk{'s' * (trained > 1)} into memory" if trained else ""
        print(
            f"\n  [prompt {usage['input_tokens'] if usage else '?'} tokens | chunks trained {stats.chunks_trained} | "
            f"written {stats.tokens_written} | pending {stats.tokens_pending}{wrote} | "
            f"{time.perf_counter() - started:.1f} s]"
        )

    @contextmanager
    def _interruptible(self):
        """Ctrl-C sets a flag the reply loop checks at each piece, instead of raising inside a training step."""
        self._stop.clear()

        def interrupted(signum, frame) -> None:
            self._stop.set()

        previous = signal.signal(signal.SIGINT, interrupted)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    @contextmanager
    def _waiting(self):
        """A spinner until the first piece of the reply: reading the prompt, and writing a chunk when one is due."""
        status = self.console.status(f"[dim]{self.agent} is thinking (and writing older turns into memory)…[/dim]")
        spinner = _Spinner(status, f"{self.agent}> ")
        try:
            yield spinner
        finally:
            spinner.done()


class _Spinner:
    """A rich status shown until `done`, which then starts the agent's line."""

    def __init__(self, status, prefix: str) -> None:
        self.status, self.prefix, self.shown = status, prefix, True
        status.start()

    def done(self) -> None:
        if self.shown:
            self.status.stop()
            self.shown = False
            print(self.prefix, end="", flush=True)
