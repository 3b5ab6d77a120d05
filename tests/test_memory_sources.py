"""The index's input side: chunking notes, code and commits; incremental scans of a vault and of git repositories.

Real files in tmp_path and real git repositories (git init/commit), no mocks except counting reads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hub.memory.chunk import LANGUAGES, chunk_code, chunk_commit, chunk_markdown, language_of
from hub.memory.sources import FileState, GitSource, Refused, ScanResult, SourceGone, Text, VaultSource, read_text


def body(chunk_text: str) -> str:
    return chunk_text.split("\n", 1)[1]


def original(text: str, start: int, end: int) -> str:
    return "\n".join(text.split("\n")[start - 1:end])


def apply(known: dict[str, FileState], result: ScanResult) -> dict[str, FileState]:
    """What the indexer does with a scan: the next scan's ``known``."""
    for doc in result.changed:
        known[doc.path] = doc.state
    known.update(result.touched)
    for path in result.deleted:
        known.pop(path, None)
    return known


# --------------------------------------------------------------------------------------------------------------------
# Markdown

NOTE = """---
title: Home Lab
tags: [Infra, "#Home/Network"]
aliases: [lab, The Lab]
---
Intro paragraph.

# Home Lab

## Setup
Install the broker.

```bash
# not a heading
echo done
```

### TLS
Certificates live in /etc/tls.

## Empty

   

## Notes
Last words.
"""


def test_front_matter_headings_and_line_ranges() -> None:
    doc = chunk_markdown("infra/lab.md", NOTE)
    assert doc.title == "Home Lab" and doc.aliases == ("lab", "The Lab") and doc.front_matter["title"] == "Home Lab"
    assert doc.tags == ("infra", "home/network")
    got = [(c.heading, c.kind) for c in doc.chunks]
    # "# not a heading" is in a code fence; "Empty" has only whitespace: no chunk.
    assert got == [("", "note"), ("Home Lab > Setup", "note"), ("Home Lab > Setup > TLS", "note"),
                   ("Home Lab > Notes", "note")]
    for c in doc.chunks:
        assert body(c.text) == original(NOTE, c.line_start, c.line_end)  # lines refer to the original file
    intro, setup, tls, _ = doc.chunks
    assert (intro.line_start, intro.text) == (6, "Home Lab\nIntro paragraph.")
    assert setup.text.startswith("Home Lab > Setup\nInstall the broker.") and "echo done" in setup.text
    assert tls.text == "Home Lab > Setup > TLS\nCertificates live in /etc/tls."  # the title is not repeated
    assert dict(tls.meta)["tags"] == "infra,home/network"
    assert len(intro.key) == 32 and intro.key == chunk_markdown("infra/lab.md", NOTE).chunks[0].key
    assert intro.key != setup.key


def test_title_and_tags_fallbacks_and_broken_front_matter() -> None:
    assert chunk_markdown("a/My Note.md", "# First\ntext").title == "First"
    assert chunk_markdown("a/My Note.md", "## Sub\ntext").title == "My Note"
    assert chunk_markdown("n.md", "---\ntags: 'Alpha, #beta gamma'\n---\nx").tags == ("alpha", "beta", "gamma")
    broken = "---\ntitle: [oops\n---\nBody text."
    doc = chunk_markdown("b.md", broken)  # never raises; nothing is lost
    assert doc.front_matter == {} and doc.title == "b" and "line" in doc.front_matter_error
    (c,) = doc.chunks
    assert (c.line_start, c.line_end) == (1, 4) and "title: [oops" in c.text and "Body text." in c.text
    assert dict(c.meta)["front_matter_error"] == doc.front_matter_error


def test_links_embeds_and_tags() -> None:
    text = ("See [[Broker]], [[Energy Plan|the plan]] and [[Setup#TLS]]; [[Broker]] again. #Ops #nested/Tag #123\n"
            "![[diagram.png]] ![chart](img/chart.png) url http://x.org/page#frag `#code [[NotLink]]`\n"
            "```\n#incode [[AlsoNot]]\n```\n")
    doc = chunk_markdown("n.md", text)
    (c,) = doc.chunks
    assert doc.links == ("Broker", "Energy Plan", "Setup")
    assert doc.tags == ("ops", "nested/tag")
    assert c.text.startswith("n\nSee Broker, the plan and Setup; Broker again.")
    assert "diagram" not in c.text and "chart" not in c.text and "`#code [[NotLink]]`" in c.text
    assert "#incode [[AlsoNot]]" in c.text  # code is verbatim
    assert dict(c.meta)["links"] == "Broker|Energy Plan|Setup"


def test_long_section_splits_at_paragraphs_not_inside_a_fence() -> None:
    para = "word " * 30  # 150 chars
    fence = "```python\ndef f():\n\n    return 1\n\n\nx = 2\n```"  # blank lines inside: not split points
    text = "# T\n" + "\n\n".join([para, para, fence, para, para]) + "\n"
    doc = chunk_markdown("long.md", text, max_chars=200)
    assert len(doc.chunks) >= 4
    for c in doc.chunks:
        assert body(c.text) == original(text, c.line_start, c.line_end)
        assert body(c.text).count("```") in (0, 2)  # the fence is whole
        assert len(body(c.text)) <= 200
    # A fenced block longer than max_chars alone is split at lines.
    big = "# T\n```\n" + "\n".join(f"line {i:03d} " + "x" * 40 for i in range(20)) + "\n```\n"
    parts = chunk_markdown("big.md", big, max_chars=200).chunks
    assert len(parts) > 1 and all(len(body(c.text)) <= 200 for c in parts)
    assert [c.line_start for c in parts] == sorted(c.line_start for c in parts)


# --------------------------------------------------------------------------------------------------------------------
# Code and commits

PY = '''"""Module doc."""
import os


@decorator
def small(a):
    return a


class Broker:
    """A broker."""

    def start(self):
''' + "".join(f"        x{i} = {i}  # filler line to make the class long\n" for i in range(25)) + '''
    def stop(self):
''' + "".join(f"        y{i} = {i}  # filler line to make the method long\n" for i in range(9))


def test_chunk_code_python_at_definitions() -> None:
    chunks = chunk_code("hub/b.py", PY, "python", max_chars=600)
    headings = [c.heading for c in chunks]
    assert headings[0] == "def small(a)"  # the preamble is packed with the small def; the def names the chunk
    assert "class Broker > def start(self)" in headings and "class Broker > def stop(self)" in headings
    for c in chunks:
        assert c.kind == "code" and dict(c.meta) == {"language": "python"}
        assert body(c.text) == original(PY, c.line_start, c.line_end)
        assert c.text.startswith(f"hub/b.py > {c.heading}\n")
        assert len(body(c.text)) <= 600
    small = chunks[0]
    assert "@decorator\ndef small(a):" in small.text  # the decorator stays with its function
    assert chunk_code("e.py", "\n  \n", "python") == ()
    assert language_of("x/Dockerfile") == "dockerfile" and language_of("a/b.TSX") == "tsx"
    assert language_of("Makefile") == "makefile" and language_of("pic.png") is None and LANGUAGES[".rs"] == "rust"


def test_chunk_commit() -> None:
    c = chunk_commit("ab12", "Ann", 1_700_000_000, "Fix TLS reload\n\nThe broker kept the old cert.\n")
    assert c is not None and (c.path, c.kind, c.heading, c.line_start) == ("commit:ab12", "commit", "Fix TLS reload", 0)
    assert c.text == "Fix TLS reload\n\nThe broker kept the old cert."
    assert dict(c.meta) == {"sha": "ab12", "author": "Ann", "date": "2023-11-14T22:13:20+00:00"}
    assert chunk_commit("ab12", "Ann", 0, " \n ") is None


def test_read_text() -> None:
    assert read_text(b"hello", 10) == Text("hello")
    assert read_text(b"x" * 11, 10) == Refused("too large: 11 bytes (limit 10)")
    assert read_text(b"ab\0cd", 100) == Refused("binary")
    assert read_text(bytes(range(1, 8)) * 10, 1000) == Refused("binary")
    got = read_text(b"caf\xe9 ok \xff\xfe end", 100)
    assert isinstance(got, Text) and got.text == "caf\ufffd ok \ufffd\ufffd end"
    assert got.warning == "3 bytes of invalid UTF-8 replaced in 3 places, first at offset 3"


# --------------------------------------------------------------------------------------------------------------------
# Vault


def write(path: Path, data: str | bytes, mtime_s: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mtime_s is not None:
        os.utime(path, ns=(mtime_s * 10**9, mtime_s * 10**9))


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    root = tmp_path / "vault"
    write(root / "a.md", "# A\nAlpha text.\n", 1000)
    write(root / "sub" / "b.md", "# B\nBeta text.\n", 1000)
    write(root / "sub" / "pic.png", b"\x89PNG\r\n\x1a\n\0\0", 1000)
    write(root / ".obsidian" / "workspace.md", "ignored", 1000)
    write(root / ".trash" / "old.md", "ignored", 1000)
    write(root / "Templates" / "t.md", "excluded", 1000)
    return root


def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    reads: list[Path] = []
    real_open = Path.open

    def counting_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        reads.append(self)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    return reads


def test_vault_incremental(vault: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = VaultSource("v", vault, exclude=["Templates"])
    reads = count_reads(monkeypatch)
    first = src.scan({})
    assert sorted(d.path for d in first.changed) == ["a.md", "sub/b.md"]
    assert first.attachments == 1 and first.deleted == [] and ("Templates/", "excluded") in first.skipped
    assert len(reads) == 2
    known = apply({}, first)

    reads.clear()
    again = src.scan(known)  # mtime and size unchanged: nothing is opened
    assert (again.changed, again.touched, again.deleted, reads) == ([], {}, [], [])

    os.utime(vault / "a.md", ns=(2000 * 10**9, 2000 * 10**9))  # touched, same bytes
    write(vault / "sub" / "b.md", "# B\nBeta text, edited.\n", 1000)  # same mtime, other size: edited
    write(vault / "c.md", "New note.\n", 1000)
    result = src.scan(known)
    assert list(result.touched) == ["a.md"] and result.touched["a.md"].mtime_ns == 2000 * 10**9
    assert sorted(d.path for d in result.changed) == ["c.md", "sub/b.md"]
    known = apply(known, result)

    (vault / "c.md").unlink()
    shutil.rmtree(vault / "sub")
    result = src.scan(known)
    assert result.deleted == ["c.md", "sub/b.md"] and result.changed == [] and result.attachments == 0


def test_vault_refusals_and_warnings(vault: Path) -> None:
    write(vault / "bin.md", b"abc\0def")
    write(vault / "huge.md", "x" * 2000)
    write(vault / "latin1.md", "# Caf\xe9\nna\xefve\n".encode("latin-1"))
    result = VaultSource("v", vault, max_file_bytes=1000).scan({})
    skipped = dict(result.skipped)
    assert skipped["bin.md"] == "binary" and skipped["huge.md"] == "too large: 2000 bytes (limit 1000)"
    docs = {d.path: d for d in result.changed}
    assert docs["latin1.md"].warnings == ("2 bytes of invalid UTF-8 replaced in 2 places, first at offset 5",)
    assert "na\ufffdve" in docs["latin1.md"].chunks[0].text
    # An indexed note that became binary is removed from the index, not kept stale.
    known = {"bin.md": FileState(1, 1, "old")} | apply({}, result)
    assert "bin.md" in VaultSource("v", vault, max_file_bytes=1000).scan(known).deleted


def test_vault_unreadable_file_is_skipped_not_deleted(vault: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = VaultSource("v", vault)
    known = apply({}, src.scan({}))
    write(vault / "a.md", "# A\nchanged\n", 3000)

    def vanish(self: VaultSource, path: Path) -> bytes:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(VaultSource, "_read", vanish)
    result = src.scan(known)
    assert result.deleted == [] and result.changed == [] and dict(result.skipped)["a.md"] == "vanished during the scan"


def test_vault_gone(vault: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = VaultSource("v", vault)
    known = apply({}, src.scan({}))
    # The root vanishing during the walk (a disk unplugged) must not look like deletions.
    real_file = VaultSource._file

    def unplug(self: VaultSource, *args: object) -> None:
        shutil.rmtree(vault, ignore_errors=True)
        real_file(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(VaultSource, "_file", unplug)
    with pytest.raises(SourceGone, match="disappeared"):
        src.scan(known)
    monkeypatch.undo()
    with pytest.raises(SourceGone):
        src.scan(known)  # missing
    vault.mkdir()
    with pytest.raises(SourceGone, match="mounted"):
        src.scan(known)  # an empty mount point
    assert src.scan({}).changed == []  # nothing known yet: an empty vault is just empty
    (tmp_path / "file").write_text("x")
    with pytest.raises(SourceGone):
        VaultSource("f", tmp_path / "file").scan({})


# --------------------------------------------------------------------------------------------------------------------
# git

GIT_ENV = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "-c", "init.defaultBranch=main", *args],
                          cwd=repo, env=GIT_ENV, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def commit(repo: Path, message: str, *extra: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message, *extra)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    write(root / "app.py", "def main():\n    return 1\n")
    write(root / "README.md", "# Readme\nHello.\n")
    write(root / "docs" / "notes.txt", "Some notes.\n")
    commit(root, "Initial commit\n\nWith a body.")
    return root


def paths(result: ScanResult) -> list[str]:
    return sorted(d.path for d in result.changed)


def test_git_incremental_by_diff(repo: Path) -> None:
    src = GitSource("r", repo)
    first = src.scan(None, {})
    c1 = first.head
    assert c1 is not None and not first.rewritten
    assert paths(first) == ["README.md", "app.py", f"commit:{c1}", "docs/notes.txt"]
    docs = {d.path: d for d in first.changed}
    assert docs["README.md"].chunks[0].kind == "note" and docs["app.py"].chunks[0].kind == "code"
    assert docs["app.py"].state.sha == git(repo, "rev-parse", "HEAD:app.py")
    assert docs[f"commit:{c1}"].chunks[0].heading == "Initial commit"
    known = apply({}, first)

    write(repo / "app.py", "def main():\n    return 2\n")
    (repo / "docs" / "notes.txt").unlink()
    c2 = commit(repo, "Return two")
    write(repo / "README.md", "# Readme\nUncommitted edit.\n")  # the working tree is not the index's business
    write(repo / "scratch.py", "x = 1\n")
    result = src.scan(c1, known)
    assert result.head == c2 and not result.rewritten
    assert paths(result) == ["app.py", f"commit:{c2}"] and result.deleted == ["docs/notes.txt"]
    assert "return 2" in {d.path: d for d in result.changed}["app.py"].chunks[0].text
    known = apply(known, result)
    assert src.scan(c2, known).changed == []  # nothing new


def test_git_rewritten_history(repo: Path) -> None:
    src = GitSource("r", repo)
    first = src.scan(None, {})
    c1 = first.head
    known = apply({}, first)
    write(repo / "extra.py", "y = 1\n")
    c2 = commit(repo, "Add extra")
    known = apply(known, src.scan(c1, known))

    write(repo / "extra.py", "y = 2\n")
    c2b = commit(repo, "Add extra, amended", "--amend")  # c2 is no longer reachable
    result = src.scan(c2, known)
    assert result.rewritten and result.head == c2b
    assert paths(result) == [f"commit:{c2b}", "extra.py"] and result.deleted == [f"commit:{c2}"]
    known = apply(known, result)

    git(repo, "reset", "-q", "--hard", "HEAD~1")
    write(repo / "other.py", "z = 1\n")
    c3 = commit(repo, "Other")
    result = src.scan(c2b, known)
    assert result.rewritten and paths(result) == [f"commit:{c3}", "other.py"]
    assert result.deleted == [f"commit:{c2b}", "extra.py"] and f"commit:{c1}" in known


def test_git_skips_and_odd_names(repo: Path) -> None:
    write(repo / "blob.py", b"\0\1\2binary")
    write(repo / "data.xyz", "unknown type\n")
    write(repo / "keep.xyz", "wanted anyway\n")
    write(repo / "vendor" / "lib.py", "v = 1\n")
    write(repo / "big.py", "x = 1\n" * 400)
    write(repo / "dir with space" / "Ünïcode nöte.md", "# Ü\nText.\n")
    commit(repo, "Odd files")
    src = GitSource("r", repo, include=["keep.xyz"], exclude=["vendor"], max_file_bytes=1000)
    result = src.scan(None, {})
    skipped = dict(result.skipped)
    assert skipped["blob.py"] == "binary" and skipped["data.xyz"] == "unknown file type"
    assert skipped["vendor/lib.py"] == "excluded" and skipped["big.py"] == "too large: 2400 bytes (limit 1000)"
    changed = paths(result)
    assert "keep.xyz" in changed and "dir with space/Ünïcode nöte.md" in changed
    # The same through the diff path.
    known = apply({}, result)
    write(repo / "dir with space" / "Ünïcode nöte.md", "# Ü\nMore.\n")
    write(repo / "blob2.py", b"\0\0")
    head = commit(repo, "Edit odd")
    again = src.scan(result.head, known)
    assert paths(again) == [f"commit:{head}", "dir with space/Ünïcode nöte.md"]
    assert dict(again.skipped)["blob2.py"] == "binary"


def test_git_gone_and_empty(tmp_path: Path) -> None:
    with pytest.raises(SourceGone):
        GitSource("r", tmp_path / "missing").scan(None, {})
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(SourceGone, match="not a git repository"):
        GitSource("r", plain).scan(None, {"a.py": FileState(1, 1, "x")})
    git(plain, "init", "-q")
    empty = GitSource("r", plain).scan(None, {})
    assert (empty.head, empty.changed, empty.deleted) == (None, [], [])

