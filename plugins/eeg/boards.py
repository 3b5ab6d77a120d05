"""Naming BrainFlow boards and preparing their sessions.

Boards are given by a short name (``synthetic``, ``playback``, ``cyton``, ``ganglion``,
``muse-s``, ``muse-2``), by any ``BoardIds`` member name (``CYTON_DAISY_BOARD``), or by number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brainflow.board_shim import BoardIds, BoardShim, BrainFlowError, BrainFlowInputParams

ALIASES = {"synthetic": BoardIds.SYNTHETIC_BOARD, "playback": BoardIds.PLAYBACK_FILE_BOARD,
           "cyton": BoardIds.CYTON_BOARD, "cyton-daisy": BoardIds.CYTON_DAISY_BOARD,
           "ganglion": BoardIds.GANGLION_BOARD, "muse-s": BoardIds.MUSE_S_BOARD, "muse-2": BoardIds.MUSE_2_BOARD}
#: Boards that read a serial port: the port must exist before BrainFlow is asked.
SERIAL_BOARDS = {BoardIds.CYTON_BOARD, BoardIds.CYTON_DAISY_BOARD, BoardIds.GANGLION_BOARD}


class BoardError(ValueError):
    """A board that cannot be used, with the reason in words."""


def board_id(name: str | int) -> int:
    if isinstance(name, int) or (isinstance(name, str) and name.lstrip("-").isdigit()):
        value = int(name)
        if value not in {b.value for b in BoardIds}:
            raise BoardError(f"unknown board id {value}")
        return value
    key = name.strip().lower()
    if key in ALIASES:
        return ALIASES[key].value
    try:
        return BoardIds[name.strip().upper()].value
    except KeyError:
        raise BoardError(f"unknown board {name!r} (use {', '.join(ALIASES)}, a BoardIds name or a number)") from None


@dataclass(frozen=True)
class BoardSpec:
    board: str = "synthetic"
    serial_port: str | None = None
    file: str | None = None  # playback: a file in BrainFlow's format
    master_board: str = "synthetic"  # playback: the board that recorded the file
    mac_address: str | None = None
    other_info: str | None = None

    @property
    def id(self) -> int:
        return board_id(self.board)

    @property
    def data_board(self) -> int:
        """The board whose channel layout and rate the data have (the master for playback)."""
        return board_id(self.master_board) if self.id == BoardIds.PLAYBACK_FILE_BOARD.value else self.id

    @property
    def key(self) -> str:
        """What makes two sessions compete for the same device."""
        return f"{self.id}:{self.serial_port or self.file or self.mac_address or ''}"

    def check(self) -> None:
        bid = self.id
        if bid == BoardIds.PLAYBACK_FILE_BOARD.value:
            if not self.file:
                raise BoardError("the playback board needs a file")
            if not Path(self.file).is_file():
                raise BoardError(f"playback file not found: {self.file}")
            check_recording(Path(self.file), board_id(self.master_board))
        if bid in {b.value for b in SERIAL_BOARDS}:
            if not self.serial_port:
                raise BoardError(f"board {self.board} needs serial_port")
            if not Path(self.serial_port).exists():
                raise BoardError(f"serial port {self.serial_port} does not exist")

    def params(self) -> BrainFlowInputParams:
        p = BrainFlowInputParams()
        if self.serial_port:
            p.serial_port = self.serial_port
        if self.file:
            p.file = self.file
            p.master_board = board_id(self.master_board)
        if self.mac_address:
            p.mac_address = self.mac_address
        if self.other_info:
            p.other_info = self.other_info
        return p

    def describe(self) -> dict[str, Any]:
        d = BoardShim.get_board_descr(self.data_board)
        return {"sampling_rate": d["sampling_rate"], "eeg_channels": d.get("eeg_channels", []),
                "timestamp_channel": d["timestamp_channel"], "eeg_names": d.get("eeg_names", "")}


def check_recording(path: Path, master: int, rows: int = 3) -> None:
    """The first ``rows`` lines must be samples as BrainFlow writes them: tab-separated numbers,
    one per row of the ``master`` board. BrainFlow's playback board itself accepts anything and
    then streams nothing, so a wrong file would run as a session with 0 samples."""
    want = BoardShim.get_num_rows(master)
    name = BoardIds(master).name
    try:
        with path.open("rb") as f:
            lines = [f.readline(64 * 1024) for _ in range(rows)]
    except OSError as exc:
        raise BoardError(f"playback file {path}: cannot read it: {exc.strerror}") from None
    if not any(ln.strip() for ln in lines):
        raise BoardError(f"playback file {path} is not a BrainFlow recording: it is empty")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            fields = line.decode("ascii").strip().split("\t")
            [float(x) for x in fields]
        except (UnicodeDecodeError, ValueError):
            raise BoardError(f"playback file {path} is not a BrainFlow recording: line {n} is not "
                             "tab-separated numbers") from None
        if len(fields) != want:
            raise BoardError(f"playback file {path} does not fit master_board {name}: line {n} has "
                             f"{len(fields)} columns, the board has {want}")


def open_board(spec: BoardSpec, ring_buffer: int = 450_000) -> BoardShim:
    """Prepare and start streaming; BrainFlow's errors come back as BoardError with its reason."""
    spec.check()
    BoardShim.disable_board_logger()
    board = BoardShim(spec.id, spec.params())
    try:
        board.prepare_session()
        if spec.id == BoardIds.PLAYBACK_FILE_BOARD.value:
            board.config_board("loopback_true")
        board.start_stream(ring_buffer)
    except BrainFlowError as exc:
        try:
            board.release_session()
        except BrainFlowError:
            pass
        raise BoardError(f"BrainFlow could not start {spec.board}: {exc}") from None
    return board
