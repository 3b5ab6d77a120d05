"""Real speech for the voice tests, synthesised with Debian's espeak-ng or flite.

``voice`` is ``"espeak-ng:<voice>"`` (``espeak-ng:en-us``, ``espeak-ng:en-us+m3``; 22050 Hz) or
``"flite:<voice>"`` (``flite:slt`` 16 kHz, ``flite:kal`` 8 kHz, ``flite:rms``, ...). A test whose
synthesiser is not installed is skipped, saying which package to install.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import unicodedata
from pathlib import Path

import pytest

#: flite's speaking rate is about this many words per minute at duration_stretch 1.
_FLITE_WPM = 175.0


def speak(text: str, voice: str, path: Path, rate: int | None = None) -> Path:
    """Write ``text`` spoken by ``voice`` to the WAV ``path``; ``rate`` in words per minute."""
    tool, _, name = voice.partition(":")
    if tool not in ("espeak-ng", "flite") or not name:
        raise ValueError(f"voice {voice!r}: expected 'espeak-ng:<voice>' or 'flite:<voice>'")
    if shutil.which(tool) is None:
        others = [t for t in ("espeak-ng", "flite") if shutil.which(t)]
        pytest.skip(f"{tool} is not installed (apt-get install espeak-ng flite)"
                    + (f"; only {', '.join(others)} is" if others else "; neither synthesiser is"))
    if tool == "espeak-ng":
        cmd = ["espeak-ng", "-v", name, "-w", str(path)] + (["-s", str(rate)] if rate else []) + [text]
    else:
        cmd = ["flite", "-voice", name, "-t", text, "-o", str(path)]
        if rate:
            cmd += ["--setf", f"duration_stretch={_FLITE_WPM / rate:.3f}"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return path


def words(text: str) -> list[str]:
    """Lower-case words without punctuation: what a transcript is compared on."""
    return re.findall(r"[a-z0-9']+", unicodedata.normalize("NFKC", text).casefold())
