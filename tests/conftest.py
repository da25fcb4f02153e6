"""Shared fixtures: engines over a tiny in-process model, and the real default model loaded once per session."""

from __future__ import annotations

import itertools
import logging
import uuid

import pytest
import torch

from templora_memory import MemoryEngine, ParametricMemory, TempLoraConfig
from templora_memory.config import env_var
from tests.tiny import HERMES, tiny_model, tiny_tokenizer

TINY_CONFIG = dict(chunk_tokens=32, window_tokens=96, train_context_tokens=32, max_new_tokens=8, learning_rate=1e-2)
"""Short chunks and window for the tiny model; the write recipe (probes, replay, anchors, precision) is the default,
and so is the storage (fp32 adapter, AdamW moments stored), so restarted engines continue exactly as uninterrupted
ones, which the persistence, crash and Ray tests compare; the compact storage is tested in test_store."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `-n 2 --dist loadgroup` (the README's test command), the tests of the real default model run on one
    worker, which loads it once, and the Ray tests on one worker, which starts one local Ray instance."""
    for item in items:
        for mark in ("real_model", "ray"):
            if item.get_closest_marker(mark) is not None:
                item.add_marker(pytest.mark.xdist_group(mark))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Model conversions go to one per-session cache, never the user's home."""
    monkeypatch.setenv("TEMPLORA_CACHE_DIR", str(tmp_path_factory.getbasetemp().parent / "templora-cache"))


@pytest.fixture(autouse=True)
def _no_config_from_the_environment(monkeypatch):
    """A developer's TEMPLORA_<FIELD> variables do not reach the tests' configs."""
    for name in TempLoraConfig.model_fields:
        monkeypatch.delenv(env_var(name), raising=False)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def make_engine(tokenizer):
    """Build a `MemoryEngine` over a fresh tiny model (same weights each time); keywords override the tiny config."""

    def build(store=None, max_resident=None, **overrides) -> MemoryEngine:
        config = TempLoraConfig(**{**TINY_CONFIG, **overrides})
        model = tiny_model(tokenizer)
        return MemoryEngine(
            config=config, loaded=(model, tokenizer, "tiny-llama"), store=store, max_resident=max_resident
        )

    return build


@pytest.fixture
def tiny_memory(make_engine) -> ParametricMemory:
    """A `ParametricMemory` over the tiny model (fast, random replies)."""
    return ParametricMemory(engine=make_engine())


@pytest.fixture
def tool_memory() -> ParametricMemory:
    """`ParametricMemory` over the tiny model with a tool-aware template (a window wide enough for tool schemas)."""
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = HERMES
    config = TempLoraConfig(chunk_tokens=32, window_tokens=900, train_context_tokens=32, max_new_tokens=8)
    engine = MemoryEngine(config=config, loaded=(tiny_model(tokenizer), tokenizer, "tiny-tools"))
    return ParametricMemory(engine=engine)


class ScriptedModel:
    """Stands in for the engine's token generation: plays scripted replies in turn and records every prompt."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        """Each prompt the model was given, decoded, newest last."""
        self.samplings: list = []
        """The `Sampling` of each call, newest last."""
        self._tokenizer = None
        self._replies = itertools.cycle([""])

    def play(self, tokenizer, *replies: str) -> list[str]:
        """Generate `replies` from now on, one per call, cycling; returns the list of prompts seen."""
        self._tokenizer, self._replies = tokenizer, itertools.cycle(replies)
        return self.prompts

    def generate(self, model, prompt, sampling, eos_ids, *_, **__):
        self.prompts.append(self._tokenizer.decode(prompt))
        self.samplings.append(sampling)
        yield from self._tokenizer(next(self._replies), add_special_tokens=False)["input_ids"]


@pytest.fixture
def scripted_model(monkeypatch) -> ScriptedModel:
    """Replace the engine's model generation with a `ScriptedModel` (the tiny model's replies are random)."""
    script = ScriptedModel()
    monkeypatch.setattr("templora_memory.reply_batch.ReplyBatch.tokens", staticmethod(script.generate))
    return script


@pytest.fixture(scope="session")
def real_engine() -> MemoryEngine:
    """The embedded SmolLM2-135M-Instruct, loaded once per test session (agents are per test)."""
    config = TempLoraConfig(chunk_tokens=64, window_tokens=128, train_context_tokens=64, max_new_tokens=24)
    return MemoryEngine(config=config)


@pytest.fixture(scope="session")
def real_tool_engine() -> MemoryEngine:
    """The default model again, with a window wide enough for tool schemas in the system message (~200 tokens each)."""
    config = TempLoraConfig(chunk_tokens=128, window_tokens=640, train_context_tokens=128, max_new_tokens=64)
    return MemoryEngine(config=config)


@pytest.fixture
def one_thread():
    """One torch thread: the tiny model gains nothing from more, and they thrash on a busy 2-core CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def start_server():
    """Start `templora_memory.server` over an engine on a free loopback port (uvicorn in a thread); stopped after."""
    from templora_memory.server import BackgroundServer, ServerSettings

    started = []

    def start(engine: MemoryEngine, log_level: str = "warning", **settings):
        server = BackgroundServer(engine, ServerSettings(**settings), log_level=log_level).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


S3_BUCKET = "templora-test"


@pytest.fixture(scope="session")
def s3_endpoint():
    """A local S3 server (moto in server mode) on a free loopback port: s3fs speaks the real wire protocol to it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch) -> str:
    """Point boto at the local S3 server (subprocesses inherit it) and make the test bucket; returns its URL."""
    import s3fs

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    if not fs.exists(S3_BUCKET):
        fs.call_s3("create_bucket", Bucket=S3_BUCKET)
    return f"s3://{S3_BUCKET}"


@pytest.fixture(params=["local", "s3"])
def store_url(request, tmp_path) -> str:
    """A new, empty store location: a local directory, then a prefix in a bucket of the local S3 server."""
    if request.param == "local":
        return str(tmp_path / "store")
    return f"{request.getfixturevalue('s3_env')}/{uuid.uuid4().hex[:12]}"
