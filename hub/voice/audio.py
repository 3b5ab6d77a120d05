"""The one place audio bytes are read and validated.

Every speech model of the hub takes 16 kHz mono: :func:`decode_audio` turns what a caller sends
(a WAV file, or raw 16-bit PCM when it names the rate) into exactly that, or raises
:class:`AudioError` saying where and why, in words a person sending the request can act on.
:func:`wav_duration_s` reads only the header, so the hub can price a request at its edge without
decoding it.

The WAV chunks are parsed here with :mod:`struct` rather than the standard library's ``wave``,
which refuses float samples and WAVE_FORMAT_EXTENSIBLE headers, both common in what phones and
recorders write.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np

#: What every speech model here takes.
SAMPLE_RATE = 16000
#: Ten minutes: longer recordings are split by the caller, so one call stays bounded in memory
#: and time.
MAX_AUDIO_S = 600.0
#: Below 8 kHz the band that carries consonants is gone; above 48 kHz nobody records speech,
#: and refusing it bounds the resampling work.
MIN_RATE, MAX_RATE = 8000, 48000
MAX_CHANNELS = 8

AudioErrorCode = Literal["bad_audio", "bad_rate", "too_long"]

_FORMAT_PCM, _FORMAT_FLOAT, _FORMAT_EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
#: The tail every KSDATAFORMAT_SUBTYPE GUID shares; its first two bytes are the format tag.
_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
#: Format tags seen in the wild, to say what was sent rather than print a number.
_TAG_NAMES = {0x0002: "Microsoft ADPCM", 0x0006: "A-law", 0x0007: "mu-law", 0x0011: "IMA ADPCM",
              0x0031: "GSM 6.10", 0x0055: "MP3", 0x00FF: "AAC", 0x1610: "HE-AAC"}
#: Data sizes a writer puts in the header when it streams and cannot seek back (espeak-ng
#: --stdout writes 0x7ffff000, ffmpeg to a pipe 0xffffffff): the data runs to the end.
_STREAMED_SIZES = frozenset({0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000})
#: Window of :meth:`Audio.is_silent`: about one syllable.
_SILENCE_WINDOW_S = 0.1


class AudioError(ValueError):
    """Audio that cannot be used; ``code`` is ``bad_audio``, ``bad_rate`` or ``too_long``."""

    def __init__(self, code: AudioErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: AudioErrorCode = code
        self.message = message


@dataclass(frozen=True)
class Audio:
    """Decoded audio: int16 mono samples at :data:`SAMPLE_RATE`, and what it was sent as."""

    samples: np.ndarray
    source_rate: int
    source_channels: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    def float32(self) -> np.ndarray:
        """Samples as float32 in −1..1, what Whisper takes."""
        return self.samples.astype(np.float32) / 32768.0

    def wav_bytes(self) -> bytes:
        """A 16 kHz mono 16-bit PCM WAV of these samples."""
        body = self.samples.astype("<i2").tobytes()
        header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(body), b"WAVE", b"fmt ", 16, _FORMAT_PCM, 1,
                             SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16, b"data", len(body))
        return header + body

    def rms_dbfs(self) -> float:
        """Loudness of the whole clip, dB relative to full scale (−inf for digital silence)."""
        return _dbfs(self.samples)

    def is_silent(self, threshold_dbfs: float = -45.0) -> bool:
        """True when no 100 ms window reaches ``threshold_dbfs``. Windows rather than the whole
        clip: one word in a long quiet recording would not lift the clip's mean above it."""
        n = int(SAMPLE_RATE * _SILENCE_WINDOW_S)
        x = self.samples.astype(np.float64)
        if len(x) <= n:
            return _dbfs(self.samples) < threshold_dbfs
        usable = len(x) - len(x) % n
        windows = x[:usable].reshape(-1, n)
        power = (windows * windows).mean(axis=1)
        tail = x[usable:]
        loudest = max(float(power.max()), float((tail * tail).mean()) if len(tail) else 0.0)
        return _power_dbfs(loudest) < threshold_dbfs


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where the samples are and how they are stored, from the header alone."""

    rate: int
    channels: int
    bits: int
    is_float: bool
    offset: int  # first byte of the samples in the data
    length: int  # bytes of whole frames, as the header says
    present: int  # bytes of the data chunk actually there (less than length: truncated)

    @property
    def frames(self) -> int:
        return self.length // self.block

    @property
    def block(self) -> int:
        return self.channels * self.bits // 8

    @property
    def duration_s(self) -> float:
        return self.frames / self.rate


def decode_audio(data: bytes, *, where: str = "data", pcm_rate: int | None = None,
                 max_s: float = MAX_AUDIO_S) -> Audio:
    """WAV bytes (or raw 16-bit little-endian mono PCM when ``pcm_rate`` is given) → 16 kHz mono.

    A WAV may hold 8-, 16- or 32-bit integer or 32-bit float samples, plain or
    WAVE_FORMAT_EXTENSIBLE, with its chunks in any order and 1–8 channels (mixed to mono).
    Rates 8–48 kHz are resampled exactly (a polyphase filter at the ratio of the two rates).
    Bytes that start with a RIFF/WAVE header are read as a WAV even when ``pcm_rate`` is given:
    its header is better evidence than the caller's guess. The length limit is checked from the
    header, before any sample is decoded.
    """
    layout = _layout(data, where, pcm_rate)
    if layout.duration_s > max_s:
        raise AudioError("too_long", f"{where}: audio is {layout.duration_s:.1f} s long (from the header); "
                                     f"the limit is {max_s:g} s: split it into shorter pieces")
    _check_complete(layout, where)
    if layout.frames == 0:
        raise AudioError("bad_audio", f"{where}: no samples: the audio is empty")
    x = _samples(data, layout, where)
    if layout.rate != SAMPLE_RATE:
        x = _resample(x, layout.rate)
    pcm = np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
    return Audio(samples=pcm, source_rate=layout.rate, source_channels=layout.channels)


def wav_duration_s(data: bytes, *, where: str = "data", pcm_rate: int | None = None) -> float:
    """Seconds of audio, from the header alone (no sample is read): what the hub uses to price a
    request at its edge. Raises the same :class:`AudioError` as :func:`decode_audio` for a header
    it would refuse, and for a data chunk cut short (never ``too_long``: the caller compares
    with its own limit)."""
    layout = _layout(data, where, pcm_rate)
    _check_complete(layout, where)
    return layout.duration_s


def _check_complete(layout: _Layout, where: str) -> None:
    if layout.present < layout.length:
        raise AudioError("bad_audio", f"{where}: truncated: data chunk says {layout.length} bytes, "
                                      f"{layout.present} present")


# -- header --------------------------------------------------------------------------------------


def _layout(data: bytes, where: str, pcm_rate: int | None) -> _Layout:
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return _wav_layout(data, where)
    if pcm_rate is not None:
        _check_rate(pcm_rate, where)
        if len(data) % 2:
            raise AudioError("bad_audio", f"{where}: raw PCM is {len(data)} bytes, not whole 16-bit samples")
        return _Layout(rate=pcm_rate, channels=1, bits=16, is_float=False, offset=0, length=len(data),
                       present=len(data))
    if not data:
        raise AudioError("bad_audio", f"{where}: no audio: the data is empty")
    first = " ".join(f"{b:02x}" for b in data[:4])
    what = "a big-endian RIFX WAV is not supported" if data[:4] == b"RIFX" else (
        "an RF64 WAV is not supported" if data[:4] == b"RF64" else "no RIFF/WAVE header")
    raise AudioError("bad_audio", f"{where}: not a WAV file: {what} (first bytes {first}); send a WAV, "
                                  f"or raw 16 kHz 16-bit mono PCM with pcm_rate")


def _wav_layout(data: bytes, where: str) -> _Layout:
    fmt: tuple[int, int, int, int, int] | None = None  # tag, channels, rate, block align, bits
    data_at: tuple[int, int] | None = None  # offset, size the header gives
    pos, end = 12, len(data)
    while pos + 8 <= end:
        cid, size = struct.unpack_from("<4sI", data, pos)
        body = pos + 8
        name = cid.decode("latin-1")
        if cid == b"data":
            present = end - body
            if size in _STREAMED_SIZES:
                size = present  # streamed: the data runs to the end
            data_at = (body, size)
            if size > present:
                # Cut short: nothing can follow. The caller says so once it has checked the
                # length the header claims (too long wins: the header alone proves it).
                if fmt is not None:
                    break
                raise AudioError("bad_audio", f"{where}: truncated: data chunk says {size} bytes, {present} present")
        elif cid == b"fmt ":
            if body + size > end:
                raise AudioError("bad_audio", f"{where}: truncated: fmt chunk says {size} bytes, {end - body} present")
            fmt = _fmt(data[body:body + size], where)
        elif body + size > end and (fmt is None or data_at is None):
            raise AudioError("bad_audio", f"{where}: truncated: {name!r} chunk says {size} bytes, "
                                          f"{end - body} present")
        if fmt is not None and data_at is not None:
            break
        pos = body + size + (size & 1)  # chunks are padded to an even size
    if fmt is None:
        raise AudioError("bad_audio", f"{where}: WAV has no fmt chunk: cannot tell how its samples are stored")
    if data_at is None:
        raise AudioError("bad_audio", f"{where}: WAV has no data chunk: no samples")
    tag, channels, rate, block_align, bits = fmt
    offset, size = data_at
    # A trailing partial frame (a writer that stopped mid-frame) is dropped, not refused.
    return _Layout(rate=rate, channels=channels, bits=bits, is_float=tag == _FORMAT_FLOAT, offset=offset,
                   length=size - size % block_align, present=min(size, end - offset))


def _fmt(chunk: bytes, where: str) -> tuple[int, int, int, int, int]:
    if len(chunk) < 16:
        raise AudioError("bad_audio", f"{where}: fmt chunk is {len(chunk)} bytes; a WAV's has at least 16")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", chunk)
    if tag == _FORMAT_EXTENSIBLE:
        if len(chunk) < 40:
            raise AudioError("bad_audio", f"{where}: WAVE_FORMAT_EXTENSIBLE fmt chunk is {len(chunk)} bytes; "
                                          f"it needs 40")
        guid = chunk[24:40]
        if guid[2:] != _GUID_TAIL:
            raise AudioError("bad_audio", f"{where}: WAVE_FORMAT_EXTENSIBLE with an unknown subformat "
                                          f"{guid.hex()}: use 16-bit PCM or 32-bit float")
        tag = struct.unpack_from("<H", guid)[0]
    if channels == 0 or channels > MAX_CHANNELS:
        raise AudioError("bad_audio", f"{where}: WAV says {channels} channels: 1 to {MAX_CHANNELS} are mixed to mono")
    _check_rate(rate, where)
    if tag == _FORMAT_PCM:
        if bits not in (8, 16, 32):
            raise AudioError("bad_audio", f"{where}: sample format {bits}-bit PCM not supported: use 16-bit PCM "
                                          f"or 32-bit float")
    elif tag == _FORMAT_FLOAT:
        if bits != 32:
            raise AudioError("bad_audio", f"{where}: sample format {bits}-bit float not supported: use 16-bit "
                                          f"PCM or 32-bit float")
    else:
        name = _TAG_NAMES.get(tag, "compressed or unknown")
        raise AudioError("bad_audio", f"{where}: sample format 0x{tag:04x} ({name}) not supported: use 16-bit PCM "
                                      f"or 32-bit float")
    if block_align != channels * bits // 8:
        raise AudioError("bad_audio", f"{where}: fmt chunk inconsistent: block align {block_align}, but "
                                      f"{channels} channels of {bits} bits make {channels * bits // 8}")
    return tag, channels, rate, block_align, bits


def _check_rate(rate: int, where: str) -> None:
    if rate < MIN_RATE:
        raise AudioError("bad_rate", f"{where}: sample rate {rate} Hz: below {MIN_RATE} Hz, speech cannot be recovered")
    if rate > MAX_RATE:
        raise AudioError("bad_rate", f"{where}: sample rate {rate} Hz: above {MAX_RATE} Hz; resample to 16 kHz "
                                     f"before sending")


# -- samples -------------------------------------------------------------------------------------


def _samples(data: bytes, layout: _Layout, where: str) -> np.ndarray:
    """The samples as float32 mono in −1..1, at the source rate."""
    raw = memoryview(data)[layout.offset:layout.offset + layout.length]
    if layout.is_float:
        x = np.frombuffer(raw, dtype="<f4")
        if not np.isfinite(x).all():
            raise AudioError("bad_audio", f"{where}: float samples include NaN or infinity")
        x = np.clip(x, -1.0, 1.0)
    elif layout.bits == 8:  # unsigned, centred on 128
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif layout.bits == 16:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    else:
        x = (np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    if layout.channels > 1:
        x = x.reshape(-1, layout.channels).mean(axis=1, dtype=np.float32)
    return x.astype(np.float32, copy=False)


def _resample(x: np.ndarray, rate: int) -> np.ndarray:
    from scipy.signal import resample_poly  # scipy is slow to import; only resampling needs it

    g = math.gcd(SAMPLE_RATE, rate)
    return resample_poly(x, SAMPLE_RATE // g, rate // g).astype(np.float32)


def _dbfs(samples: np.ndarray) -> float:
    if len(samples) == 0:
        return -math.inf
    x = samples.astype(np.float64)
    return _power_dbfs(float((x * x).mean()))


def _power_dbfs(mean_square: float) -> float:
    return 10.0 * math.log10(mean_square / (32768.0 * 32768.0)) if mean_square > 0 else -math.inf
