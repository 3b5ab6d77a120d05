"""Live dictation over MQTT: 16-bit PCM in numbered chunks, put back together into utterances.

A device publishes binary frames on ``<root>/device/<id>/voice`` (its own namespace: the broker's
ACL lets only that device write there). Each frame is a 14-byte big-endian header and then
little-endian 16-bit mono PCM::

    magic "SV" | version 1 (u8) | flags (u8) | session (u32) | seq (u32) | sample rate (u16)

``flags``: 1 = first frame of the session, 2 = last frame. ``seq`` counts from 0 within a session.
A frame carries at most :data:`MAX_CHUNK_BYTES` of PCM (1 s at 16 kHz).

MQTT keeps a client's messages in order at QoS 1, but a reconnecting device can resend or skip:
frames are re-ordered by ``seq``, duplicates dropped, and a gap (a chunk that never came) becomes
silence of the chunks' usual length in an utterance marked *partial*, with the missing numbers.
A session with no frame for ``idle_s`` ends as partial too ("no end frame"); one longer than
``max_s`` is cut there. Everything is a pure function of the frames and the ``now`` passed in, so
the tests move time by hand.
"""

from __future__ import annotations

import statistics
import struct
from dataclasses import dataclass, field

HEADER = struct.Struct(">2sBBIIH")
MAGIC = b"SV"
VERSION = 1
FLAG_START, FLAG_END = 1, 2
MAX_CHUNK_BYTES = 32_000
MIN_RATE, MAX_RATE = 8_000, 48_000


class StreamError(ValueError):
    """A frame that cannot be used; the message names what and why."""


@dataclass(frozen=True, slots=True)
class Frame:
    session: int
    seq: int
    flags: int
    rate: int
    pcm: bytes

    @property
    def start(self) -> bool:
        return bool(self.flags & FLAG_START)

    @property
    def end(self) -> bool:
        return bool(self.flags & FLAG_END)


def encode_frame(session: int, seq: int, pcm: bytes, rate: int = 16_000, start: bool = False,
                 end: bool = False) -> bytes:
    """What a device sends (the CLI's ``listen --stream`` and the tests use it)."""
    return HEADER.pack(MAGIC, VERSION, (FLAG_START if start else 0) | (FLAG_END if end else 0), session, seq,
                       rate) + pcm


def parse_frame(payload: bytes) -> Frame:
    if len(payload) < HEADER.size:
        raise StreamError(f"frame of {len(payload)} bytes is shorter than the {HEADER.size}-byte header")
    magic, version, flags, session, seq, rate = HEADER.unpack_from(payload)
    if magic != MAGIC:
        raise StreamError(f"frame does not start with 'SV' (got {magic!r}): not a voice frame")
    if version != VERSION:
        raise StreamError(f"frame version {version}; this hub speaks version {VERSION}")
    if flags & ~(FLAG_START | FLAG_END):
        raise StreamError(f"unknown flags 0x{flags:02x} (1 = start, 2 = end)")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise StreamError(f"sample rate {rate} Hz outside {MIN_RATE}-{MAX_RATE}")
    pcm = payload[HEADER.size:]
    if len(pcm) > MAX_CHUNK_BYTES:
        raise StreamError(f"chunk of {len(pcm)} PCM bytes exceeds {MAX_CHUNK_BYTES} (1 s at 16 kHz)")
    if len(pcm) % 2:
        raise StreamError(f"chunk of {len(pcm)} bytes is not whole 16-bit samples")
    return Frame(session, seq, flags, rate, pcm)


@dataclass(frozen=True)
class Finished:
    """One session's audio, in order, and how complete it is."""

    source: str
    session: int
    pcm: bytes
    rate: int
    ended_by: str  # "end" | "idle" | "too_long"
    missing: tuple[int, ...] = ()
    duplicates: int = 0
    reordered: int = 0

    @property
    def audio_s(self) -> float:
        return len(self.pcm) / 2 / self.rate

    @property
    def partial(self) -> bool:
        return bool(self.missing) or self.ended_by != "end"

    @property
    def partial_reason(self) -> str:
        why = []
        if self.missing:
            shown = ", ".join(map(str, self.missing[:10])) + (" …" if len(self.missing) > 10 else "")
            why.append(f"{len(self.missing)} chunks never came (seq {shown}); filled with silence")
        if self.ended_by == "idle":
            why.append("no end frame: the stream went quiet")
        elif self.ended_by == "too_long":
            why.append("cut at the stream length limit")
        return "; ".join(why)


@dataclass
class _Session:
    rate: int
    first_seq: int
    started_at: float
    last_at: float
    chunks: dict[int, bytes] = field(default_factory=dict)
    samples: int = 0
    end_seq: int | None = None
    highest: int = -1
    duplicates: int = 0
    reordered: int = 0


class StreamAssembler:
    def __init__(self, max_s: float = 120.0, idle_s: float = 5.0, max_streams: int = 8) -> None:
        self.max_s, self.idle_s, self.max_streams = max_s, idle_s, max_streams
        self._sessions: dict[tuple[str, int], _Session] = {}

    @property
    def open(self) -> int:
        return len(self._sessions)

    def feed(self, source: str, frame: Frame, now: float) -> Finished | None:
        """Add a frame; the finished utterance when this frame completes its session."""
        key = (source, frame.session)
        s = self._sessions.get(key)
        if s is None:
            if len(self._sessions) >= self.max_streams:
                raise StreamError(f"{len(self._sessions)} streams already open (limit {self.max_streams})")
            # A session whose first frames were lost starts where it starts; the utterance
            # says which numbers are missing.
            s = self._sessions[key] = _Session(frame.rate, frame.seq if frame.start else 0, now, now)
        if frame.rate != s.rate:
            del self._sessions[key]
            raise StreamError(f"session {frame.session}: sample rate changed from {s.rate} to {frame.rate} Hz "
                              "mid-stream; the session is dropped")
        s.last_at = now
        if frame.seq in s.chunks:
            s.duplicates += 1
        else:
            if frame.seq < s.highest:
                s.reordered += 1
            s.highest = max(s.highest, frame.seq)
            s.chunks[frame.seq] = frame.pcm
            s.samples += len(frame.pcm) // 2
        if frame.end:
            s.end_seq = frame.seq
        if s.samples / s.rate > self.max_s:
            return self._finish(key, "too_long")
        if s.end_seq is not None and all(q in s.chunks for q in range(s.first_seq, s.end_seq + 1)):
            return self._finish(key, "end")
        return None

    def expire(self, now: float) -> list[Finished]:
        """Sessions quiet for ``idle_s``: an end frame that never came, or chunks still missing
        after it did."""
        stale = [k for k, s in self._sessions.items() if now - s.last_at >= self.idle_s]
        return [self._finish(k, "end" if self._sessions[k].end_seq is not None else "idle") for k in stale]

    def _finish(self, key: tuple[str, int], ended_by: str) -> Finished:
        s = self._sessions.pop(key)
        last = s.end_seq if s.end_seq is not None else s.highest
        sizes = [len(c) for c in s.chunks.values()]
        usual = int(statistics.median(sizes)) if sizes else 0
        missing = tuple(q for q in range(s.first_seq, last + 1) if q not in s.chunks)
        pcm = b"".join(s.chunks.get(q, b"\0" * usual) for q in range(s.first_seq, last + 1))
        limit = int(self.max_s * s.rate) * 2
        return Finished(key[0], key[1], pcm[:limit], s.rate, ended_by, missing, s.duplicates, s.reordered)
