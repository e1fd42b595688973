"""Where the engine's files go, and the environment of the kernel build: the one module
of backend/ that touches the process environment.

The engine reads no settings from the environment: it takes them as parameters
(EngineConfig: kernels, compiler, home; `home` of loading.model_store), and whoever
starts it decides where they come from (the gateway reads LLM_GATEWAY_CPU_KERNELS, CXX
and LLM_GATEWAY_HOME in gateway/config/environment.py).

`home_dir()` is where files go when no home is given: the user cache folder
(~/.cache/llm-gateway). `compiler_environment()` is for torch's extension builder,
which takes its compiler only from CXX and finds ninja only on PATH: the kernel build
sets both here, for the duration of the build, and puts them back after.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from platformdirs import user_cache_dir

COMPILER_VARIABLE = "CXX"


def home_dir(home: Path | None = None) -> Path:
    """llm-gateway's own folder: `home` when given, else the user cache folder."""
    return Path(home).expanduser() if home is not None else Path(user_cache_dir("llm-gateway"))


@contextmanager
def compiler_environment(compiler: str, path_dirs: Sequence[Path] = ()) -> Iterator[None]:
    """CXX = `compiler` and `path_dirs` ahead on PATH while the block runs, then as before."""
    saved = {name: os.environ.get(name) for name in (COMPILER_VARIABLE, "PATH")}
    os.environ[COMPILER_VARIABLE] = compiler
    if path_dirs:
        os.environ["PATH"] = os.pathsep.join([*map(str, path_dirs), saved["PATH"] or ""])
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
