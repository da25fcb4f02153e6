"""The `templora-memory` command: fast --help, --version, sub-command usage, the port checked before the model loads,
and the chat REPL under a pseudo-terminal (slash commands, Ctrl-C, --store), on the tiny model saved to disk."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
import torch

from templora_memory import cli
from tests.tiny import tiny_model, tiny_tokenizer

pexpect = pytest.importorskip("pexpect")
FRAMEWORKS = ("torch", "transformers", "langchain_core", "peft")


def test_help_imports_no_framework_and_answers_at_once():
    code = "import sys; from templora_memory import cli; cli.build_parser(); print(*sorted(sys.modules))"
    started = time.perf_counter()
    help_text = subprocess.run([sys.executable, "-m", "templora_memory.cli", "--help"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    assert help_text.returncode == 0 and "chat" in help_text.stdout and "serve" in help_text.stdout
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert not [name for name in FRAMEWORKS if name in loaded]
    assert seconds < 5  # 0.4 s measured (README); a loose bound for a busy CI machine


def test_version_and_sub_command_usage(capsys):
    with pytest.raises(SystemExit) as version:
        cli.main(["--version"])
    assert version.value.code == 0 and capsys.readouterr().out.startswith("templora-memory ")
    with pytest.raises(SystemExit) as bad:
        cli.main(["serve", "--bogus"])
    err = capsys.readouterr().err
    assert bad.value.code == 2 and "usage: templora-memory serve" in err and "unrecognized arguments: --bogus" in err


def test_serve_options_come_from_the_environment_and_the_command_line_wins(monkeypatch, capsys):
    monkeypatch.setenv("TEMPLORA_PORT", "9123")
    monkeypatch.setenv("TEMPLORA_STORE", "s3://npcs/prod")
    monkeypatch.setenv("TEMPLORA_SYNC_WRITE_TOKENS", "512")
    monkeypatch.setenv("TEMPLORA_CORS_ORIGIN", "https://a.example, https://b.example")
    monkeypatch.setenv("TEMPLORA_WINDOW_TOKENS", "2048")  # a config field, read by pydantic-settings as before
    monkeypatch.setenv("TEMPLORA_THREADS", "1")
    args = cli.build_parser().parse_args(["serve", "--port", "9000"])
    assert (args.port, args.store, args.sync_write_tokens, args.threads) == (9000, "s3://npcs/prod", 512, 1)
    assert args.cors_origin == ["https://a.example", "https://b.example"] and args.host == "127.0.0.1"
    assert cli.config_from_args(args).window_tokens == 2048
    monkeypatch.setenv("TEMPLORA_MAX_QUEUE", "many")
    with pytest.raises(SystemExit) as bad:
        cli.build_parser().parse_args(["serve"])
    assert bad.value.code == 2 and "--max-queue: invalid int value: 'many'" in capsys.readouterr().err


def test_a_port_in_use_is_reported_before_the_model_loads(capsys, tmp_path):
    pytest.importorskip("fastapi")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = cli.main(["serve", "--port", str(port), "--model", str(tmp_path / "no-such-model")])
    err = capsys.readouterr().err
    assert status == 2 and f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """The tiny model saved as a model directory; its end-of-sequence logit is pinned to 0 so replies run long."""
    folder = tmp_path_factory.mktemp("tiny-model")
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id].zero_()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _chat(model_dir, store, *extra: str):
    options = ["--window-tokens", "96", "--chunk-tokens", "32", "--train-context-tokens", "32", "--threads", "1"]
    command = ["-m", "templora_memory.cli", "chat", "--model", str(model_dir), "--store", str(store), *options]
    child = pexpect.spawn(sys.executable, [*command, "--agent", "bram", *extra], encoding="utf-8", timeout=120)
    child.expect_exact("you> ")
    return child


def test_repl_commands_ctrl_c_and_store(tiny_model_dir, tmp_path):
    store = tmp_path / "memories"
    child = _chat(tiny_model_dir, store, "--max-new-tokens", "800")
    child.sendline("/help")
    child.expect_exact("/forget")
    child.expect_exact("you> ")
    child.sendline("/stats")
    child.expect_exact("'bram' has no memory yet")  # /help was not sent to the model
    child.expect_exact("you> ")
    child.sendline("Hello Bram, my name is Ada.")
    child.expect_exact("bram is thinking")  # the spinner, until the first words
    child.expect_exact("bram> ")
    child.expect(r"\S{8}")  # the reply is streaming
    child.sendintr()
    child.expect_exact("[stopped: this reply is not remembered]")
    child.expect_exact("you> ")  # the REPL is still running
    child.sendline("/stats")
    child.expect(r"turns seen (\d+)")
    assert child.match.group(1) == "1"  # the user's turn, not the stopped reply
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    transcript = child.before or ""
    child.close()
    assert child.exitstatus == 0 and "Traceback" not in transcript and "Warning" not in transcript

    again = _chat(tiny_model_dir, store, "--max-new-tokens", "4")  # a new process, the same store
    again.sendline("/stats")
    again.expect(r"turns seen (\d+)")
    assert again.match.group(1) == "1"
    again.sendline("/forget")
    again.expect_exact("forgot everything 'bram' knew")
    again.sendeof()
    again.expect(pexpect.EOF)
    again.close()
    assert again.exitstatus == 0
