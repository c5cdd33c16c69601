"""Process-level settings: the persistent XLA compilation cache; JSON result files written atomically.

Compiling the 30-layer SmolLM2 sampler takes tens of seconds on a 2-core CPU; the persistent cache makes
every later run of the same shapes start in a few. `enable_compile_cache()` is called by the `metapl`
command and by the test suite; notebooks can call it too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "metapl" / "jax-compile"


def enable_compile_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache at `path` (default: $METAPL_COMPILE_CACHE or
    ~/.cache/metapl/jax-compile). Setting METAPL_COMPILE_CACHE=0 disables it. Returns the directory used."""
    import jax

    chosen = path if path is not None else os.environ.get("METAPL_COMPILE_CACHE", str(DEFAULT_CACHE_DIR))
    if str(chosen) in ("0", "", "off"):
        return None
    directory = Path(chosen).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    # Cache every program, however quick to compile: tests compile many small ones.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def read_json(path: Path):
    """The JSON value in `path`, or None when the file does not exist (a result not computed yet)."""
    return json.loads(path.read_text()) if path.exists() else None


def write_json(path: Path, payload) -> None:
    """Write `payload` to `path` as indented JSON through a temporary file, so a killed process never leaves a
    half-written result for a resumed one to trust."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(path)
