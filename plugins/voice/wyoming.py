"""A Wyoming server, so that Home Assistant's Assist can use the fleet: ``asr``, ``wake`` and ``handle``.

One TCP port serves all three, as Wyoming's own servers do, told apart by the events a client
sends (https://github.com/OHF-Voice/wyoming has the protocol):

- ``describe`` → ``info``: an ``asr`` program whose model is the fleet (the hub's router picks the
  device and the Whisper model for each request), the configured wake word, and intent handling.
  Home Assistant waits one second for it, so it is built without asking anyone.
- asr: ``transcribe`` (optional), ``audio-start``, ``audio-chunk``…, ``audio-stop`` → ``transcript``.
  The audio may be any rate (8–48 kHz) and 1–8 channels of 16-bit samples; it is checked and
  converted by :func:`hub.voice.audio.decode_audio` and transcribed by the routed ``transcribe``
  task only: no intents (Home Assistant runs its own, or asks ``handle``). At most
  :data:`MAX_AUDIO_S` seconds are buffered.
- wake: ``detect`` then a continuous stream of ``audio-chunk`` → ``detection`` (name, timestamp)
  every time the wake word is heard, and ``not-detected`` at ``audio-stop`` when it never was.
- handle: ``transcript`` → the voice pipeline (hassil, the classifier, a language model) →
  ``handled`` with what to say when an action was published (or is held for confirmation),
  else ``not-handled`` saying why.

Wyoming has no authentication: on loopback (the default) anyone on the machine may use it; bound
anywhere else the server refuses to start unless ``plugins.voice.wyoming_allowed_peers`` lists
who may connect, and then every other peer is disconnected at once, counted and logged. A bad
event gets an ``error`` event (``text``, ``code``); an event that breaks the framing (not JSON,
absurd lengths) or a client that goes away mid-event ends that connection only.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import json
import logging
import struct
import warnings
from typing import Any

import numpy as np

with warnings.catch_warnings():
    # wyoming.audio imports the standard library's audioop (deprecated in 3.11, gone in 3.13,
    # where wyoming uses its own copy); the resampler of a wake stream is its ratecv.
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    from wyoming.asr import Transcript
    from wyoming.audio import AudioChunk, AudioChunkConverter
    from wyoming.error import Error
    from wyoming.event import Event, async_write_event
    from wyoming.handle import Handled, NotHandled
    from wyoming.info import (AsrModel, AsrProgram, Attribution, HandleModel, HandleProgram, Info, WakeModel,
                              WakeProgram)
    from wyoming.wake import Detection, NotDetected

from hub import __version__
from hub.plugin_api import SAMPLE_RATE, AudioError, WakeWordDetector, WakeWordModelError, decode_audio

from .pipeline import VoicePipeline

log = logging.getLogger(__name__)

#: The longest utterance buffered for ``asr``: a voice command, not a dictation.
MAX_AUDIO_S = 60.0
#: Framing limits: an event's JSON line, its extra data, and one chunk's payload (1 s of 48 kHz
#: 8-channel 16-bit audio is 768 KB; Home Assistant sends about 1 KB at a time).
MAX_HEADER_BYTES = 64 * 1024
MAX_DATA_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_TEXT_CHARS = 4096
MIN_RATE, MAX_RATE, MAX_CHANNELS = 8000, 48000, 8
#: Events the handler understands; anything else gets an ``error`` and the connection goes on.
_KNOWN = ("describe", "transcribe", "audio-start", "audio-chunk", "audio-stop", "detect", "transcript")

_WHISPER = Attribution(name="OpenAI Whisper, run by faster-whisper (SYSTRAN); the hub's router picks the device",
                       url="https://github.com/SYSTRAN/faster-whisper")
_MICRO = Attribution(name="microWakeWord (kahrendt), run in the hub", url="https://github.com/kahrendt/microWakeWord")
_INTENTS = Attribution(name="Home Assistant's sentences (hassil), the hub's intent classifier, then a language model",
                       url="https://github.com/home-assistant/intents")


class _Framing(Exception):
    """The stream cannot be read as events any more: the connection ends (after an error event)."""


class _Refused(Exception):
    """A request refused: an ``error`` event with this text and code."""

    def __init__(self, code: str, text: str, fatal: bool = False) -> None:
        super().__init__(text)
        self.code, self.text, self.fatal = code, text, fatal


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or "" (every interface): not loopback


def _peer_ip(peername: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not isinstance(peername, tuple) or not peername:
        return None
    try:
        ip = ipaddress.ip_address(str(peername[0]).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def wake_phrase(name: str) -> str:
    """``okay_nabu`` → ``Okay Nabu``, as Wyoming's microWakeWord server names its models."""
    return " ".join(w.capitalize() for w in name.replace("-", "_").split("_") if w)


def wav_header(rate: int, channels: int, n_bytes: int) -> bytes:
    """A 16-bit PCM WAV header for ``n_bytes`` of interleaved samples."""
    block = channels * 2
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + n_bytes, b"WAVE", b"fmt ", 16, 1, channels, rate,
                       rate * block, block, 16, b"data", n_bytes)


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """One event, None at the end of the stream (also a client gone mid-event). Unlike
    :func:`wyoming.event.async_read_event` every length is bounded and every field checked."""
    try:
        line = await reader.readline()
    except ValueError:  # asyncio's line limit: the header never ended
        raise _Framing(f"event header longer than {MAX_HEADER_BYTES} bytes") from None
    if not line or not line.endswith(b"\n"):
        return None
    try:
        header = json.loads(line)
    except ValueError:
        raise _Framing("malformed event: the header line is not JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str) or not header["type"]:
        raise _Framing('malformed event: the header must be a JSON object with a "type"')
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise _Framing('malformed event: "data" must be an object')
    data_length = _length(header, "data_length", MAX_DATA_BYTES)
    payload_length = _length(header, "payload_length", MAX_PAYLOAD_BYTES)
    try:
        if data_length:
            try:
                extra = json.loads(await reader.readexactly(data_length))
            except ValueError:
                raise _Framing("malformed event: its data is not JSON") from None
            if not isinstance(extra, dict):
                raise _Framing("malformed event: its data must be a JSON object")
            data.update(extra)
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError:
        return None
    return Event(type=header["type"], data=data, payload=payload)


def _length(header: dict[str, Any], key: str, limit: int) -> int:
    n = header.get(key)
    if n is None:
        return 0
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= limit:
        raise _Framing(f"malformed event: {key} {n!r} (0 to {limit})")
    return n


def _audio_format(data: dict[str, Any], event: str) -> tuple[int, int, int]:
    values = [data.get(k) for k in ("rate", "width", "channels")]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise _Refused("bad-format", f"{event} needs integer rate, width and channels", fatal=True)
    rate, width, channels = values
    if width != 2:
        raise _Refused("bad-format", f"{event}: sample width {width} bytes: only 16-bit samples (width 2) are "
                                     "accepted", fatal=True)
    if not MIN_RATE <= rate <= MAX_RATE:
        raise _Refused("bad-format", f"{event}: sample rate {rate} Hz outside {MIN_RATE}-{MAX_RATE}", fatal=True)
    if not 1 <= channels <= MAX_CHANNELS:
        raise _Refused("bad-format", f"{event}: {channels} channels: 1 to {MAX_CHANNELS} are mixed to mono", fatal=True)
    return rate, width, channels


def allowed_networks(host: str, peers: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The peers' networks; ValueError naming the setting for a bad entry, or for listening beyond
    loopback with nobody listed (Wyoming has no authentication: the address is the only guard)."""
    allowed = []
    for entry in peers:
        try:
            allowed.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"plugins.voice.wyoming_allowed_peers: {entry!r} is not an IP address or "
                             "network (e.g. 192.168.1.20 or 192.168.1.0/24)") from None
    if not allowed and not _is_loopback_host(host):
        raise ValueError(f"plugins.voice.wyoming_host {host!r} is beyond loopback and Wyoming has no "
                         "authentication: list the addresses that may use it (Home Assistant's) in "
                         "plugins.voice.wyoming_allowed_peers, or keep wyoming_host 127.0.0.1")
    return allowed


class WyomingServer:
    """Serves ``asr``, ``wake`` and ``handle`` for ``pipeline`` on ``host``:``port``."""

    def __init__(self, pipeline: VoicePipeline, host: str, port: int, allowed_peers: list[str] | None = None, *,
                 max_audio_s: float = MAX_AUDIO_S, max_connections: int = 32, idle_timeout_s: float = 300.0) -> None:
        self.pipeline, self.host, self.port = pipeline, host, port
        self.max_audio_s, self.max_connections, self.idle_timeout_s = max_audio_s, max_connections, idle_timeout_s
        self.allowed = allowed_networks(host, allowed_peers or [])
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Connections refused (peer not allowed, too many), by peer address.
        self.refused: collections.Counter[str] = collections.Counter()
        self.served = 0
        self.errors = 0

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the real port when started with 0)."""
        if self._server is not None and self._server.sockets:
            name = self._server.sockets[0].getsockname()
            return str(name[0]), int(name[1])
        return self.host, self.port

    def allows(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        if ip is None:
            return False
        if not self.allowed:
            return ip.is_loopback  # only reachable on loopback then; said again in case of doubt
        return any(ip.version == net.version and ip in net for net in self.allowed)

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accept, self.host, self.port, limit=MAX_HEADER_BYTES)
        log.info("voice: Wyoming server on %s:%d (asr, wake, handle)%s", *self.address,
                 f", peers {', '.join(map(str, self.allowed))}" if self.allowed else "")

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> WyomingServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def info(self) -> Info:
        cfg = self.pipeline.cfg
        languages = [cfg.language]
        return Info(
            asr=[AsrProgram(
                name="sovereign", attribution=_WHISPER, installed=True, version=__version__,
                description="Whisper on the home's devices: each request goes where the energy and the budget say",
                models=[AsrModel(name="fleet", attribution=_WHISPER, installed=True, version=None,
                                 description="the fleet's transcribe models (the router picks one per request)",
                                 languages=languages)])],
            wake=[WakeProgram(
                name="sovereign-wake", attribution=_MICRO, installed=True, version=__version__,
                description="microWakeWord, streaming in the hub",
                models=[WakeModel(name=cfg.wake_word, attribution=_MICRO, installed=True, version=None,
                                  description=wake_phrase(cfg.wake_word), phrase=wake_phrase(cfg.wake_word),
                                  languages=["en"])])],
            handle=[HandleProgram(
                name="sovereign-intents", attribution=_INTENTS, installed=True, version=__version__,
                description="the hub's intents: hassil sentences first, then the classifier, then a language model",
                supports_home_control=True,
                models=[HandleModel(name="sovereign-intents", attribution=_INTENTS, installed=True, version=None,
                                    description="the home's own entities and areas", languages=languages)])])

    # -- connections -----------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ip = _peer_ip(writer.get_extra_info("peername"))
        why = None
        if not self.allows(ip):
            why = "not in plugins.voice.wyoming_allowed_peers" if self.allowed else "not a loopback address"
        elif len(self._tasks) >= self.max_connections:
            why = f"{self.max_connections} connections already open"
        if why is not None:
            n = self.refused[str(ip)] = self.refused[str(ip)] + 1
            if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th…: a peer retrying in a loop cannot flood the log
                log.warning("voice: Wyoming connection from %s refused: %s (%d refused from it so far)", ip, why, n)
            writer.close()
            return
        self.served += 1
        # Its own task, which stop() cancels: asyncio's server callback on 3.11 logs a cancelled
        # callback task as an error.
        task = asyncio.create_task(_Connection(self, reader, writer, f"wyoming:{ip}").run(),
                                   name=f"wyoming {ip}")
        self._tasks.add(task)
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            self._tasks.discard(task)


class _Connection:
    def __init__(self, server: WyomingServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 source: str) -> None:
        self.server, self.reader, self.writer, self.source = server, reader, writer, source
        self.pipeline = server.pipeline
        self.mode = "asr"  # asr | wake
        self.discard = False  # a refused stream: its audio is dropped until audio-stop, then the connection ends
        self.fmt: tuple[int, int, int] | None = None
        self.pcm = bytearray()
        self.detector: Any = None
        self.converter: AudioChunkConverter | None = None
        self.detected = 0
        #: Where the stream's clock starts (ms), for detection timestamps: the client's own
        #: timestamps when it sends them (audio-start's, else the first chunk's), else 0.
        self.stream_ms: int | None = None

    async def run(self) -> None:
        try:
            while True:
                try:
                    async with asyncio.timeout(self.server.idle_timeout_s):
                        event = await read_event(self.reader)
                except TimeoutError:
                    log.info("voice: Wyoming client %s idle for %g s: closed", self.source, self.server.idle_timeout_s)
                    return
                except _Framing as exc:
                    await self._error("bad-event", str(exc))
                    return
                if event is None:
                    return
                try:
                    done = await self._dispatch(event)
                except _Refused as exc:
                    await self._error(exc.code, exc.text)
                    if exc.fatal:
                        self._drop_stream()
                    continue
                if done:
                    return
        except (ConnectionError, OSError) as exc:  # the client went away while we wrote
            log.debug("voice: Wyoming client %s gone: %r", self.source, exc)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not take the server down
            log.exception("voice: Wyoming connection %s failed", self.source)
        finally:
            if self.detector is not None:
                self.detector.close()
            self.writer.close()

    async def _write(self, event: Event) -> None:
        await async_write_event(event, self.writer)

    async def _error(self, code: str, text: str) -> None:
        self.server.errors += 1
        log.info("voice: Wyoming %s: %s", self.source, text)
        try:
            await self._write(Error(text=text, code=code).event())
        except (ConnectionError, OSError):
            pass

    def _drop_stream(self) -> None:
        self.discard = True
        self.pcm = bytearray()
        self.fmt = None

    async def _dispatch(self, event: Event) -> bool:
        """Handle one event; True when the connection should end."""
        kind, data = event.type, event.data
        if kind == "describe":
            await self._write(self.server.info().event())
        elif kind == "transcribe":
            self._check_language(data.get("language"), "transcribes")
            self._reset("asr")
        elif kind == "detect":
            await self._detect(data.get("names"))
        elif kind == "audio-start":
            if self.discard:
                return False
            self.fmt = _audio_format(data, "audio-start")
            self.pcm = bytearray()
            self._start_clock(data.get("timestamp"))
        elif kind == "audio-chunk":
            if not self.discard:
                await self._chunk(data, event.payload or b"")
        elif kind == "audio-stop":
            return await self._stop()
        elif kind == "transcript":
            await self._handle(data)
        else:
            raise _Refused("unknown-event", f"unknown event type {kind!r}: this server answers "
                                            f"{', '.join(_KNOWN)}")
        return False

    def _check_language(self, language: Any, does: str) -> None:
        """None, or the configured language, also as a regional tag (``en-US`` for ``en``)."""
        mine = self.pipeline.cfg.language
        if language is None or (isinstance(language, str) and language.replace("_", "-").split("-")[0].lower() == mine):
            return
        raise _Refused("bad-language", f"language {language!r}: this server {does} {mine!r}")

    def _reset(self, mode: str) -> None:
        self.mode, self.discard, self.fmt, self.pcm = mode, False, None, bytearray()
        self.detected, self.stream_ms, self.converter = 0, None, None

    def _start_clock(self, timestamp: Any) -> None:
        self.stream_ms = timestamp if isinstance(timestamp, int) and not isinstance(timestamp, bool) else None
        if self.detector is not None:
            self.detector.reset()
        self.converter = None

    async def _chunk(self, data: dict[str, Any], payload: bytes) -> None:
        fmt = _audio_format(data, "audio-chunk")
        if self.fmt is None:  # no audio-start: the first chunk says the format
            self.fmt = fmt
            self._start_clock(data.get("timestamp"))
        if self.stream_ms is None:
            ts = data.get("timestamp")
            self.stream_ms = ts if isinstance(ts, int) and not isinstance(ts, bool) else 0
        if fmt != self.fmt:
            raise _Refused("bad-format", f"audio-chunk of {fmt[0]} Hz, {fmt[2]} channel(s) in a stream that started "
                                         f"as {self.fmt[0]} Hz, {self.fmt[2]} channel(s)", fatal=True)
        rate, width, channels = fmt
        if len(payload) % (width * channels):
            raise _Refused("bad-audio", f"audio-chunk of {len(payload)} bytes is not whole frames of {channels} "
                                        f"channel(s) of 16-bit samples", fatal=True)
        if self.mode == "wake":
            await self._listen(payload, rate, channels)
            return
        if len(self.pcm) + len(payload) > self.server.max_audio_s * rate * width * channels:
            raise _Refused("too-long", f"audio longer than {self.server.max_audio_s:g} s: a voice command is "
                                       "shorter; the stream is dropped", fatal=True)
        self.pcm += payload

    async def _stop(self) -> bool:
        if self.discard:  # its error was said when it was refused
            return True
        if self.mode == "wake":
            if not self.detected:
                await self._write(NotDetected().event())
            self._reset("asr")
            return False
        fmt, pcm = self.fmt, bytes(self.pcm)
        self._reset("asr")
        if fmt is None or not pcm:
            raise _Refused("bad-audio", "audio-stop without audio: nothing to transcribe")
        rate, _width, channels = fmt
        try:
            audio = await asyncio.to_thread(decode_audio, wav_header(rate, channels, len(pcm)) + pcm,
                                            where="wyoming audio", max_s=self.server.max_audio_s)
        except AudioError as exc:
            await self._error(exc.code.replace("_", "-"), exc.message)
            return True
        text, outcome = await self.pipeline.transcribe_only(audio, self.source)
        if not outcome.get("ok"):
            err = outcome.get("error") or {}
            await self._error(str(err.get("code") or "failed").replace("_", "-"),
                              f"transcription failed: {err.get('message') or 'no device could transcribe it'}")
            return True  # Home Assistant waits for a transcript or the end of the connection
        await self._write(Transcript(text=text, language=self.pipeline.cfg.language).event())
        return False

    # -- wake ------------------------------------------------------------------------------------

    async def _detect(self, names: Any) -> None:
        wake_word = self.pipeline.cfg.wake_word
        self._reset("wake")
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            self.discard = True
            raise _Refused("bad-event", "detect: names must be a list of wake word names")
        if names and wake_word not in names:
            self.discard = True
            raise _Refused("unknown-wake-word", f"detect: no wake word {', '.join(map(repr, names))} here: this "
                                                f"server listens for {wake_word!r}")
        if self.detector is None:
            # The detector runs here, in the hub, not as a routed task: wake word spotting is a
            # continuous stream (a request per 10 ms chunk would cost more than the model) and
            # the model is about 50 KB, a millisecond to create.
            try:
                self.detector = await asyncio.to_thread(WakeWordDetector, wake_word)
            except (WakeWordModelError, ImportError) as exc:
                self.discard = True
                raise _Refused("wake-unavailable", f"wake word {wake_word!r} cannot run: "
                                                   f"{getattr(exc, 'message', exc)}") from None
        else:
            self.detector.reset()

    async def _listen(self, payload: bytes, rate: int, channels: int) -> None:
        samples = np.frombuffer(payload, dtype="<i2")
        if channels > 1:
            samples = samples.reshape(-1, channels).mean(axis=1).round().astype("<i2")
        if rate != SAMPLE_RATE:
            if self.converter is None:
                self.converter = AudioChunkConverter(rate=SAMPLE_RATE, width=2, channels=1)
            converted = self.converter.convert(AudioChunk(rate, 2, 1, samples.tobytes()))
            samples = np.frombuffer(converted.audio, dtype="<i2")
        detector = self.detector
        before = len(detector.detections)
        await asyncio.to_thread(detector.process, samples.astype(np.int16, copy=False))
        for at_s in detector.detections[before:]:
            self.detected += 1
            await self._write(Detection(name=self.pipeline.cfg.wake_word,
                                        timestamp=(self.stream_ms or 0) + round(at_s * 1000)).event())

    # -- handle ----------------------------------------------------------------------------------

    async def _handle(self, data: dict[str, Any]) -> None:
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _Refused("bad-event", "transcript needs a non-empty text")
        if len(text) > MAX_TEXT_CHARS:
            raise _Refused("bad-event", f"transcript of {len(text)} characters exceeds {MAX_TEXT_CHARS}")
        self._check_language(data.get("language"), "understands")
        context = data.get("context") if isinstance(data.get("context"), dict) else None
        u = await self.pipeline.handle_text(text, source=self.source)
        if u.status in ("published", "awaiting_confirmation", "cancelled"):
            await self._write(Handled(text=u.speech, context=context).event())
        else:
            await self._write(NotHandled(text=u.speech, context=context).event())
