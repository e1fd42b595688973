"""vLLM's tokenizer endpoints on the real server: what lm-evaluation-harness's remote
tokenizer reads, and the 400/404s around them."""

from __future__ import annotations

from pathlib import Path

import httpx

from backend.loading.gguf_file import GGUFFile
from backend.tokenizer import Tokenizer
from tests.serving import MODEL_ID


def test_tokenize_detokenize_and_info(server_url: str, smollm2_gguf: Path) -> None:
    tokenizer = Tokenizer.from_gguf_metadata(GGUFFile(smollm2_gguf).metadata)
    text = "Tokens, counted by the server: ünïcode too."
    r = httpx.post(f"{server_url}/tokenize", json={"model": MODEL_ID, "prompt": text})
    assert r.status_code == 200
    body = r.json()
    assert body["tokens"] == tokenizer.encode(text, add_special_tokens=True)
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] > 0
    back = httpx.post(f"{server_url}/detokenize", json={"tokens": body["tokens"]}).json()
    assert back == {"prompt": text}
    chat = httpx.post(
        f"{server_url}/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}
    ).json()
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert chat["tokens"] == tokenizer.encode(rendered)
    info = httpx.get(f"{server_url}/tokenizer_info").json()
    assert info["eos_token"] == tokenizer.eos_token and "im_start" in info["chat_template"]
    eos = httpx.post(
        f"{server_url}/tokenize", json={"prompt": info["eos_token"], "add_special_tokens": False}
    ).json()
    assert eos["tokens"] == [tokenizer.eos_token_id]


def test_tokenizer_errors(server_url: str) -> None:
    cases = [
        ("/tokenize", {"model": "no-such-model", "prompt": "x"}, 404),
        ("/tokenize", {"prompt": "x", "messages": []}, 400),
        ("/detokenize", {"tokens": [10**9]}, 400),
        ("/detokenize", {"tokens": "abc"}, 400),
    ]
    for path, body, status in cases:
        r = httpx.post(server_url + path, json=body)
        assert r.status_code == status, (path, body, r.text)
        assert "message" in r.json()["error"]
    assert httpx.get(f"{server_url}/tokenize").status_code == 405


def test_lm_eval_finds_the_remote_tokenizer(server_url: str) -> None:
    from lm_eval.utils import check_remote_tokenizer_support

    assert check_remote_tokenizer_support(server_url + "/v1/completions")
