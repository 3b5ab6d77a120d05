"""Chunking for the local semantic index: Obsidian notes, source files and commit messages.

Pure functions from text to ``Chunk``s, no I/O: ``sources.py`` does the reading. A chunk's ``text`` is exactly
what gets embedded, so it carries its own context (the note title and heading path, or the file path and the
enclosing definition): a paragraph alone rarely says what it is about. Line numbers always refer to the original
file (1-based, inclusive) so that a hit can be opened at the right place.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any, Literal

import yaml

ChunkKind = Literal["note", "code", "commit"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One unit of embedding. ``meta`` holds sorted (key, value) pairs so that a chunk stays hashable."""

    path: str
    kind: ChunkKind
    heading: str
    line_start: int
    line_end: int
    text: str
    meta: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        """Stable identity: the same text at the same place of the same file gives the same key (meta is
        deliberately not part of it). The indexer does not use it: it keeps a changed file's vectors by chunk
        text, which also survives the text moving to other lines."""
        h = hashlib.sha256()
        for part in (self.path, self.kind, str(self.line_start), str(self.line_end)):
            h.update(part.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
        h.update(self.text.encode("utf-8", "surrogatepass"))
        return h.hexdigest()[:32]

    def meta_dict(self) -> dict[str, str]:
        return dict(self.meta)


@dataclass(frozen=True)
class NoteDoc:
    """A parsed note: document-level facts plus its chunks. ``front_matter_error`` is "" unless the YAML was broken
    (the front matter is then part of the body, so nothing the user wrote is lost)."""

    title: str
    tags: tuple[str, ...]
    links: tuple[str, ...]
    aliases: tuple[str, ...]
    front_matter: dict[str, Any]
    chunks: tuple[Chunk, ...]
    front_matter_error: str = ""


def _meta(**pairs: str) -> tuple[tuple[str, str], ...]:
    """Sorted, non-empty pairs only (an absent key and an empty value mean the same)."""
    return tuple(sorted((k, v) for k, v in pairs.items() if v))


# --------------------------------------------------------------------------------------------------------------------
# Languages

#: Extension (with its dot, lower case) or exact file name → language. ``.md`` is chunked as a note everywhere.
LANGUAGES: dict[str, str] = {
    ".py": "python", ".pyi": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript", ".tsx": "tsx",
    ".go": "go", ".rs": "rust", ".java": "java",
    ".c": "c", ".h": "c", ".cpp": "cpp", ".cc": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp",
    ".cs": "csharp", ".rb": "ruby", ".php": "php",
    ".sh": "shell", ".bash": "shell", ".zsh": "shell",
    ".sql": "sql", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json",
    ".md": "markdown", ".markdown": "markdown", ".rst": "rst", ".txt": "text",
    ".html": "html", ".htm": "html", ".css": "css",
    ".kt": "kotlin", ".kts": "kotlin", ".swift": "swift", ".lua": "lua",
    ".ini": "ini", ".cfg": "ini",
    "Dockerfile": "dockerfile", "Containerfile": "dockerfile",
    "Makefile": "makefile", "makefile": "makefile", "GNUmakefile": "makefile", ".mk": "makefile",
}


def language_of(path: str) -> str | None:
    """The language of a file by its name, or None: unknown files are not indexed (most are binary or generated)."""
    name = PurePosixPath(path).name
    if name in LANGUAGES:
        return LANGUAGES[name]
    if name.startswith(("Dockerfile.", "Containerfile.")):
        return "dockerfile"
    suffix = PurePosixPath(name).suffix.lower()
    return LANGUAGES.get(suffix) if suffix else None


# --------------------------------------------------------------------------------------------------------------------
# Splitting helpers shared by notes and code


@dataclass(slots=True)
class _Piece:
    """Lines ``start``..``end`` (0-based, end exclusive) of a line array; ``part`` is set for a slice of one
    over-long line (then ``end == start + 1``), which is never merged with anything."""

    start: int
    end: int
    heading: str = ""
    part: str | None = None


class _Lines:
    """A line array with prefix sums, so the joined length of any range is O(1) (packing asks often)."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = lines
        self._acc = [0]
        for line in lines:
            self._acc.append(self._acc[-1] + len(line))

    def size(self, start: int, end: int) -> int:
        return 0 if end <= start else self._acc[end] - self._acc[start] + (end - start - 1)

    def blank(self, i: int) -> bool:
        return not self.lines[i].strip()

    def text(self, piece: _Piece) -> str:
        return piece.part if piece.part is not None else "\n".join(self.lines[piece.start:piece.end])

    def trim(self, piece: _Piece) -> _Piece | None:
        """Without leading/trailing blank lines; None when nothing but whitespace is left."""
        if piece.part is not None:
            return piece if piece.part.strip() else None
        start, end = piece.start, piece.end
        while start < end and self.blank(start):
            start += 1
        while end > start and self.blank(end - 1):
            end -= 1
        return _Piece(start, end, piece.heading) if start < end else None

    def split_lines(self, start: int, end: int, max_chars: int, heading: str) -> list[_Piece]:
        """Greedy at line boundaries; a single line longer than max_chars is cut at spaces (or hard)."""
        out: list[_Piece] = []
        cur = start
        for i in range(start, end):
            if len(self.lines[i]) > max_chars:
                if cur < i:
                    out.append(_Piece(cur, i, heading))
                out.extend(_Piece(i, i + 1, heading, part) for part in _cut_line(self.lines[i], max_chars))
                cur = i + 1
            elif self.size(cur, i + 1) > max_chars:
                out.append(_Piece(cur, i, heading))
                cur = i
        if cur < end:
            out.append(_Piece(cur, end, heading))
        return out

    def pack(self, pieces: Sequence[_Piece], max_chars: int) -> list[_Piece]:
        """Merge consecutive pieces while the merged range stays within max_chars. The merged heading is the one
        with the most text under it (a preamble packed with a definition is described by the definition; the tail
        of a long function packed with the next function by whichever is bigger)."""
        out: list[_Piece] = []
        weights: list[dict[str, int]] = []
        for piece in pieces:
            size = len(piece.part) if piece.part is not None else self.size(piece.start, piece.end)
            last = out[-1] if out else None
            if (last is not None and last.part is None and piece.part is None
                    and self.size(last.start, piece.end) <= max_chars):
                w = weights[-1]
                w[piece.heading] = w.get(piece.heading, 0) + size
                named = {h: n for h, n in w.items() if h}
                heading = max(named, key=lambda h: named[h]) if named else ""  # ties: the first (dicts keep order)
                out[-1] = _Piece(last.start, piece.end, heading)
            else:
                out.append(piece)
                weights.append({piece.heading: size})
        return out


def _cut_line(line: str, max_chars: int) -> list[str]:
    """An over-long single line (a Markdown paragraph is often one line; minified code) cut near max_chars, at a
    space when there is one in the second half."""
    parts: list[str] = []
    while len(line) > max_chars:
        cut = line.rfind(" ", max_chars // 2, max_chars)
        if cut <= 0:
            cut = max_chars
        parts.append(line[:cut])
        line = line[cut:].lstrip(" ")
    if line.strip():
        parts.append(line)
    return parts


# --------------------------------------------------------------------------------------------------------------------
# Markdown (Obsidian)

#: Fences at any indentation: in Obsidian, code blocks inside list items are indented past CommonMark's 3 spaces.
_FENCE_OPEN = re.compile(r"^[ \t]*(`{3,}|~{3,})(.*)$")
_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]|$)")
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")
_COMMENT = re.compile(r"%%.*?%%")
_WIKI_EMBED = re.compile(r"!\[\[([^\[\]]*)\]\]")
_MD_EMBED = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_WIKILINK = re.compile(r"\[\[([^\[\]]+?)\]\]")
_TAG = re.compile(r"(?<!\S)#([\w/-]+)")
_ATTACHMENT_SUFFIX = re.compile(r"\.(?!md$)[A-Za-z0-9]{1,5}$")


#: Longer lines are never headings or definitions, and get no code-span parsing: keeps every regex linear.
_MAX_PATTERN_LINE = 2000


def _heading(line: str) -> tuple[int, str] | None:
    """(level, raw text) of an ATX heading (``## Setup ##`` → (2, "Setup")), parsed without backtracking."""
    m = _HEADING.match(line) if len(line) <= _MAX_PATTERN_LINE else None
    if m is None:
        return None
    text = line[m.end():].strip()
    if text.endswith("#"):
        bare = text.rstrip("#")
        if not bare or bare[-1] in " \t":  # a closing sequence; "C#" keeps its hash
            text = bare.rstrip()
    return len(m.group(1)), text


def _fence_close(opener: str) -> re.Pattern[str]:
    return re.compile(r"^[ \t]*" + re.escape(opener[0]) + "{" + str(len(opener)) + r",}[ \t]*$")


def _link_target(inner: str) -> tuple[str, str, str]:
    """``Note#Heading|alias`` → (note name, sub-target, alias); ``\\|`` is a pipe escaped inside a table."""
    inner = inner.replace("\\|", "|")
    target, _, alias = inner.partition("|")
    name, _, sub = target.partition("#")
    name = name.strip()
    if name.lower().endswith(".md"):
        name = name[:-3]
    return name, sub.strip(), alias.strip()


def _render_prose(segment: str, links: list[str], tags: list[str]) -> str:
    """Prose outside code: drop embeds and comments, wikilinks → display text; collect links and tags."""

    def embed(m: re.Match[str]) -> str:
        name, _, _ = _link_target(m.group(1))
        if name and not _ATTACHMENT_SUFFIX.search(name):  # a transcluded note is a link; an image is not
            links.append(name)
        return ""

    def wikilink(m: re.Match[str]) -> str:
        name, sub, alias = _link_target(m.group(1))
        if name:
            links.append(name)
        return alias or name or sub.lstrip("^")

    segment = _COMMENT.sub("", segment)
    segment = _WIKI_EMBED.sub(embed, segment)
    segment = _MD_EMBED.sub("", segment)
    segment = _WIKILINK.sub(wikilink, segment)
    for m in _TAG.finditer(segment):
        tag = m.group(1).strip("/-")
        if tag and not tag.isdigit():  # "#123" is an issue number, not a tag (Obsidian's rule too)
            tags.append(tag.lower())
    return segment


def _render_line(line: str, links: list[str], tags: list[str]) -> str:
    """A prose line with inline code spans kept verbatim (no links or tags inside code)."""
    out: list[str] = []
    pos = 0
    for m in (_CODE_SPAN.finditer(line) if len(line) <= _MAX_PATTERN_LINE else ()):
        out.append(_render_prose(line[pos:m.start()], links, tags))
        out.append(m.group(0))
        pos = m.end()
    out.append(_render_prose(line[pos:], links, tags))
    return "".join(out)


def _as_strings(value: Any, split: str) -> list[str]:
    """A front matter list, or a string split at ``split`` (a regex); anything else → []."""
    if value is None:
        return []
    if isinstance(value, str):
        return [s for s in re.split(split, value) if s.strip()]
    if isinstance(value, (list, tuple, set)):
        return [str(v) for v in value if v is not None and str(v).strip()]
    if isinstance(value, (int, float)):
        return [str(value)]
    return []


def _dedupe(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _yaml_error(e: Exception) -> str:
    """A one-line reason with the line number in the file (the YAML starts on the file's second line)."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        mark = e.problem_mark
        return f"{e.problem} (line {mark.line + 2})" if mark is not None else e.problem
    first = str(e).strip().splitlines()
    return first[0] if first else type(e).__name__


def _front_matter(lines: Sequence[str]) -> tuple[dict[str, Any], int, str]:
    """(front matter, index of the first body line, error). Broken YAML → ({}, 0, error): the text stays body."""
    if not lines or lines[0].rstrip() != "---":
        return {}, 0, ""
    for end in range(1, len(lines)):
        if lines[end].rstrip() in ("---", "..."):
            break
    else:
        return {}, 0, ""  # no closing line: a thematic break, not front matter
    try:
        data = yaml.safe_load("\n".join(lines[1:end]))
    except Exception as e:  # noqa: BLE001 - user text: YAMLError, but also ValueError from bad dates etc.
        return {}, 0, _yaml_error(e)
    if data is None:
        return {}, end + 1, ""
    if not isinstance(data, dict):
        return {}, 0, f"front matter is a {type(data).__name__}, not a mapping"
    return data, end + 1, ""


def chunk_markdown(path: str, text: str, max_chars: int = 1200) -> NoteDoc:
    """Chunk an Obsidian note at its ATX headings; never raises on malformed input.

    Each chunk's text is ``"<title> > <heading path>\\n<body>"`` (just the title for text before the first heading;
    a leading heading equal to the title is not repeated). Wikilinks become their display text, embeds disappear,
    code blocks are kept verbatim. Chunk meta: ``tags`` (the note's tags, comma-joined: tags describe the whole
    note), ``links`` (the notes linked from this chunk, joined by "|", which a note name cannot contain),
    ``front_matter_error``.
    """
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    front, body_start, fm_error = _front_matter(lines)

    # One pass over the body: code flags, rendered lines, headings, links and tags per line.
    rendered = list(lines)
    in_code = [False] * len(lines)
    headings: dict[int, tuple[int, str]] = {}
    line_links: dict[int, list[str]] = {}
    tags: list[str] = []
    fences: dict[int, int] = {}  # opening line → closing line + 1 (a fenced block is split only as a last resort)
    close: re.Pattern[str] | None = None
    open_at = 0
    for i in range(body_start, len(lines)):
        line = lines[i]
        if close is not None:
            in_code[i] = True
            if close.match(line):
                fences[open_at] = i + 1
                close = None
            continue
        m = _FENCE_OPEN.match(line)
        if m and not (m.group(1)[0] == "`" and "`" in m.group(2)):
            close, open_at, in_code[i] = _fence_close(m.group(1)), i, True
            continue
        links: list[str] = []
        heading = _heading(line)
        if heading is not None:
            headings[i] = (heading[0], _render_line(heading[1], links, tags).strip())
        else:
            rendered[i] = _render_line(line, links, tags)
        if links:
            line_links[i] = links
    if close is not None:
        fences[open_at] = len(lines)  # an unclosed fence runs to the end (CommonMark)

    title = ""
    if isinstance(front.get("title"), (str, int, float)):
        title = str(front["title"]).strip()
    if not title:
        title = next((h for _, (level, h) in sorted(headings.items()) if level == 1 and h), "")
    if not title:
        title = PurePosixPath(path).stem

    tags_fm = _as_strings(front.get("tags", front.get("tag")), r"[,\s]+")
    all_tags = _dedupe([t for t in (s.strip().lstrip("#").strip().lower() for s in tags_fm) if t] + tags)
    aliases = _dedupe([s.strip() for s in _as_strings(front.get("aliases", front.get("alias")), r",")])
    all_links = _dedupe([name for i in sorted(line_links) for name in line_links[i]])

    # Sections: (heading path, first body line, end).
    sections: list[tuple[tuple[str, ...], int, int]] = []
    stack: list[tuple[int, str]] = []
    start = body_start
    for i in sorted(headings) + [len(lines)]:
        sections.append((tuple(h for _, h in stack), start, i))
        if i < len(lines):
            level, name = headings[i]
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, name))
            start = i + 1

    buf = _Lines(rendered)
    chunks: list[Chunk] = []
    for heading_path, start, end in sections:
        context = list(heading_path)
        if context and context[0] == title:
            context = context[1:]
        prefix = " > ".join([title, *context])
        for piece in _split_section(buf, start, end, in_code, fences, max_chars):
            body = buf.text(piece)
            piece_links = _dedupe([n for i in range(piece.start, piece.end) for n in line_links.get(i, ())])
            meta = _meta(tags=",".join(all_tags), links="|".join(piece_links), front_matter_error=fm_error)
            chunks.append(Chunk(path, "note", " > ".join(heading_path), piece.start + 1, piece.end, f"{prefix}\n{body}",
                                meta))
    return NoteDoc(title, all_tags, all_links, aliases, front, tuple(chunks), fm_error)


def _split_section(buf: _Lines, start: int, end: int, in_code: Sequence[bool], fences: dict[int, int],
                   max_chars: int) -> list[_Piece]:
    """A section as one piece, or split at blank lines into paragraphs (a fenced block is one paragraph however
    many blank lines it holds), packed back up to max_chars; over-long paragraphs split at lines."""
    whole = buf.trim(_Piece(start, end))
    if whole is None:
        return []
    if buf.size(whole.start, whole.end) <= max_chars:
        return [whole]
    units: list[_Piece] = []
    i = whole.start
    while i < whole.end:
        if i in fences:
            j = min(fences[i], whole.end)
        elif buf.blank(i) and not in_code[i]:
            i += 1
            continue
        else:
            j = i
            while j < whole.end and not (buf.blank(j) and not in_code[j]) and j not in fences:
                j += 1
        if buf.size(i, j) > max_chars:
            units.extend(buf.split_lines(i, j, max_chars, ""))
        else:
            units.append(_Piece(i, j))
        i = j
    pieces = (buf.trim(p) for p in buf.pack(units, max_chars))
    return [p for p in pieces if p is not None]


# --------------------------------------------------------------------------------------------------------------------
# Code

_MODS = r"(?:(?:public|private|protected|internal|static|final|abstract|sealed|open|data|override|partial|async|" \
        r"export|default|declare|inline|suspend|fileprivate|unsafe|const|extern(?:[ \t]+\"[^\"]*\")?|" \
        r"pub(?:\([^)]*\))?|local)[ \t]+)*"
_C_FUNC = r"[A-Za-z_][\w \t\*&:<>,~\[\]]*\([^;]*$"  # `static int main(void)`: a C-like function needs no keyword

#: A top-level definition, matched against a line with its indentation removed.
_DEFINITIONS: dict[str, re.Pattern[str]] = {
    "python": re.compile(r"(?:async[ \t]+def|def|class)[ \t]"),
    "javascript": re.compile(_MODS + r"(?:function\b\*?|class\b|interface\b|type\b|enum\b|namespace\b|"
                                     r"(?:const|let|var)[ \t]+[\w$]+[ \t]*=[ \t]*(?:async[ \t]*)?(?:\(|function\b))"),
    "go": re.compile(r"(?:func|type)\b"),
    "rust": re.compile(_MODS + r"(?:fn|impl|struct|enum|trait|mod|type|union|macro_rules!)\b"),
    "java": re.compile(_MODS + r"(?:class|interface|enum|record|@interface)\b"),
    "csharp": re.compile(_MODS + r"(?:class|interface|enum|record|struct|namespace)\b"),
    "kotlin": re.compile(_MODS + r"(?:fun|class|interface|object|enum[ \t]+class|typealias)\b"),
    "swift": re.compile(_MODS + r"(?:func|class|struct|enum|protocol|extension|actor)\b"),
    "c": re.compile(r"(?:(?:struct|enum|union|typedef)\b|(?!(?:if|for|while|switch|return|else|do)\b)" + _C_FUNC + ")"),
    "cpp": re.compile(r"(?:(?:struct|class|enum|union|typedef|namespace|template)\b|"
                      r"(?!(?:if|for|while|switch|return|else|do)\b)" + _C_FUNC + ")"),
    "ruby": re.compile(r"(?:def|class|module)\b"),
    "php": re.compile(_MODS + r"(?:function|class|interface|trait|enum)\b"),
    "lua": re.compile(_MODS + r"function\b"),
    "shell": re.compile(r"(?:function[ \t]+[\w.:-]+|[\w.:-]+[ \t]*\(\)[ \t]*\{?)"),
    "toml": re.compile(r"\["),
    "ini": re.compile(r"\["),
    "sql": re.compile(r"(?i:create|alter|drop|insert|update|delete|select|with)\b"),
    "dockerfile": re.compile(r"(?i:from)\b"),
}
_DEFINITIONS["typescript"] = _DEFINITIONS["tsx"] = _DEFINITIONS["javascript"]

#: Lines that belong to the definition below them (decorators, attributes, annotations, doc comments).
_ATTACHED: dict[str, re.Pattern[str]] = {
    "python": re.compile(r"@|#"),
    "rust": re.compile(r"#\[|///|//!"),
    "java": re.compile(r"@|/\*\*|\*|//"),
    "kotlin": re.compile(r"@|/\*\*|\*|//"),
    "csharp": re.compile(r"\[|///"),
    "javascript": re.compile(r"@|/\*\*|\*|//"),
    "go": re.compile(r"//"),
    "c": re.compile(r"/\*|\*|//"),
    "cpp": re.compile(r"/\*|\*|//"),
    "swift": re.compile(r"@|///"),
    "php": re.compile(r"#\[|/\*\*|\*|//"),
    "ruby": re.compile(r"#"),
}
_ATTACHED["typescript"] = _ATTACHED["tsx"] = _ATTACHED["javascript"]

#: For brace languages, methods inside a class or impl: indented and keyword-less (``start() {``).
_METHOD = re.compile(r"(?!(?:if|for|while|switch|return|else|catch|do|try|new|throw|case|await|yield)\b)"
                     + _MODS + r"(?:get[ \t]+|set[ \t]+|static[ \t]+|\*)?[\w$<>\[\], .*&:~?]+\([^;]*\)[^;]*\{[ \t]*$")
_BRACES = {"javascript", "typescript", "tsx", "java", "csharp", "kotlin", "swift", "c", "cpp", "php", "rust", "go"}


def _heading_of(line: str) -> str:
    """A definition's first line as a heading: trimmed, without the trailing ``:``/``{``, at most 80 chars."""
    return line.strip().rstrip("{:").rstrip()[:80]


def _definitions(buf: _Lines, start: int, end: int, indent: str, language: str,
                 nested: bool) -> list[tuple[int, int]]:
    """(block start, definition line) of each definition at exactly ``indent`` in lines start..end; the block
    starts at the decorators or doc comments directly above it."""
    pattern = _DEFINITIONS.get(language)
    if pattern is None:
        return []
    attached = _ATTACHED.get(language)
    found: list[tuple[int, int]] = []
    pending: int | None = None
    for i in range(start, end):
        line = buf.lines[i]
        if not line.strip():
            pending = None
            continue
        if not line.startswith(indent) or line[len(indent)] in " \t" or len(line) > _MAX_PATTERN_LINE:
            continue  # a deeper line (a body, a continuation) or a shallower one (a closing brace)
        body = line[len(indent):]
        if pending is not None and body[0] in ")]}":
            continue  # the end of a multi-line decorator or attribute
        if pattern.match(body) or (nested and language in _BRACES and _METHOD.match(body)):
            found.append((pending if pending is not None else i, i))
            pending = None
        elif attached is not None and attached.match(body):
            if pending is None:
                pending = i
        else:
            pending = None
    return found


def _body_indent(buf: _Lines, start: int, end: int, indent: str) -> str | None:
    """The indentation of a definition's body: the shortest one deeper than ``indent``."""
    best: str | None = None
    for i in range(start, end):
        line = buf.lines[i]
        if not line.strip() or not line.startswith(indent):
            continue
        lead = _indent_of(line)
        if len(lead) > len(indent) and (best is None or len(lead) < len(best)):
            best = lead
    return best


def _indent_of(line: str) -> str:
    return line[:len(line) - len(line.lstrip(" \t"))]


def _blocks(buf: _Lines, start: int, end: int) -> list[tuple[int, int]]:
    """Runs of non-blank lines."""
    out: list[tuple[int, int]] = []
    i = start
    while i < end:
        if buf.blank(i):
            i += 1
            continue
        j = i
        while j < end and not buf.blank(j):
            j += 1
        out.append((i, j))
        i = j
    return out


def chunk_code(path: str, text: str, language: str, max_chars: int = 1500) -> tuple[Chunk, ...]:
    """Chunk a source file at its top-level definitions (a def or class is the natural unit of meaning), else at
    blank-line blocks. Small neighbours are packed together up to max_chars; an over-long definition is split at
    its inner definitions (heading ``class Broker > def start``), then at blank lines, then at lines.

    Each chunk's text is ``"<path> > <heading>\\n<code>"`` (just the path when the heading is empty, e.g. the
    imports of a module). Meta: ``language``.
    """
    buf = _Lines([line.removesuffix("\r") for line in text.split("\n")])
    n = len(buf.lines)

    def by_definitions(start: int, end: int, first: int, indent: str, heading: str) -> list[tuple[_Piece, int | None]]:
        """(segment, its definition line) per definition at ``indent`` in first..end; the text before the first
        one (imports; a class line and its docstring) keeps ``heading``."""
        defs = _definitions(buf, first, end, indent, language, nested=bool(indent))
        if not defs:
            return []
        out: list[tuple[_Piece, int | None]] = []
        if start < defs[0][0]:
            out.append((_Piece(start, defs[0][0], heading), None))
        for k, (block, line) in enumerate(defs):
            stop = defs[k + 1][0] if k + 1 < len(defs) else end
            name = _heading_of(buf.lines[line])
            out.append((_Piece(block, stop, f"{heading} > {name}" if heading else name), line))
        return out

    def by_blocks(piece: _Piece) -> list[tuple[_Piece, int | None]]:
        blocks = _blocks(buf, piece.start, piece.end)
        return [(_Piece(a, b, piece.heading), None) for a, b in blocks] if len(blocks) > 1 else []

    def fit(piece: _Piece, def_line: int | None) -> list[_Piece]:
        """``piece`` if small enough, else its parts (each strictly smaller, so this terminates)."""
        if buf.size(piece.start, piece.end) <= max_chars:
            return [piece]
        parts: list[tuple[_Piece, int | None]] = []
        if def_line is not None:
            inner = _body_indent(buf, def_line + 1, piece.end, _indent_of(buf.lines[def_line]))
            if inner is not None:
                parts = by_definitions(piece.start, piece.end, def_line + 1, inner, piece.heading)
        parts = parts or by_blocks(piece)
        if not parts:
            return buf.split_lines(piece.start, piece.end, max_chars, piece.heading)
        return buf.pack([p for part, line in parts for p in fit(part, line)], max_chars)

    top = by_definitions(0, n, 0, "", "") or by_blocks(_Piece(0, n)) or [(_Piece(0, n), None)]
    pieces = buf.pack([p for part, line in top for p in fit(part, line)], max_chars)

    chunks: list[Chunk] = []
    meta = _meta(language=language)
    for piece in pieces:
        trimmed = buf.trim(piece)
        if trimmed is None:
            continue
        prefix = f"{path} > {trimmed.heading}" if trimmed.heading else path
        chunks.append(Chunk(path, "code", trimmed.heading, trimmed.start + 1, trimmed.end,
                            f"{prefix}\n{buf.text(trimmed)}", meta))
    return tuple(chunks)


# --------------------------------------------------------------------------------------------------------------------
# Commits


def chunk_commit(sha: str, author: str, timestamp: int, message: str, max_chars: int = 1200) -> Chunk | None:
    """One chunk per commit message (a message is one thought; longer ones are cut at max_chars). The text is the
    message itself; sha, author and the author date (ISO 8601, UTC) are meta. None for an empty message."""
    msg = "\n".join(line.rstrip() for line in message.replace("\r\n", "\n").split("\n")).strip()
    if not msg:
        return None
    subject = msg.split("\n", 1)[0].strip()
    if len(msg) > max_chars:
        msg = _cut_line(msg, max_chars)[0] if max_chars > 0 else msg
    try:
        date = datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat()
    except (OverflowError, OSError, ValueError):
        date = ""
    return Chunk(f"commit:{sha}", "commit", subject, 0, 0, msg, _meta(sha=sha, author=author, date=date))


__all__ = ["LANGUAGES", "Chunk", "ChunkKind", "NoteDoc", "chunk_code", "chunk_commit", "chunk_markdown",
           "language_of"]
