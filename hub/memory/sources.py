"""Sources for the local semantic index: an Obsidian vault and git repositories, scanned incrementally.

A scan compares what is there now with what the caller has indexed (``known``: path → ``FileState``) and returns
only the difference, reading as little as possible: a vault file whose mtime and size are unchanged is not opened,
a repository file whose blob sha is unchanged is not read. Everything here is synchronous (``subprocess.run`` with
timeouts) because it runs in a worker thread.

The one rule that matters most: a source that is not there (an unmounted disk, a deleted repository) raises
``SourceGone``; it is never reported as "every file was deleted". Likewise a file that could not be read this time
is skipped, not deleted: it is checked again on the next scan.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
import stat
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO

from .chunk import Chunk, chunk_code, chunk_commit, chunk_markdown, language_of


class SourceGone(Exception):
    """The source's root is missing or unreadable. Keep what is indexed and retry later: this is not a deletion."""


class GitError(Exception):
    """git failed for another reason than "not a repository" (timeout, git not installed, corrupt objects).
    Like ``SourceGone``, nothing should be changed in the index."""


@dataclass(frozen=True, slots=True)
class FileState:
    """What a scan remembers of a file to tell next time whether it changed (see the sources for each field)."""

    mtime_ns: int
    size: int
    sha: str


@dataclass(frozen=True)
class Document:
    """A new or modified file (or commit) and all its chunks: replace everything indexed under ``path``."""

    path: str
    state: FileState
    chunks: tuple[Chunk, ...]
    warnings: tuple[str, ...] = ()


@dataclass
class ScanResult:
    """The difference between a source and ``known``. Apply ``changed`` (replace), ``touched`` (update the state
    only), ``deleted`` (remove); ``skipped`` is for the user (why a file is not in the index)."""

    changed: list[Document] = field(default_factory=list)
    touched: dict[str, FileState] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    head: str | None = None
    rewritten: bool = False
    attachments: int = 0


# --------------------------------------------------------------------------------------------------------------------
# Bytes → text


@dataclass(frozen=True, slots=True)
class Text:
    """Decoded text; ``warning`` is non-empty when invalid UTF-8 was replaced (the file is still indexed)."""

    text: str
    warning: str = ""


@dataclass(frozen=True, slots=True)
class Refused:
    """Not indexed, with the reason (too large, binary)."""

    reason: str


_SAMPLE = 8192
#: Control bytes that do not occur in text (tab, LF, FF, CR, backspace and ESC do).
_CONTROL = bytes(b for b in range(32) if b not in (8, 9, 10, 12, 13, 27)) + b"\x7f"
_ERRORS = threading.local()


def _count_replace(exc: UnicodeError) -> tuple[str, int]:
    """Like errors="replace", counting the bytes replaced (thread-local: scans run in worker threads)."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    tally: list[int] = _ERRORS.tally
    tally[0] += exc.end - exc.start
    tally[1] += 1
    if tally[2] < 0:
        tally[2] = exc.start
    return "\ufffd", exc.end


codecs.register_error("hub.memory.count_replace", _count_replace)


def read_text(data: bytes, max_bytes: int) -> Text | Refused:
    """Decode a file for indexing. Over ``max_bytes`` → Refused("too large: N bytes (limit M)"); a NUL byte in
    the first 8 KiB, or more than 30 % control bytes there → Refused("binary"). Invalid UTF-8 is replaced rather
    than refused, so a single bad byte does not lose a whole note, and the count is returned as a warning."""
    if len(data) > max_bytes:
        return Refused(f"too large: {len(data)} bytes (limit {max_bytes})")
    sample = data[:_SAMPLE]
    if b"\0" in sample:
        return Refused("binary")
    if sample and len(sample) - len(sample.translate(None, _CONTROL)) > 0.3 * len(sample):
        return Refused("binary")
    try:
        text = data.decode("utf-8")
        warning = ""
    except UnicodeDecodeError:
        _ERRORS.tally = [0, 0, -1]  # bytes, places, first offset
        text = data.decode("utf-8", "hub.memory.count_replace")
        n, places, first = _ERRORS.tally
        where = f"at offset {first}" if places == 1 else f"in {places} places, first at offset {first}"
        warning = f"{n} bytes of invalid UTF-8 replaced {where}"
    return Text(text.removeprefix("\ufeff"), warning)


def _matches(path: str, patterns: Sequence[str]) -> bool:
    """gitignore-like fnmatch: a pattern without "/" matches any component ("*.lock", "node_modules", "Templates");
    one with "/" matches the relative path or one of its parent directories ("docs/generated", "archive/*.md")."""
    if not patterns:
        return False
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for raw in patterns:
        pattern = raw.strip().strip("/")
        if not pattern:
            continue
        if "/" not in pattern:
            if any(fnmatchcase(part, pattern) for part in parts):
                return True
        elif any(fnmatchcase(p, pattern) or (pattern.startswith("**/") and fnmatchcase(p, pattern[3:]))
                 for p in prefixes):
            return True
    return False


def _printable(name: str) -> str:
    """A file name that may hold surrogate escapes (undecodable bytes), safe to log and store."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _valid_name(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _document(path: str, state: FileState, text: Text, language: str, max_chars: int) -> Document:
    """Chunk a decoded file: ``.md`` as a note, anything else as code."""
    warnings = [text.warning] if text.warning else []
    if language == "markdown":
        note = chunk_markdown(path, text.text, max_chars)
        if note.front_matter_error:
            warnings.append(f"front matter not parsed: {note.front_matter_error}")
        chunks = note.chunks
    else:
        chunks = chunk_code(path, text.text, language, max_chars)
    return Document(path, state, chunks, tuple(warnings))


# --------------------------------------------------------------------------------------------------------------------
# Obsidian vault


class VaultSource:
    """An Obsidian vault: every ``*.md`` outside dot-directories. FileState: the file's mtime_ns and size (to skip
    unchanged files without reading them) and the sha256 of its bytes (so a touch without an edit costs no
    re-embedding)."""

    def __init__(self, name: str, root: Path, exclude: Sequence[str] = (), max_file_bytes: int = 1_000_000,
                 max_chars: int = 1200) -> None:
        self.name = name
        self.root = Path(root)
        self.exclude = tuple(exclude)
        self.max_file_bytes = max_file_bytes
        self.max_chars = max_chars

    def _read(self, path: Path) -> bytes:
        """At most max_file_bytes + 1 bytes: a file that grew past the limit since its stat is not read whole."""
        with path.open("rb") as f:
            return f.read(self.max_file_bytes + 1)

    def _gone(self, why: str) -> SourceGone:
        return SourceGone(f"vault {self.name!r} at {self.root}: {why}")

    def _listing(self) -> list[os.DirEntry[str]]:
        try:
            if not stat.S_ISDIR(os.stat(self.root).st_mode):
                raise self._gone("not a directory")
            with os.scandir(self.root) as it:
                return list(it)
        except OSError as e:  # missing, unreadable, a stale network mount (ESTALE, ENOTCONN), I/O error
            raise self._gone(e.strerror or str(e)) from e

    def scan(self, known: Mapping[str, FileState]) -> ScanResult:
        """Walk the vault and compare with ``known``; raises SourceGone when the root is missing, unreadable, gone
        by the end of the walk, or completely empty while ``known`` is not (the mount point of an unmounted disk:
        a real vault has at least its ``.obsidian`` directory)."""
        result = ScanResult()
        top = self._listing()
        if not top and known:
            raise self._gone("empty directory (not mounted?)")
        real_root = os.path.realpath(self.root)
        seen: set[str] = set()  # present and still indexable: not deleted
        refused: set[str] = set()  # present but no longer indexable (too large, binary): delete what is indexed
        unsure: set[str] = set()  # files that could not be examined this time: neither changed nor deleted
        unsure_dirs: list[str] = []  # directories that could not be listed ("a/b/")
        stack: list[tuple[str, list[os.DirEntry[str]]]] = [("", top)]
        while stack:
            prefix, entries = stack.pop()
            for entry in sorted(entries, key=lambda e: e.name):
                name = entry.name
                if name.startswith("."):
                    continue  # .obsidian, .trash, .git, dotfiles: never notes
                rel = prefix + name
                if not _valid_name(rel):
                    if name.lower().endswith(".md"):
                        result.skipped.append((_printable(rel), "file name is not valid UTF-8"))
                    continue
                try:
                    is_link = entry.is_symlink()
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError as e:
                    result.skipped.append((rel, f"unreadable: {e.strerror}"))
                    unsure.add(rel)
                    unsure_dirs.append(rel + "/")
                    continue
                if is_dir:
                    if _matches(rel, self.exclude):
                        result.skipped.append((rel + "/", "excluded"))
                        continue
                    try:
                        with os.scandir(entry.path) as it:
                            stack.append((rel + "/", list(it)))
                    except OSError as e:
                        result.skipped.append((rel + "/", f"unreadable directory: {e.strerror}"))
                        unsure_dirs.append(rel + "/")
                    continue
                if not name.lower().endswith(".md"):
                    if not is_link or not os.path.isdir(entry.path):
                        result.attachments += 1
                    else:
                        result.skipped.append((rel + "/", "symlinked directory not followed"))
                    continue
                if _matches(rel, self.exclude):
                    result.skipped.append((rel, "excluded"))
                    continue
                if is_link:
                    target = os.path.realpath(entry.path)
                    if os.path.commonpath([target, real_root]) != real_root:
                        result.skipped.append((rel, "symlink out of the vault"))
                        continue
                    if not os.path.exists(target):
                        result.skipped.append((rel, "broken symlink"))
                        continue
                self._file(rel, Path(entry.path), known.get(rel), result, seen, refused, unsure)
        # The root may have vanished while we walked (a disk unplugged): its files then look deleted. They are not.
        try:
            if not stat.S_ISDIR(os.stat(self.root).st_mode):
                raise self._gone("not a directory any more")
        except OSError as e:
            raise self._gone(f"disappeared during the scan: {e.strerror}") from e
        result.deleted = sorted(
            p for p in known
            if (p not in seen or p in refused) and p not in unsure and not any(p.startswith(d) for d in unsure_dirs))
        return result

    def _file(self, rel: str, path: Path, old: FileState | None, result: ScanResult, seen: set[str],
              refused: set[str], unsure: set[str]) -> None:
        """Examine one note; any I/O failure is a skip (checked again next scan), never an exception."""

        def unsure_because(e: OSError) -> None:
            why = "vanished during the scan" if isinstance(e, FileNotFoundError) else f"unreadable: {e.strerror}"
            result.skipped.append((rel, why))
            unsure.add(rel)

        try:
            st = os.stat(path)  # before reading: if the file changes in between, the next scan sees a new mtime
        except OSError as e:
            unsure_because(e)
            return
        if not stat.S_ISREG(st.st_mode):
            result.skipped.append((rel, "not a regular file"))  # a FIFO would block the read forever
            return
        seen.add(rel)
        if old is not None and old.mtime_ns == st.st_mtime_ns and old.size == st.st_size:
            return
        if st.st_size > self.max_file_bytes:
            result.skipped.append((rel, f"too large: {st.st_size} bytes (limit {self.max_file_bytes})"))
            refused.add(rel)
            return
        try:
            data = self._read(path)
        except OSError as e:
            unsure_because(e)
            return
        state = FileState(st.st_mtime_ns, st.st_size, hashlib.sha256(data).hexdigest())
        if old is not None and old.sha == state.sha:
            result.touched[rel] = state
            return
        decoded = read_text(data, self.max_file_bytes)
        if isinstance(decoded, Refused):
            result.skipped.append((rel, decoded.reason))
            refused.add(rel)
            return
        result.changed.append(_document(rel, state, decoded, "markdown", self.max_chars))


# --------------------------------------------------------------------------------------------------------------------
# git repositories

_HEX = re.compile(r"[0-9a-fA-F]{4,64}")
#: Inherited variables that would point git at another repository than ``root``.
_GIT_REDIRECTS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR",
                  "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_CEILING_DIRECTORIES", "GIT_PREFIX")
_LOG_FORMAT = "--format=%H%x1f%aN%x1f%at%x1f%B"


@dataclass(frozen=True, slots=True)
class _Entry:
    """A file at HEAD: its path, mode (100644, 120000 symlink, 160000 submodule), blob sha, size if known."""

    path: str
    mode: str
    sha: str
    size: int | None = None


class GitSource:
    """A git repository, as committed at HEAD (the working tree is never read: uncommitted edits are not indexed,
    and a checkout in progress cannot show half a state). FileState of a file: mtime_ns = the HEAD commit time when
    it was read, size = blob size, sha = blob sha (the identity that matters). Commit messages are documents too,
    with path ``commit:<sha>``.

    The incremental path (``git diff-tree`` from the last scanned commit) only sees files whose blobs changed:
    after changing ``include``/``exclude`` or the limits, scan with ``last_commit=None`` to re-evaluate every file.
    """

    def __init__(self, name: str, root: Path, include: Sequence[str] = (), exclude: Sequence[str] = (),
                 max_file_bytes: int = 1_000_000, max_commits: int = 500, max_chars: int = 1500,
                 timeout: float = 120.0) -> None:
        self.name = name
        self.root = Path(root)
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.max_file_bytes = max_file_bytes
        self.max_commits = max_commits
        self.max_chars = max_chars
        self.timeout = timeout

    # -- running git

    def _env(self) -> dict[str, str]:
        """No inherited redirection, no prompts, no discovery above ``root`` (a deleted repository inside another
        one must not silently become the outer one), stable English messages."""
        env = {k: v for k, v in os.environ.items() if k not in _GIT_REDIRECTS}
        env.update(GIT_CEILING_DIRECTORIES=str(self.root.resolve().parent), GIT_TERMINAL_PROMPT="0",
                   GIT_OPTIONAL_LOCKS="0", LC_ALL="C", GIT_PAGER="cat")
        return env

    def _git(self, *args: str, input: bytes = b"", ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[bytes]:
        """Run git in ``root``; an exit code not in ``ok`` is a GitError. stdin is always given (empty by default):
        git must never wait for a terminal."""
        try:
            done = subprocess.run(["git", *args], cwd=self.root, env=self._env(), input=input, capture_output=True,
                                  timeout=self.timeout)
        except subprocess.TimeoutExpired as e:
            raise GitError(f"git {args[0]} timed out after {self.timeout:g} s in {self.root}") from e
        except OSError as e:
            raise GitError(f"git {args[0]} could not run in {self.root}: {e}") from e
        if done.returncode not in ok:
            msg = done.stderr.decode("utf-8", "replace").strip()
            raise GitError(f"git {args[0]} failed ({done.returncode}) in {self.root}: {msg}")
        return done

    def _cat_blobs(self, shas: Sequence[str]) -> Iterator[tuple[str, bytes | None]]:
        """Blob contents in order, from one ``git cat-file --batch`` process (None for a missing object). Input is
        fed from a thread so that neither pipe can fill up and deadlock; a timer kills git at the timeout."""
        if not shas:
            return
        try:
            proc = subprocess.Popen(["git", "cat-file", "--batch", "--buffer"], cwd=self.root, env=self._env(),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError as e:
            raise GitError(f"git cat-file could not run in {self.root}: {e}") from e
        assert proc.stdin is not None and proc.stdout is not None
        stdin: IO[bytes] = proc.stdin
        out: IO[bytes] = proc.stdout

        def feed() -> None:
            try:
                for sha in shas:
                    stdin.write(sha.encode("ascii") + b"\n")
            except (OSError, ValueError):
                pass  # git died (killed at the timeout, or the reader stopped): the reader reports it
            finally:
                try:
                    stdin.close()
                except (OSError, ValueError):
                    pass

        timer = threading.Timer(self.timeout, proc.kill)
        writer = threading.Thread(target=feed, name="git-cat-file-feed", daemon=True)
        timer.start()
        writer.start()
        try:
            for sha in shas:
                header = out.readline().split()
                if not header:
                    raise GitError(f"git cat-file ended early in {self.root}"
                                   + ("" if timer.is_alive() else f" (timed out after {self.timeout:g} s)"))
                if len(header) == 3 and header[1] == b"blob":
                    size = int(header[2])
                    data = out.read(size)
                    out.read(1)  # the LF after the contents
                    if len(data) != size:
                        raise GitError(f"git cat-file: short read for {sha} in {self.root}")
                    yield sha, data
                elif len(header) == 3:  # not a blob (cannot happen for tree entries): skip its contents
                    out.read(int(header[2]) + 1)
                    yield sha, None
                else:
                    yield sha, None  # "<sha> missing"
        finally:
            timer.cancel()
            out.close()  # an abandoned read: git gets EPIPE and exits
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            writer.join(timeout=10)

    # -- scanning

    def scan(self, last_commit: str | None, known: Mapping[str, FileState]) -> ScanResult:
        """Compare HEAD with ``known`` (and ``last_commit``, the head of the previous scan). Raises SourceGone when
        the root is missing or not a repository, GitError when git itself fails."""
        if not self.root.is_dir():
            raise SourceGone(f"repository {self.name!r} at {self.root}: missing")
        try:
            return self._scan(last_commit, known)
        except (GitError, OSError) as e:
            if not self.root.is_dir():  # deleted or unmounted while we were scanning
                raise SourceGone(f"repository {self.name!r} at {self.root}: disappeared during the scan") from e
            if isinstance(e, GitError):
                raise
            raise GitError(f"{self.root}: {e}") from e

    def _scan(self, last_commit: str | None, known: Mapping[str, FileState]) -> ScanResult:
        result = ScanResult()
        probe = self._git("rev-parse", "--git-dir", ok=(0, 128))
        if probe.returncode != 0:
            msg = probe.stderr.decode("utf-8", "replace").strip()
            raise SourceGone(f"repository {self.name!r} at {self.root}: not a git repository ({msg})")
        verify = self._git("rev-parse", "--verify", "-q", "HEAD^{commit}", ok=(0, 1, 128))
        if verify.returncode != 0:
            return result  # no commits yet
        head = verify.stdout.decode("ascii").strip()
        result.head = head
        head_time = self._commit_time(head)

        incremental = False
        if last_commit:
            if _HEX.fullmatch(last_commit):
                is_ancestor = self._git("merge-base", "--is-ancestor", last_commit, head, ok=(0, 1, 128))
                incremental = is_ancestor.returncode == 0  # 1: not an ancestor, 128: unknown (gone after a rewrite)
            result.rewritten = not incremental

        known_files = {p: s for p, s in known.items() if not p.startswith("commit:")}
        if incremental:
            assert last_commit is not None
            entries, gone = self._diff(last_commit, head)
            considered = {e.path for e in entries} | set(gone)
        else:
            entries, gone = self._tree(head), []
            considered = set(known_files)
        keep = self._files(entries, known_files, head_time, result)
        result.deleted = sorted(p for p in known_files if p in considered and p not in keep)
        self._commits(last_commit if incremental else None, head, known, result)
        result.deleted.sort()
        return result

    def _commit_time(self, sha: str) -> int:
        """Committer time (seconds) from the raw commit object (plumbing: no user config can change the output)."""
        raw = self._git("cat-file", "commit", sha).stdout
        for line in raw.split(b"\n"):
            if not line:
                break
            if line.startswith(b"committer "):
                try:
                    return int(line.rsplit(b" ", 2)[1])
                except (IndexError, ValueError):
                    break
        return 0

    def _tree(self, head: str) -> list[_Entry]:
        """Every file at HEAD with its blob sha and size (``ls-tree -r -z -l``: no quoting of odd names)."""
        out = self._git("ls-tree", "-r", "-z", "-l", "--full-tree", head).stdout
        entries: list[_Entry] = []
        for record in out.split(b"\0"):
            if not record:
                continue
            meta, _, raw_path = record.partition(b"\t")
            mode, _kind, sha, size = meta.decode("ascii").split()
            entries.append(_Entry(raw_path.decode("utf-8", "surrogateescape"), mode, sha,
                                  int(size) if size.isdigit() else None))
        return entries

    def _diff(self, last: str, head: str) -> tuple[list[_Entry], list[str]]:
        """Files added or modified since ``last`` (with their new blob sha) and files deleted. ``diff-tree`` is the
        plumbing form of ``git diff --name-status``; --raw adds the blob shas; --no-renames makes a rename a
        delete plus an add."""
        out = self._git("diff-tree", "-r", "-z", "--raw", "--no-renames", "--no-abbrev", last, head).stdout
        fields = out.split(b"\0")
        entries: list[_Entry] = []
        gone: list[str] = []
        i = 0
        while i + 1 < len(fields):
            meta, raw_path = fields[i], fields[i + 1]
            i += 2
            if not meta.startswith(b":"):
                continue
            _old_mode, new_mode, _old_sha, new_sha, status = meta[1:].decode("ascii").split()
            path = raw_path.decode("utf-8", "surrogateescape")
            if status.startswith("D"):
                gone.append(path)
            else:
                entries.append(_Entry(path, new_mode, new_sha))
        return entries, gone

    def _sizes(self, shas: Sequence[str]) -> dict[str, int]:
        """Blob sizes for the diff path (``ls-tree -l`` gives them for the full path)."""
        if not shas:
            return {}
        out = self._git("cat-file", "--batch-check", input="".join(s + "\n" for s in shas).encode("ascii")).stdout
        sizes: dict[str, int] = {}
        for line in out.decode("ascii", "replace").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2].isdigit():
                sizes[parts[0]] = int(parts[2])
        return sizes

    def _language(self, path: str) -> tuple[str | None, str]:
        """(language, "") or (None, why the file is skipped)."""
        if _matches(path, self.exclude):
            return None, "excluded"
        language = language_of(path)
        if language is None:
            if not _matches(path, self.include):
                return None, "unknown file type"
            language = "text"
        return language, ""

    def _files(self, entries: Sequence[_Entry], known: Mapping[str, FileState], head_time: int,
               result: ScanResult) -> set[str]:
        """Filter, read and chunk; returns the paths to keep in the index (unchanged, re-read, or unreadable this
        time); a known path not kept and considered is deleted."""
        keep: set[str] = set()
        wanted: list[tuple[_Entry, str]] = []
        for entry in entries:
            if not _valid_name(entry.path):
                result.skipped.append((_printable(entry.path), "file name is not valid UTF-8"))
                continue
            if entry.mode == "160000":
                result.skipped.append((entry.path, "submodule"))
                continue
            if entry.mode == "120000":
                result.skipped.append((entry.path, "symlink"))
                continue
            language, why = self._language(entry.path)
            if language is None:
                result.skipped.append((entry.path, why))
                continue
            if entry.size is not None and entry.size > self.max_file_bytes:
                result.skipped.append((entry.path, f"too large: {entry.size} bytes (limit {self.max_file_bytes})"))
                continue
            old = known.get(entry.path)
            if old is not None and old.sha == entry.sha:
                keep.add(entry.path)
                continue
            wanted.append((entry, language))

        sizes = self._sizes(sorted({e.sha for e, _ in wanted if e.size is None}))
        to_read: dict[str, list[tuple[_Entry, str, int]]] = {}
        for entry, language in wanted:
            size = entry.size if entry.size is not None else sizes.get(entry.sha)
            if size is None:
                result.skipped.append((entry.path, "blob missing"))
                keep.add(entry.path)  # a damaged or partial clone: keep what is indexed
            elif size > self.max_file_bytes:
                result.skipped.append((entry.path, f"too large: {size} bytes (limit {self.max_file_bytes})"))
            else:
                to_read.setdefault(entry.sha, []).append((entry, language, size))

        for sha, data in self._cat_blobs(list(to_read)):
            for entry, language, size in to_read[sha]:
                if data is None:
                    result.skipped.append((entry.path, "blob missing"))
                    keep.add(entry.path)
                    continue
                decoded = read_text(data, self.max_file_bytes)
                if isinstance(decoded, Refused):
                    result.skipped.append((entry.path, decoded.reason))
                    continue
                state = FileState(head_time * 1_000_000_000, size, sha)
                result.changed.append(_document(entry.path, state, decoded, language, self.max_chars))
                keep.add(entry.path)
        return keep

    def _log(self, *revs: str, limit: int) -> list[tuple[str, str, int, str]]:
        """(sha, author, author time, message), newest first. -z separates commits (git refuses NUL in
        messages); \\x1f separates fields, the message last so that it may contain anything else."""
        if limit <= 0:
            return []
        out = self._git("log", "-z", "--no-show-signature", "--no-color", f"--max-count={limit}", _LOG_FORMAT,
                        *revs, "--").stdout
        commits: list[tuple[str, str, int, str]] = []
        for record in out.split(b"\0"):
            parts = record.decode("utf-8", "replace").split("\x1f", 3)
            if len(parts) == 4 and _HEX.fullmatch(parts[0]):
                sha, author, when, message = parts
                commits.append((sha, author, int(when) if when.lstrip("-").isdigit() else 0, message))
        return commits

    def _commits(self, last: str | None, head: str, known: Mapping[str, FileState], result: ScanResult) -> None:
        """Commit messages: ``last..HEAD`` on the incremental path; otherwise the newest max_commits not yet
        known, and known commits no longer reachable from HEAD (history rewritten) are deleted."""
        known_commits = {p.removeprefix("commit:") for p in known if p.startswith("commit:")}
        if last is not None:
            new = self._log(f"{last}..{head}", limit=self.max_commits)
        else:
            new = self._log(head, limit=self.max_commits)
            if known_commits:
                reachable = set(self._git("rev-list", head).stdout.decode("ascii").split())
                result.deleted.extend(f"commit:{s}" for s in known_commits if s not in reachable)
        for sha, author, when, message in new:
            if sha in known_commits:
                continue
            chunk = chunk_commit(sha, author, when, message, self.max_chars)
            if chunk is None:
                result.skipped.append((f"commit:{sha}", "empty commit message"))
                continue
            state = FileState(when * 1_000_000_000, len(message), sha)
            result.changed.append(Document(chunk.path, state, (chunk,)))


__all__ = ["Document", "FileState", "GitError", "GitSource", "Refused", "ScanResult", "SourceGone", "Text",
           "VaultSource", "read_text"]
