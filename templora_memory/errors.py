"""The few exceptions templora-memory raises; each message says how to fix the problem."""


class TemploraError(Exception):
    """Base class for every error raised by templora-memory."""


class ConfigError(TemploraError, ValueError):
    """A configuration value is out of range or inconsistent with the model."""


class ModelNotFoundError(TemploraError):
    """The requested (or the embedded default) model cannot be found locally."""


class InvalidInputError(TemploraError, ValueError):
    """A message, agent id or text given by the caller cannot be used as it is."""

    def __init__(self, message: str, param: str | None = None) -> None:
        """`param` names the offending request field where one is known (the server's 400 names it)."""
        super().__init__(message)
        self.param = param


class WriteStopped(TemploraError):
    """Synchronous writing stopped before a training step because its caller gave up (timeout, client gone,
    shutdown); a chunk cut short is put back as before it, and every turn is kept, its tokens pending (committed and
    journaled) until a later write trains them."""


class UnknownAgentError(TemploraError, LookupError):
    """A read named an agent that has no memory (a typo, or an agent forgotten); check with `exists()` first."""


class UnknownTurnError(TemploraError, LookupError):
    """A turn id names no turn in the agent's ledger (forgotten, compacted away, never given); `turns()` lists them."""


class StoreError(TemploraError):
    """A persisted agent cannot be read or written."""


class StoreUnavailableError(StoreError):
    """The store could not be reached or refused an operation (network, disk); retrying later may succeed."""


class DamagedAgentError(StoreError):
    """An agent's files in the store are damaged (and no earlier good version is left); it cannot be loaded."""


class AgentBusyError(StoreError):
    """Another process holds the agent's lease (it is writing the agent) and kept it past the wait."""


class LeaseLostError(StoreError):
    """Another writer took the agent over since this process loaded it; this process's commit was refused."""


class ReplyCutOffError(InvalidInputError):
    """`max_tokens` ended a reply inside a tool call or a JSON value, which would otherwise come back incomplete."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="max_tokens")
