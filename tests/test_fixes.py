"""Errors that say the fix: a bad model path, an s3:// store without credentials, a missing integration extra."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from templora_memory import ModelNotFoundError, StoreError
from templora_memory.loading import load_model


@pytest.mark.parametrize("model", ["/no/such/model", "./models/none", "nobody/no-such-model"])
def test_a_bad_model_path_says_what_to_pass(model):
    with pytest.raises(ModelNotFoundError, match="no such directory.*pass a local directory.*leave model unset"):
        load_model(model)


def test_an_s3_store_without_credentials_says_which_variables_to_set(s3_endpoint, monkeypatch, tmp_path):
    pytest.importorskip("s3fs")
    from templora_memory.store import AgentStore

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)  # the local server: nothing leaves this machine
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with pytest.raises(StoreError, match="needs S3 credentials.*AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") as error:
        AgentStore("s3://templora-test/no-credentials")
    assert error.value.__cause__ is None and error.value.__suppress_context__  # one line, not botocore's traceback


@pytest.mark.parametrize(
    ("module", "missing", "extra"),
    [
        ("templora_memory.integrations.llamaindex", "llama_index", "llamaindex"),
        ("templora_memory.integrations.langchain_middleware", "langchain", "langchain"),
    ],
)
def test_a_missing_extra_names_the_pip_line(module, missing, extra):
    code = f"import sys; sys.modules[{missing!r}] = None; import {module}"  # as if the extra were not installed
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1 and f'pip install "templora-memory[{extra}]"' in result.stderr
    assert importlib.import_module(module)  # with the extra installed it imports
