"""SunSpec register layouts and decoding, without any I/O.

Layouts are those of the SunSpec Information Model definitions (github.com/sunspec/models,
``json/model_1.json``, ``model_101..103.json``, ``model_111..113.json``, ``model_160.json``).
Offsets below count from the first register *after* a model's ID and L registers.

A device's register map starts with the marker ``SunS`` (0x5375 0x6E53) at the base address
(usually 40000, sometimes 0 or 50000), followed by a chain of models, each ``ID, L, L registers``,
ending with ID 0xFFFF. Points a device does not implement hold a type-specific sentinel
(int16 and sunssf 0x8000, uint16 0xFFFF, acc32 0, float32 NaN, strings all NUL).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

from hub.plugin_api import SourceError

SUNS_MARKER = (0x5375, 0x6E53)  # "SunS"
END_MODEL_ID = 0xFFFF
BASE_ADDRESSES = (40000, 0, 50000)
MAX_READ = 125  # registers per Modbus read (function 0x03)

COMMON = 1
INVERTER_INT = (101, 102, 103)  # single, split, three phase; integer + scale factor
INVERTER_FLOAT = (111, 112, 113)  # the same points as float32
MPPT = 160

NOT_IMPL_INT16 = 0x8000
NOT_IMPL_UINT16 = 0xFFFF
NOT_IMPL_SUNSSF = 0x8000
#: The SunSpec definitions do not bound scale factors; real devices use -6..+6. Anything outside
#: ±10 is a misread (wrong base address, wrong model) rather than a 10^11 W inverter.
MAX_ABS_SF = 10

# Model 1 (common), length 66.
COMMON_LEN = 66
COMMON_POINTS = {"Mn": (0, 16), "Md": (16, 16), "Opt": (32, 8), "Vr": (40, 8), "SN": (48, 16)}

# Models 101/102/103, length 50: A 0, AphA 1, AphB 2, AphC 3, A_SF 4, PPVphAB 5, PPVphBC 6,
# PPVphCA 7, PhVphA 8, PhVphB 9, PhVphC 10, V_SF 11, W 12, W_SF 13, Hz 14, Hz_SF 15, VA 16,
# VA_SF 17, VAr 18, VAr_SF 19, PF 20, PF_SF 21, WH 22-23, WH_SF 24, DCA 25, DCA_SF 26, DCV 27,
# DCV_SF 28, DCW 29, DCW_SF 30, TmpCab 31, TmpSnk 32, TmpTrns 33, TmpOt 34, Tmp_SF 35, St 36,
# StVnd 37, Evt1 38-39, Evt2 40-41, EvtVnd1..4 42-49.
INV_LEN = 50
INV_W, INV_W_SF = 12, 13
INV_DCW, INV_DCW_SF = 29, 30
INV_ST = 36

# Models 111/112/113, length 60: A 0-1, AphA 2-3, AphB 4-5, AphC 6-7, PPVphAB 8-9, PPVphBC 10-11,
# PPVphCA 12-13, PhVphA 14-15, PhVphB 16-17, PhVphC 18-19, W 20-21, Hz 22-23, ... St 48.
INV_FLOAT_LEN = 60
INV_FLOAT_W = 20

# Model 160: fixed block DCA_SF 0, DCV_SF 1, DCW_SF 2, DCWH_SF 3, Evt 4-5, N 6, TmsPer 7, then N
# repeating blocks of 20: ID 0, IDStr 1-8, DCA 9, DCV 10, DCW 11, DCWH 12-13, Tms 14-15, Tmp 16,
# DCSt 17, DCEvt 18-19.
MPPT_FIXED_LEN = 8
MPPT_DCW_SF = 2
MPPT_N = 6
MPPT_MODULE_LEN = 20
MPPT_MODULE_DCW = 11

ST_NAMES = {1: "OFF", 2: "SLEEPING", 3: "STARTING", 4: "MPPT", 5: "THROTTLED", 6: "SHUTTING_DOWN", 7: "FAULT",
            8: "STANDBY"}


def int16(raw: int) -> int:
    return raw - 0x10000 if raw & 0x8000 else raw


def scale_factor(raw: int, name: str) -> int:
    if raw == NOT_IMPL_SUNSSF:
        raise SourceError(f"scale factor {name} is not implemented (0x8000)")
    sf = int16(raw)
    if abs(sf) > MAX_ABS_SF:
        raise SourceError(f"scale factor {name} = {sf} is absurd (|SF| > {MAX_ABS_SF}); wrong register map?")
    return sf


def scaled(value: int, sf: int) -> float:
    # 10 ** -1 is 0.1 (inexact); dividing keeps 42350 × 10^-1 at exactly 4235.0.
    return float(value * 10**sf) if sf >= 0 else value / 10**-sf


def string(regs: list[int]) -> str:
    """A SunSpec string: two ASCII/UTF-8 bytes per register, NUL-padded."""
    raw = b"".join(struct.pack(">H", r) for r in regs)
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()


def float32(hi: int, lo: int) -> float:
    return struct.unpack(">f", struct.pack(">HH", hi, lo))[0]


@dataclass(frozen=True)
class ModelRef:
    id: int
    address: int  # of the first register after ID and L
    length: int


@dataclass
class Layout:
    """What discovery found: where the chain is and which models it holds."""

    base: int
    models: list[ModelRef] = field(default_factory=list)

    def first(self, ids: tuple[int, ...] | int) -> ModelRef | None:
        ids = (ids,) if isinstance(ids, int) else ids
        return next((m for m in self.models if m.id in ids), None)

    @property
    def inverter(self) -> ModelRef | None:
        return self.first(INVERTER_INT + INVERTER_FLOAT)


def parse_common(body: list[int]) -> dict[str, str]:
    return {name: string(body[off:off + n]) for name, (off, n) in COMMON_POINTS.items() if off + n <= len(body)}


def check_length(model: ModelRef) -> None:
    need = {**dict.fromkeys(INVERTER_INT, INV_LEN), **dict.fromkeys(INVERTER_FLOAT, INV_FLOAT_LEN)}.get(model.id)
    if need is not None and model.length < need:
        raise SourceError(f"model {model.id} at {model.address - 2} has length {model.length}, "
                          f"the SunSpec definition needs {need}")


def inverter_ac_w(model_id: int, body: list[int]) -> float:
    """AC power (W) of an inverter model body (101-103 or 111-113)."""
    if model_id in INVERTER_FLOAT:
        w = float32(body[INV_FLOAT_W], body[INV_FLOAT_W + 1])
        if not math.isfinite(w):
            raise SourceError(f"AC power W of model {model_id} is not implemented (NaN)")
        return w
    raw = body[INV_W]
    if raw == NOT_IMPL_INT16:
        raise SourceError(f"AC power W of model {model_id} is not implemented (0x8000)")
    return scaled(int16(raw), scale_factor(body[INV_W_SF], "W_SF"))


def inverter_state(model_id: int, body: list[int]) -> str | None:
    idx = INV_ST if model_id in INVERTER_INT else 48
    raw = body[idx] if idx < len(body) else NOT_IMPL_UINT16
    return None if raw == NOT_IMPL_UINT16 else ST_NAMES.get(raw, str(raw))


def mppt_modules(body: list[int]) -> int:
    n = body[MPPT_N] if len(body) > MPPT_N else 0
    return 0 if n == NOT_IMPL_UINT16 else n


def mppt_dc_w(body: list[int]) -> tuple[float, list[float]]:
    """Total and per-module DC power (W) from a model 160 body."""
    n = mppt_modules(body)
    if len(body) < MPPT_FIXED_LEN + n * MPPT_MODULE_LEN:
        raise SourceError(f"model 160 announces {n} modules but is only {len(body)} registers long")
    sf = scale_factor(body[MPPT_DCW_SF], "DCW_SF (model 160)")
    per_module = []
    for i in range(n):
        raw = body[MPPT_FIXED_LEN + i * MPPT_MODULE_LEN + MPPT_MODULE_DCW]
        if raw == NOT_IMPL_UINT16:
            raise SourceError(f"DC power DCW of MPPT module {i + 1} is not implemented (0xFFFF)")
        per_module.append(scaled(raw, sf))
    return sum(per_module), per_module
