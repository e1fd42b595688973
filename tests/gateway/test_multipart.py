"""The `model` field of a multipart form: read, and rewritten without touching the rest."""

from __future__ import annotations

import httpx

from gateway.multipart import boundary, read_field, replace_field


def _form(model: str) -> tuple[bytes, str]:
    audio = b"RIFF\x00\r\n--not-a-boundary\r\n\xff\xfe binary"
    request = httpx.Request(
        "POST",
        "http://x/v1/audio/transcriptions",
        data={"model": model, "language": "en"},
        files={"file": ("a.wav", audio, "audio/wav")},
    )
    return request.read(), request.headers["content-type"]


def test_the_model_field_is_found_and_replaced_alone() -> None:
    body, content_type = _form("whisper-1")
    assert boundary(content_type) is not None
    assert read_field(body, content_type, "model") == "whisper-1"
    assert read_field(body, content_type, "language") == "en"
    changed = replace_field(body, content_type, "model", "large-v3")
    assert body.count(b"whisper-1") == 1
    assert changed == body.replace(b"whisper-1", b"large-v3")  # nothing else moved
    assert read_field(changed, content_type, "model") == "large-v3"


def test_other_bodies_have_no_fields() -> None:
    assert boundary("application/json") is None
    assert read_field(b'{"model": "m"}', "application/json", "model") is None
    assert replace_field(b"abc", None, "model", "x") == b"abc"
