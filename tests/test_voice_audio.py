"""hub/voice/audio.py: every WAV layout it reads, every refusal, each message saying where and why.

WAVs are built here byte by byte (struct), so each branch is reached on purpose; real speech from
espeak-ng (22050 Hz) and flite (16 and 8 kHz) checks the files that tools actually write.
"""

from __future__ import annotations

import io
import math
import struct
import tracemalloc
import wave
from pathlib import Path

import numpy as np
import pytest

from hub.voice.audio import MAX_AUDIO_S, SAMPLE_RATE, Audio, AudioError, decode_audio, wav_duration_s
from tests.voice_fixtures import speak

PCM, FLOAT, EXTENSIBLE = 1, 3, 0xFFFE
GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


def chunk(cid: bytes, body: bytes, size: int | None = None) -> bytes:
    """A RIFF chunk, padded to an even length as the format wants."""
    return struct.pack("<4sI", cid, len(body) if size is None else size) + body + (b"\x00" if len(body) % 2 else b"")


def fmt(tag: int = PCM, channels: int = 1, rate: int = SAMPLE_RATE, bits: int = 16, *, extensible: bool = False,
        block_align: int | None = None) -> bytes:
    align = channels * bits // 8 if block_align is None else block_align
    head = struct.pack("<HHIIHH", EXTENSIBLE if extensible else tag, channels, rate, rate * align, align, bits)
    if extensible:
        head += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", tag) + GUID_TAIL
    return chunk(b"fmt ", head)


def riff(*chunks: bytes) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def sine(seconds: float, rate: int = SAMPLE_RATE, hz: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def pcm16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")


def wav16(x: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    return riff(fmt(rate=rate), chunk(b"data", pcm16(x).tobytes()))


def refused(data: bytes, code: str, *words: str, **kw: object) -> AudioError:
    with pytest.raises(AudioError) as info:
        decode_audio(data, **kw)  # type: ignore[arg-type]
    err = info.value
    assert err.code == code, err.message
    assert err.message == str(err)
    for w in (kw.get("where", "data") + ":", *words):  # type: ignore[operator]
        assert w in err.message, f"{w!r} not in {err.message!r}"
    return err


def peak_hz(a: Audio) -> float:
    spectrum = np.abs(np.fft.rfft(a.float32()))
    return float(np.fft.rfftfreq(len(a.samples), 1 / SAMPLE_RATE)[int(np.argmax(spectrum))])


# -- what it reads ---------------------------------------------------------------------------------


def test_16_bit_mono_at_16_khz_is_taken_as_it_is() -> None:
    x = pcm16(sine(0.5))
    a = decode_audio(riff(fmt(), chunk(b"data", x.tobytes())))
    assert a.samples.dtype == np.int16 and np.array_equal(a.samples, x)
    assert (a.source_rate, a.source_channels, a.duration_s) == (16000, 1, 0.5)


def test_8_bit_unsigned() -> None:
    raw = np.array([0, 64, 128, 192, 255], dtype=np.uint8)
    a = decode_audio(riff(fmt(bits=8), chunk(b"data", raw.tobytes())))
    assert a.samples.tolist() == [-32768, -16384, 0, 16384, 32512]


def test_32_bit_integer() -> None:
    x = pcm16(sine(0.1))
    a = decode_audio(riff(fmt(bits=32), chunk(b"data", (x.astype("<i4") << 16).tobytes())))
    assert np.array_equal(a.samples, x)


def test_32_bit_float() -> None:
    x = pcm16(sine(0.1))
    a = decode_audio(riff(fmt(FLOAT, bits=32), chunk(b"data", (x.astype("<f4") / 32768).tobytes())))
    assert np.array_equal(a.samples, x)


def test_float_beyond_full_scale_is_clipped() -> None:
    a = decode_audio(riff(fmt(FLOAT, bits=32), chunk(b"data", np.array([2.0, -3.0, 0.5], "<f4").tobytes())))
    assert a.samples.tolist() == [32767, -32768, 16384]


@pytest.mark.parametrize(("tag", "bits", "dtype", "scale"), [(PCM, 16, "<i2", 32768), (FLOAT, 32, "<f4", 1.0)])
def test_wave_format_extensible(tag: int, bits: int, dtype: str, scale: float) -> None:
    x = pcm16(sine(0.1))
    body = (x.astype(np.float64) / 32768 * scale).astype(dtype).tobytes()
    a = decode_audio(riff(fmt(tag, channels=2, bits=bits, extensible=True),
                          chunk(b"data", np.repeat(np.frombuffer(body, dtype), 2).astype(dtype).tobytes())))
    assert np.array_equal(a.samples, x) and a.source_channels == 2


def test_stereo_is_mixed_to_mono() -> None:
    left = pcm16(sine(0.2))
    same = np.column_stack([left, left]).ravel()
    assert np.array_equal(decode_audio(riff(fmt(channels=2), chunk(b"data", same.tobytes()))).samples, left)
    opposed = np.column_stack([left, -left]).ravel()
    a = decode_audio(riff(fmt(channels=2), chunk(b"data", opposed.tobytes())))
    assert not a.samples.any() and a.source_channels == 2 and a.duration_s == pytest.approx(0.2)


def test_eight_channels_are_averaged() -> None:
    frames = np.zeros((1600, 8), dtype="<i2")
    frames[:, 3] = 8000  # one loud channel of eight: a mean of 1000
    a = decode_audio(riff(fmt(channels=8), chunk(b"data", frames.tobytes())))
    assert a.source_channels == 8 and set(a.samples.tolist()) == {1000}


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000])
def test_other_rates_are_resampled_to_16_khz(rate: int) -> None:
    data = wav16(sine(1.3, rate), rate)
    a = decode_audio(data)
    assert a.source_rate == rate and len(a.samples) / SAMPLE_RATE == pytest.approx(1.3, abs=0.001)
    assert wav_duration_s(data) == pytest.approx(1.3, abs=0.001)
    assert peak_hz(a) == pytest.approx(440, abs=2), "the tone keeps its pitch: resampled, not relabelled"
    assert a.rms_dbfs() == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.2), "and its level"


def test_chunks_in_any_order_with_odd_sizes_padded() -> None:
    x = np.arange(1, 8, dtype=np.uint8) + 128  # 7 bytes: an odd data chunk, padded
    data = riff(chunk(b"LIST", b"abc"), chunk(b"data", x.tobytes()), chunk(b"junk", b"z"),
                fmt(bits=8), chunk(b"cue ", b"12345"))
    assert len(chunk(b"LIST", b"abc")) == 12
    a = decode_audio(data)
    assert a.samples.tolist() == [256 * i for i in range(1, 8)]
    assert wav_duration_s(data) == pytest.approx(7 / 16000)


def test_a_streamed_header_runs_to_the_end() -> None:
    """espeak-ng --stdout cannot seek back: its data size says 0x7ffff000."""
    x = pcm16(sine(0.25))
    a = decode_audio(riff(fmt(), chunk(b"data", x.tobytes(), size=0x7FFFF000)))
    assert np.array_equal(a.samples, x)


def test_raw_pcm_when_the_rate_is_given() -> None:
    x = pcm16(sine(0.5, 8000))
    a = decode_audio(x.tobytes(), pcm_rate=8000)
    assert a.source_rate == 8000 and a.duration_s == pytest.approx(0.5, abs=0.001)
    assert wav_duration_s(x.tobytes(), pcm_rate=8000) == 0.5
    # A WAV is read as a WAV whatever rate the caller guessed.
    assert decode_audio(wav16(sine(0.5)), pcm_rate=8000).duration_s == 0.5


def test_real_speech_from_espeak_ng_and_flite(tmp_path: Path) -> None:
    for voice, rate in (("espeak-ng:en-us", 22050), ("flite:slt", 16000), ("flite:kal", 8000)):
        path = speak("turn off the kitchen lights", voice, tmp_path / f"{voice.replace(':', '-')}.wav")
        data = path.read_bytes()
        with wave.open(str(path)) as w:
            frames, file_rate = w.getnframes(), w.getframerate()
        a = decode_audio(data)
        assert a.source_rate == file_rate == rate, voice
        assert a.duration_s == pytest.approx(frames / rate, abs=0.001) == wav_duration_s(data)
        assert not a.is_silent() and -30 < a.rms_dbfs() < -5


# -- what an Audio gives ---------------------------------------------------------------------------


def test_audio_conversions() -> None:
    a = decode_audio(wav16(sine(1.0, amplitude=1.0)))
    f = a.float32()
    assert f.dtype == np.float32 and f.min() >= -1.0 and f.max() <= 1.0 and f.max() > 0.99
    assert a.rms_dbfs() == pytest.approx(-3.01, abs=0.05)
    again = decode_audio(a.wav_bytes())
    assert np.array_equal(again.samples, a.samples)
    with wave.open(io.BytesIO(a.wav_bytes())) as w:  # a plain WAV any tool reads
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (16000, 1, 2, 16000)


def test_silence_is_judged_by_its_loudest_tenth_of_a_second() -> None:
    quiet = decode_audio(wav16(np.zeros(SAMPLE_RATE * 2, np.float32)))
    assert quiet.rms_dbfs() == -math.inf and quiet.is_silent()
    hiss = decode_audio(wav16(np.random.default_rng(1).normal(0, 0.001, SAMPLE_RATE).astype(np.float32)))
    assert hiss.is_silent() and not hiss.is_silent(threshold_dbfs=-70)
    # One word in a minute of quiet: the clip's mean is far below -45 dBFS, yet it is not silence.
    x = np.zeros(SAMPLE_RATE * 60, np.float32)
    x[SAMPLE_RATE * 30:SAMPLE_RATE * 30 + SAMPLE_RATE // 5] = sine(0.2, amplitude=0.05)  # -29 dBFS
    word = decode_audio(wav16(x))
    assert word.rms_dbfs() < -45 and not word.is_silent()


# -- what it refuses -------------------------------------------------------------------------------


def test_not_audio() -> None:
    refused(b'{"text": "turn off the lights"}', "bad_audio", "not a WAV file", "no RIFF/WAVE header",
            "first bytes 7b 22 74 65", "pcm_rate")
    err = refused(b"\x00\x01", "bad_audio", "chunk 7:", where="chunk 7")
    assert err.message.startswith("chunk 7: ")
    refused(b"RIFX" + b"\x00" * 40, "bad_audio", "big-endian")
    with pytest.raises(AudioError, match="not a WAV file"):
        wav_duration_s(b"OggS\x00\x02")


def test_empty() -> None:
    refused(b"", "bad_audio", "empty")
    refused(riff(fmt(), chunk(b"data", b"")), "bad_audio", "no samples")
    refused(b"", "bad_audio", "no samples", pcm_rate=16000)


def test_truncated() -> None:
    full = wav16(sine(1.0))
    refused(full[:20000], "bad_audio", "truncated: data chunk says 32000 bytes, 19956 present")
    with pytest.raises(AudioError, match="truncated: data chunk says 32000 bytes"):
        wav_duration_s(full[:20000])
    refused(riff(chunk(b"fmt ", b"\x01\x00", size=16)), "bad_audio", "truncated: fmt chunk says 16 bytes, 2 present")
    refused(riff(chunk(b"LIST", b"ab", size=400)), "bad_audio", "truncated: 'LIST' chunk says 400 bytes")
    refused(riff(fmt()), "bad_audio", "no data chunk")
    refused(riff(chunk(b"data", b"\x00\x00")), "bad_audio", "no fmt chunk")
    refused(b"\x01\x02\x03", "bad_audio", "not whole 16-bit samples", pcm_rate=16000)


def test_too_many_channels() -> None:
    refused(riff(fmt(channels=16), chunk(b"data", b"\x00" * 64)), "bad_audio", "WAV says 16 channels")
    refused(riff(fmt(channels=0, block_align=2), chunk(b"data", b"\x00" * 64)), "bad_audio", "WAV says 0 channels")


@pytest.mark.parametrize(("rate", "words"), [(4000, ("sample rate 4000 Hz", "below 8000 Hz",
                                                       "speech cannot be recovered")),
                                            (96000, ("sample rate 96000 Hz", "above 48000 Hz"))])
def test_rates_out_of_range(rate: int, words: tuple[str, ...]) -> None:
    refused(wav16(sine(0.1, rate), rate), "bad_rate", *words)
    refused(pcm16(sine(0.1, rate)).tobytes(), "bad_rate", *words, pcm_rate=rate)
    with pytest.raises(AudioError, match=f"{rate} Hz"):
        wav_duration_s(wav16(sine(0.1, rate), rate))


def test_sample_formats_it_does_not_take() -> None:
    refused(riff(fmt(bits=24), chunk(b"data", b"\x00" * 30)), "bad_audio",
            "sample format 24-bit PCM not supported: use 16-bit PCM or 32-bit float")
    refused(riff(fmt(FLOAT, bits=64), chunk(b"data", b"\x00" * 32)), "bad_audio", "64-bit float not supported")
    refused(riff(fmt(7, bits=8), chunk(b"data", b"\x00" * 32)), "bad_audio", "0x0007 (mu-law) not supported")
    odd_guid = fmt(PCM, bits=16, extensible=True)[:-14] + b"\x99" * 14
    refused(riff(odd_guid, chunk(b"data", b"\x00" * 32)), "bad_audio", "WAVE_FORMAT_EXTENSIBLE with an unknown "
                                                                      "subformat")
    refused(riff(fmt(block_align=3), chunk(b"data", b"\x00" * 30)), "bad_audio", "block align 3",
            "1 channels of 16 bits make 2")
    refused(riff(chunk(b"fmt ", b"\x01\x00\x01\x00"), chunk(b"data", b"\x00\x00")), "bad_audio",
            "fmt chunk is 4 bytes")
    nan = np.array([0.1, np.nan], "<f4").tobytes()
    refused(riff(fmt(FLOAT, bits=32), chunk(b"data", nan)), "bad_audio", "NaN or infinity")


def test_too_long_is_seen_in_the_header_without_decoding() -> None:
    """A header claiming a gigabyte of samples, with a few bytes of them: refused from the header
    alone, before anything the size of the claim is allocated."""
    claim = riff(fmt(), chunk(b"data", b"\x00" * 100, size=0x4000_0000))
    tracemalloc.start()
    try:
        err = refused(claim, "too_long", "33554.4 s long (from the header)", f"the limit is {MAX_AUDIO_S:g} s")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"{peak} bytes allocated to refuse it"
    assert "split" in err.message
    refused(wav16(sine(3.0)), "too_long", "3.0 s long", "the limit is 2 s", max_s=2.0)


def test_duration_reads_the_header_only() -> None:
    ten_minutes = riff(fmt(), chunk(b"data", bytes(SAMPLE_RATE * 2 * 600)))
    tracemalloc.start()
    try:
        assert wav_duration_s(ten_minutes) == 600.0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000
