"""Files only their owner may read (logins, password hashes, tokens), written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """Write ``text`` to ``path`` with mode 0600: into a file beside it that is 0600 from its
    creation, then renamed over it, so that no reader ever sees half a file or a readable one.
    ``owner``: (uid, gid) to give it (root writing for another user)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if owner is not None:
        os.chown(tmp, *owner)
    tmp.replace(path)
