"""The shortest text that completes a prefix of compact JSON: what an answer under a
JSON grammar is steered to write when its token budget is about to run out, so that
even a cut answer parses (`finish_reason` stays "length").

A scanner over the text so far (strings with their escapes, numbers, literals, the stack
of open objects and arrays); no library: it runs on the few steps before the budget
ends. A key left without a value gets `null`; after a comma in an object, `"":null`.
"""

from __future__ import annotations

LITERALS = ("true", "false", "null")
NUMBER_CHARS = frozenset("0123456789+-.eE")


class _Scan:
    def __init__(self) -> None:
        self.stack: list[str] = []  # "{" or "["
        # value, first_value (after "["), first_key (after "{"), key, colon, after,
        # string, number, literal, done
        self.state = "value"
        self.key = False  # the string being read is a key
        self.escape = False
        self.hex_left = 0  # hex digits still due in a \\u escape
        self.literal = ""  # the rest of a literal being read
        self.number = ""

    def feed(self, ch: str) -> bool:
        """False when `ch` cannot continue JSON here."""
        state = self.state
        if state == "string":
            return self._string(ch)
        if state == "literal":
            if not self.literal.startswith(ch):
                return False
            self.literal = self.literal[1:]
            if not self.literal:
                self._value_done()
            return True
        if state == "number":
            if ch in NUMBER_CHARS:
                self.number += ch
                return True
            self._value_done()
            return self.feed(ch)
        if ch in " \t\r\n":
            return True
        if state in ("value", "first_value"):
            return self._value(ch, state == "first_value")
        if state in ("key", "first_key"):
            if ch == "}" and state == "first_key":
                return self._close("}")
            if ch != '"':
                return False
            self.state, self.key = "string", True
            return True
        if state == "colon":
            if ch != ":":
                return False
            self.state = "value"
            return True
        if state == "after":
            if ch == ",":
                self.state = "key" if self.stack[-1] == "{" else "value"
                return True
            return self._close(ch)
        return False  # done: nothing may follow

    def _value(self, ch: str, may_close: bool) -> bool:
        if ch == "]" and may_close:
            return self._close("]")
        if ch in "{[":
            self.stack.append(ch)
            self.state = "first_key" if ch == "{" else "first_value"
        elif ch == '"':
            self.state, self.key = "string", False
        elif ch in "-0123456789":
            self.state, self.number = "number", ch
        else:
            rest = next((w[1:] for w in LITERALS if w[0] == ch), None)
            if rest is None:
                return False
            self.state, self.literal = "literal", rest
        return True

    def _string(self, ch: str) -> bool:
        if self.hex_left:
            self.hex_left -= 1
        elif self.escape:
            self.escape = False
            self.hex_left = 4 if ch == "u" else 0
        elif ch == "\\":
            self.escape = True
        elif ch == '"':
            if self.key:
                self.state = "colon"
            else:
                self._value_done()
        return True

    def _close(self, ch: str) -> bool:
        if not self.stack or {"{": "}", "[": "]"}[self.stack[-1]] != ch:
            return False
        self.stack.pop()
        self._value_done()
        return True

    def _value_done(self) -> None:
        self.state = "after" if self.stack else "done"

    def closing(self) -> str:
        out = ""
        state = self.state
        if state == "string":
            out += ("n" if self.escape else "") + "0" * self.hex_left + '"'
            out += ":null" if self.key else ""
        elif state == "number":
            out += "0" if self.number[-1] in "+-.eE" else ""
        elif state == "literal":
            out += self.literal
        elif state == "colon":
            out += ":null"
        elif state == "value":
            out += "null"
        elif state == "key":
            out += '"":null'
        return out + "".join("}" if c == "{" else "]" for c in reversed(self.stack))


def json_closing(text: str) -> str | None:
    """What completes `text` into one JSON value; None if `text` is not a prefix of one
    (or is empty: any value would do)."""
    if not text.strip():
        return None
    scan = _Scan()
    for ch in text:
        if not scan.feed(ch):
            return None
    return scan.closing()
