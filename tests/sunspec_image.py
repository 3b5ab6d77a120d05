"""A SunSpec register image of a plausible three-phase inverter, for tests.

The layout follows the SunSpec Information Model definitions (github.com/sunspec/models:
``model_1.json``, ``model_103.json``, ``model_113.json``, ``model_160.json``): the ``SunS``
marker, the common model 1 (length 66), an inverter model 103 (length 50; or 113, float,
length 60), optionally the multiple-MPPT extension 160 (8 + 20 registers per module), then the
end marker 0xFFFF with length 0. ``Image.points`` gives the absolute address of the points a
test may want to change.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field


def _string(text: str, n_regs: int) -> list[int]:
    raw = text.encode()[: n_regs * 2].ljust(n_regs * 2, b"\0")
    return [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]


def u16(value: int) -> int:
    """A signed value as the register holds it (two's complement)."""
    if not -0x8000 <= value <= 0xFFFF:
        raise ValueError(value)
    return value & 0xFFFF


def i16(value: int) -> int:
    """An int16 point (W is int16 in model 103: 42350 does not fit, 4235 with W_SF 1 would)."""
    if not -0x8000 <= value <= 0x7FFF:
        raise ValueError(f"{value} does not fit an int16 register")
    return value & 0xFFFF


def f32(value: float) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo]


@dataclass
class Image:
    base: int
    registers: list[int]
    points: dict[str, int] = field(default_factory=dict)  # name → absolute register address

    def at(self, name: str) -> int:
        return self.points[name]


def build_image(*, base: int = 40000, w: int = 4235, w_sf: int = 0, manufacturer: str = "Sovereign Solar",
                model: str = "SS-3P-5000", serial: str = "SN2024-000042", version: str = "1.4.2",
                inverter_model: int = 103, w_float: float = 4235.0,
                mppt_dcw: list[int] | None = None, dcw_sf: int = 0,
                marker: bool = True, end_marker: bool = True, truncate_inverter_to: int | None = None) -> Image:
    """``w``/``w_sf``: AC power and its scale factor (model 103); ``mppt_dcw``: DC power of each
    MPPT module (model 160, omitted when None); ``truncate_inverter_to``: keep only that many
    registers of the inverter model body (its header still says the full length), so that reading
    it goes past the end of the image."""
    regs: list[int] = [0x5375, 0x6E53] if marker else [0x0000, 0x0000]
    points: dict[str, int] = {}

    # Model 1, common: Mn(16) Md(16) Opt(8) Vr(8) SN(16) DA(1) Pad(1) = 66.
    common = (_string(manufacturer, 16) + _string(model, 16) + _string("", 8) + _string(version, 8)
              + _string(serial, 16) + [1, 0x8000])
    assert len(common) == 66
    regs += [1, len(common)] + common

    if inverter_model in (101, 102, 103):
        body = [0xFFFF] * 50
        a_sf = -2
        phase_ca = round(abs(w) * 10**w_sf / 3 / 231 * 100)  # per-phase current in 0.01 A
        body[0:5] = [3 * phase_ca, phase_ca, phase_ca, phase_ca, u16(a_sf)]  # A, AphA..C, A_SF
        body[5:12] = [4000, 4000, 4000, 2309, 2310, 2308, u16(-1)]  # PPVph*, PhVph*, V_SF
        body[12], body[13] = i16(w), u16(w_sf)  # W, W_SF
        body[14:16] = [5000, u16(-2)]  # Hz, Hz_SF
        body[16:22] = [i16(w), u16(w_sf), 0, 0, 1000, u16(-1)]  # VA, VA_SF, VAr, VAr_SF, PF, PF_SF
        body[22:25] = [0x0001, 0x86A0, 0]  # WH = 100000 Wh, WH_SF
        body[25:31] = [0xFFFF, 0x8000, 0xFFFF, 0x8000, 0x8000, 0x8000]  # DCA, DCV, DCW + SFs: not implemented
        body[31:36] = [u16(412), 0x8000, 0x8000, 0x8000, u16(-1)]  # TmpCab 41.2 C, others unimplemented, Tmp_SF
        body[36:38] = [4, 0xFFFF]  # St = MPPT, StVnd
        body[38:50] = [0] * 12  # Evt1, Evt2, EvtVnd1..4: no events
        start = len(regs) + 2
        points["W"], points["W_SF"], points["St"] = base + start + 12, base + start + 13, base + start + 36
    elif inverter_model in (111, 112, 113):
        body = [0x7FC0, 0x0000] * 30  # every float32 NaN (not implemented) ...
        body[20:22] = f32(w_float)  # ... but W
        body[48] = 4  # St (enum16) = MPPT
        start = len(regs) + 2
        points["W"] = base + start + 20
    else:
        raise ValueError(f"not an inverter model: {inverter_model}")
    points["inverter"] = base + start - 2
    length = len(body)
    if truncate_inverter_to is not None:
        body = body[:truncate_inverter_to]
    regs += [inverter_model, length] + body

    if mppt_dcw is not None and truncate_inverter_to is None:
        n = len(mppt_dcw)
        fixed = [u16(-2), u16(-1), u16(dcw_sf), 0, 0, 0, n, 0xFFFF]  # DCA_SF, DCV_SF, DCW_SF, DCWH_SF, Evt, N, TmsPer
        modules: list[int] = []
        start = len(regs) + 2
        for i, dcw in enumerate(mppt_dcw):
            # ID, IDStr, DCA (0.01 A), DCV (380.0 V), DCW
            m = [i + 1] + _string(f"PV{i + 1}", 8) + [round(dcw * 10**dcw_sf / 380 * 100), 3800, u16(dcw)]
            m += [0, 50_000, 0, 0, u16(35), 4, 0, 0]  # DCWH, Tms, Tmp, DCSt = MPPT, DCEvt
            assert len(m) == 20
            points[f"DCW{i + 1}"] = base + start + 8 + i * 20 + 11
            modules += m
        regs += [160, len(fixed) + len(modules)] + fixed + modules

    if end_marker and truncate_inverter_to is None:
        regs += [0xFFFF, 0]
    return Image(base, regs, points)
