"""Where things are in a TOML text: tomllib keeps no positions, so the simulator's messages about
a fleet file find each table, key and array element's line again here."""

from __future__ import annotations

import bisect
import re
import tomllib

#: A path into a document as pydantic reports it: ("devices", 2, "models", 1, "p95_ms").
Loc = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR = re.compile(r"[^,\]}\n#]*")  # a number, boolean or date: up to what ends a value


class TomlLines:
    """The line of every table, key and array element of a TOML text tomllib has accepted, by
    its path as pydantic reports it. tomllib keeps no positions: this reads just enough TOML
    (headers, keys, strings, brackets) to find them again, and answers line 1 for anything it
    cannot place."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.lines: dict[Loc, int] = {}
        self._newlines = [i for i, c in enumerate(text) if c == "\n"]
        self._tables_in: dict[Loc, int] = {}  # array of tables -> how many [[...]] so far
        try:
            self._document()
        except (IndexError, AttributeError, tomllib.TOMLDecodeError):
            pass  # not expected for a text tomllib accepted; keep what was found

    def line_of(self, loc: Loc) -> int:
        """The line of ``loc``, else of its nearest enclosing table or key that is written
        (a missing key: its table's header), else 1."""
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return 1

    def _line(self) -> int:
        return bisect.bisect_left(self._newlines, self.pos) + 1

    def _note(self, path: Loc) -> None:
        line = self._line()
        for i in range(1, len(path) + 1):
            self.lines.setdefault(path[:i], line)

    def _skip(self) -> None:
        """Past blanks, newlines and comments."""
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c in " \t\r\n":
                self.pos += 1
            elif c == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    def _document(self) -> None:
        table: Loc = ()
        while True:
            self._skip()
            if self.pos >= len(self.text):
                return
            if self.text[self.pos] == "[":
                table = self._header()
            else:
                self._key_value(table)

    def _header(self) -> Loc:
        many = self.text.startswith("[[", self.pos)
        self.pos += 2 if many else 1
        keys = self._key()
        self.pos = self.text.index("]]" if many else "]", self.pos) + (2 if many else 1)
        # A table under an array of tables belongs to its latest element: [[devices.models]]
        # after the third [[devices]] is ("devices", 2, "models", n).
        path: Loc = ()
        for k in keys[:-1]:
            path += (k,)
            if path in self._tables_in:
                path += (self._tables_in[path] - 1,)
        path += (keys[-1],)
        if many:
            n = self._tables_in.get(path, 0)
            self._tables_in[path] = n + 1
            path += (n,)
        self._note(path)
        return path

    def _key(self) -> tuple[str, ...]:
        parts = []
        while True:
            while self.text[self.pos] in " \t":
                self.pos += 1
            if self.text[self.pos] in "\"'":
                parts.append(self._string())
            else:
                m = _BARE_KEY.match(self.text, self.pos)
                assert m is not None
                parts.append(m.group())
                self.pos = m.end()
            while self.text[self.pos] in " \t":
                self.pos += 1
            if self.text[self.pos] != ".":
                return tuple(parts)
            self.pos += 1

    def _key_value(self, table: Loc) -> None:
        path = table + self._key()
        self._note(path)
        self.pos = self.text.index("=", self.pos) + 1
        while self.text[self.pos] in " \t":
            self.pos += 1
        self._value(path)

    def _value(self, path: Loc) -> None:
        c = self.text[self.pos]
        if c == "[":
            self.pos += 1
            i = 0
            while True:
                self._skip()
                if self.text[self.pos] == "]":
                    self.pos += 1
                    return
                self._note(path + (i,))
                self._value(path + (i,))
                self._skip()
                if self.text[self.pos] == ",":
                    self.pos += 1
                i += 1
        elif c == "{":
            self.pos += 1
            while True:
                self._skip()
                if self.text[self.pos] == "}":
                    self.pos += 1
                    return
                self._key_value(path)
                self._skip()
                if self.text[self.pos] == ",":
                    self.pos += 1
        elif c in "\"'":
            self._string()
        else:
            m = _SCALAR.match(self.text, self.pos)
            assert m is not None
            self.pos = m.end()

    def _string(self) -> str:
        """Past a string of any of TOML's four kinds; its value (keys are strings too)."""
        t, start = self.text, self.pos
        quote = t[start]
        if t.startswith(quote * 3, start):  # multi-line: ends at the first unescaped triple quote
            i = start + 3
            while not t.startswith(quote * 3, i):
                i += 2 if quote == '"' and t[i] == "\\" else 1
            i += 3
            for _ in range(2):  # a closing triple may follow up to two quotes of content
                if i < len(t) and t[i] == quote:
                    i += 1
            self.pos = i
            return t[start + 3:i - 3]  # only ever a key's value that matters: keys are one-line
        i = start + 1
        while t[i] != quote:
            i += 2 if quote == '"' and t[i] == "\\" else 1
        self.pos = i + 1
        raw = t[start:i + 1]
        return tomllib.loads(f"k = {raw}")["k"] if quote == '"' else raw[1:-1]
