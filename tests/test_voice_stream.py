"""Live dictation frames (plugins/voice/stream.py): parsing, order, gaps, limits. Pure: time is
passed in, so nothing here waits."""

from __future__ import annotations

import pytest

from plugins.voice.stream import (HEADER, MAX_CHUNK_BYTES, StreamAssembler, StreamError, encode_frame,
                                  parse_frame)


def chunk(value: int, samples: int = 160) -> bytes:
    return value.to_bytes(2, "little", signed=True) * samples


def frames(n: int, session: int = 7) -> list[bytes]:
    return [encode_frame(session, i, chunk(i + 1), start=i == 0, end=i == n - 1) for i in range(n)]


def feed_all(asm: StreamAssembler, payloads: list[bytes], source: str = "device:phone", now: float = 0.0):
    done = None
    for p in payloads:
        done = asm.feed(source, parse_frame(p), now) or done
    return done


def test_in_order_stream_is_whole() -> None:
    asm = StreamAssembler()
    done = feed_all(asm, frames(5))
    assert done is not None and not done.partial and done.ended_by == "end"
    assert done.pcm == b"".join(chunk(i + 1) for i in range(5))
    assert done.audio_s == pytest.approx(5 * 160 / 16000)
    assert asm.open == 0


def test_out_of_order_and_duplicates_are_put_back() -> None:
    asm = StreamAssembler()
    f = frames(4)
    done = feed_all(asm, [f[0], f[2], f[1], f[1], f[3]])
    assert done is not None and not done.partial
    assert done.pcm == b"".join(chunk(i + 1) for i in range(4))
    assert (done.reordered, done.duplicates) == (1, 1)


def test_end_frame_before_a_late_chunk_waits_for_it() -> None:
    asm = StreamAssembler()
    f = frames(3)
    assert feed_all(asm, [f[0], f[2]]) is None  # seq 1 still missing
    done = asm.feed("device:phone", parse_frame(f[1]), 0.1)
    assert done is not None and not done.partial


def test_gap_becomes_silence_and_is_named() -> None:
    asm = StreamAssembler(idle_s=2.0)
    f = frames(5)
    assert feed_all(asm, [f[0], f[1], f[3], f[4]], now=10.0) is None
    assert asm.expire(11.0) == []  # not quiet long enough yet
    (done,) = asm.expire(12.0)
    assert done.partial and done.missing == (2,)
    assert "seq 2" in done.partial_reason and "silence" in done.partial_reason
    assert done.pcm[2 * 320:3 * 320] == b"\0" * 320  # the gap, at the usual chunk length


def test_stream_without_end_frame_ends_when_quiet() -> None:
    asm = StreamAssembler(idle_s=5.0)
    f = frames(3)
    feed_all(asm, f[:2], now=0.0)
    (done,) = asm.expire(5.0)
    assert done.ended_by == "idle" and done.partial and "no end frame" in done.partial_reason


def test_lost_start_is_reported_as_missing() -> None:
    asm = StreamAssembler()
    f = frames(4)
    done = feed_all(asm, f[2:])
    assert done is None  # 0 and 1 may still come
    (done,) = asm.expire(100.0)
    assert done.missing == (0, 1)


def test_too_long_is_cut() -> None:
    asm = StreamAssembler(max_s=0.05)
    payloads = [encode_frame(1, i, chunk(1, 400), start=i == 0) for i in range(3)]
    done = feed_all(asm, payloads)
    assert done is not None and done.ended_by == "too_long" and "limit" in done.partial_reason
    assert done.audio_s == pytest.approx(0.05)


def test_sessions_are_kept_apart_by_source_and_number() -> None:
    asm = StreamAssembler()
    a, b = frames(2, session=1), frames(2, session=2)
    asm.feed("device:a", parse_frame(a[0]), 0)
    asm.feed("device:b", parse_frame(a[0]), 0)
    asm.feed("device:a", parse_frame(b[0]), 0)
    assert asm.open == 3
    done = asm.feed("device:b", parse_frame(a[1]), 0)
    assert done is not None and done.source == "device:b" and done.session == 1


def test_stream_limit_and_rate_change_are_refused() -> None:
    asm = StreamAssembler(max_streams=1)
    asm.feed("device:a", parse_frame(encode_frame(1, 0, chunk(1), start=True)), 0)
    with pytest.raises(StreamError, match="1 streams already open"):
        asm.feed("device:a", parse_frame(encode_frame(2, 0, chunk(1), start=True)), 0)
    with pytest.raises(StreamError, match="sample rate changed from 16000 to 8000"):
        asm.feed("device:a", parse_frame(encode_frame(1, 1, chunk(1), rate=8000)), 0)
    assert asm.open == 0  # that session is dropped


@pytest.mark.parametrize("payload, why", [
    (b"SV\x01", "shorter than the 14-byte header"),
    (b'{"text": "hello there"}', "does not start with 'SV'"),
    (HEADER.pack(b"SV", 2, 0, 1, 0, 16000), "version 2"),
    (HEADER.pack(b"SV", 1, 8, 1, 0, 16000), "unknown flags 0x08"),
    (HEADER.pack(b"SV", 1, 0, 1, 0, 4000), "sample rate 4000 Hz"),
    (HEADER.pack(b"SV", 1, 0, 1, 0, 16000) + b"\0" * (MAX_CHUNK_BYTES + 2), "exceeds 32000"),
    (HEADER.pack(b"SV", 1, 0, 1, 0, 16000) + b"\0" * 3, "not whole 16-bit samples"),
])
def test_bad_frames_say_why(payload: bytes, why: str) -> None:
    with pytest.raises(StreamError, match=why):
        parse_frame(payload)
