"""The one field the gateway reads of a multipart/form-data body: `model`.

Audio transcriptions, image edits and file uploads arrive as multipart forms. The
gateway routes them by their `model` field and forwards the body byte for byte; when
the config gives the model another name upstream, only that field's value is
rewritten. No part is decoded, so a file of any size or encoding passes unchanged.
"""

from __future__ import annotations

import re

_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^;,\s]+))', re.IGNORECASE)
_NAME = re.compile(rb'\bname\s*=\s*(?:"([^"]*)"|([^;\s]+))', re.IGNORECASE)


def boundary(content_type: str | None) -> bytes | None:
    """The boundary of a multipart content type, or None for any other type."""
    if not content_type or not content_type.lower().startswith("multipart/"):
        return None
    match = _BOUNDARY.search(content_type)
    if match is None:
        return None
    return (match.group(1) or match.group(2)).encode("latin-1")


def find_field(content: bytes, mark: bytes, name: str) -> tuple[int, int] | None:
    """Where the value of the form field `name` lies in `content` (start, end), or None.
    `mark` is the boundary; only fields without a filename count."""
    delimiter = b"--" + mark
    wanted = name.encode()
    pos = content.find(delimiter)
    while pos >= 0:
        head_start = pos + len(delimiter)
        if content.startswith(b"--", head_start):
            return None  # the closing delimiter
        head_end = content.find(b"\r\n\r\n", head_start)
        if head_end < 0:
            return None
        head = content[head_start:head_end]
        value_start = head_end + 4
        nxt = content.find(b"\r\n" + delimiter, value_start)
        if nxt < 0:
            return None
        for line in head.split(b"\r\n"):
            if not line.lower().startswith(b"content-disposition:"):
                continue
            match = _NAME.search(line)
            field = match and (match.group(1) if match.group(1) is not None else match.group(2))
            if field == wanted and b"filename" not in line.lower():
                return value_start, nxt
        pos = nxt + 2
    return None


def read_field(content: bytes, content_type: str | None, name: str) -> str | None:
    mark = boundary(content_type)
    if mark is None:
        return None
    span = find_field(content, mark, name)
    if span is None:
        return None
    return content[span[0] : span[1]].decode("utf-8", "replace")


def replace_field(content: bytes, content_type: str | None, name: str, value: str) -> bytes:
    """`content` with the value of field `name` replaced (unchanged when absent)."""
    mark = boundary(content_type)
    span = None if mark is None else find_field(content, mark, name)
    if span is None:
        return content
    return content[: span[0]] + value.encode() + content[span[1] :]
