"""Writes the Grafana dashboards in this folder (``python dashboards/grafana/build.py``).

Each dashboard reads the hub's InfluxDB history (``[history.influx]``): measurement
``sovereign``, tag ``metric``, field ``value`` (hub/influx.py). The datasource and the bucket are
dashboard variables (``DS``, ``bucket``), so the files work unchanged against any InfluxDB 2
datasource; the queries are Flux.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS = {"type": "influxdb", "uid": "${DS}"}


def flux(metric: str | None = None, regex: str | None = None, fn: str = "mean", extra: str = "") -> str:
    cond = f'r.metric == "{metric}"' if metric else f"r.metric =~ /{regex}/"
    return (f'from(bucket: "${{bucket}}")\n  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n'
            f'  |> filter(fn: (r) => r._measurement == "sovereign" and {cond})\n'
            f'  |> aggregateWindow(every: v.windowPeriod, fn: {fn}, createEmpty: false){extra}')


def panel(pid: int, title: str, queries: list[str], x: int, y: int, w: int = 12, h: int = 8, unit: str = "short",
          kind: str = "timeseries", legend: str = "${__field.labels.metric}") -> dict[str, Any]:
    return {"id": pid, "type": kind, "title": title, "datasource": DS,
            "gridPos": {"x": x, "y": y, "w": w, "h": h},
            "fieldConfig": {"defaults": {"unit": unit, "displayName": legend}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
            "targets": [{"refId": chr(65 + i), "datasource": DS, "query": q} for i, q in enumerate(queries)]}


def dashboard(uid: str, title: str, panels: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "tags": ["sovereign-hub"], "timezone": "browser", "schemaVersion": 39,
        "version": 1, "editable": True, "refresh": "30s", "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": [
            {"name": "DS", "label": "InfluxDB", "type": "datasource", "query": "influxdb", "current": {}, "hide": 0},
            {"name": "bucket", "label": "Bucket", "type": "textbox", "query": "sovereign",
             "current": {"text": "sovereign", "value": "sovereign"}, "hide": 0},
        ]},
        "panels": panels,
    }


DASHBOARDS = {
    "energy": dashboard("sovereign-energy", "Sovereign Hub — energy", [
        # site_grid_w is the hub's balance (measured or derived from PV, load and battery).
        panel(1, "Site power", [flux("pv_w"), flux("load_w"), flux("site_grid_w"), flux("battery_w")], 0, 0, 24,
              unit="watt"),
        panel(2, "Grid carbon intensity and the hub's marginal carbon",
              [flux("carbon_g_per_kwh"), flux("site_marginal_g_per_kwh")], 0, 8, unit="none"),
        panel(3, "Solar surplus", [flux("solar_surplus_w")], 12, 8, unit="watt"),
        panel(4, "Energy mode (0 tiny_only … 4 clean_grid)", [flux("energy_mode", fn="last")], 0, 16, unit="none",
              kind="state-timeline"),
        panel(5, "Device batteries", [flux(regex=r"^device\..+\.battery_pct$")], 12, 16, unit="percent"),
        panel(6, "Prices", [flux("price_per_kwh"), flux("export_price_per_kwh"), flux("site_marginal_price_per_kwh")],
              0, 24, 24, unit="none"),
    ]),
    "routing": dashboard("sovereign-routing", "Sovereign Hub — routing", [
        panel(1, "Tasks per layer", [flux(regex=r"^route\..+\.latency_ms$", fn="count")], 0, 0, unit="short"),
        panel(2, "Latency per layer (mean)", [flux(regex=r"^route\..+\.latency_ms$")], 12, 0, unit="ms"),
        panel(3, "Joules per layer", [flux(regex=r"^route\..+\.joules$", fn="sum")], 0, 8, unit="none"),
        panel(4, "gCO2 per layer", [flux(regex=r"^route\..+\.gco2$", fn="sum")], 12, 8, unit="none"),
    ]),
    "costs": dashboard("sovereign-costs", "Sovereign Hub — costs", [
        panel(1, "Money per layer", [flux(regex=r"^route\..+\.cost$", fn="sum")], 0, 0, 24, unit="currencyUSD"),
        panel(2, "Money, whole period", [flux(regex=r"^route\..+\.cost$", fn="sum",
                                              extra="\n  |> sum()")], 0, 8, 8, kind="stat", unit="currencyUSD"),
        panel(3, "Tasks, whole period", [flux(regex=r"^route\..+\.cost$", fn="count",
                                              extra="\n  |> sum()")], 8, 8, 8, kind="stat"),
        panel(4, "gCO2, whole period", [flux(regex=r"^route\..+\.gco2$", fn="sum",
                                             extra="\n  |> sum()")], 16, 8, 8, kind="stat"),
    ]),
    "eeg": dashboard("sovereign-eeg", "Sovereign Hub — biofeedback", [
        panel(1, "Feedback score", [flux("eeg.score")], 0, 0, 24, unit="percentunit"),
        panel(2, "Relative band powers", [flux(regex=r"^eeg\.rel_(delta|theta|alpha|beta|gamma)$")], 0, 8,
              unit="percentunit"),
        panel(3, "Protocol metric", [flux("eeg.metric")], 12, 8, unit="none"),
        panel(4, "Gaze attention and fixation rate", [flux("gaze.attention"), flux("gaze.fixation_rate_hz")], 0, 16,
              24, unit="none"),
    ]),
}

PROVISIONING = """# Grafana provisioning: copy this file to /etc/grafana/provisioning/dashboards/ and point
# `path` at this folder. The dashboards ask for an InfluxDB datasource (variable DS) and a bucket.
apiVersion: 1
providers:
  - name: sovereign-hub
    folder: Sovereign Hub
    type: file
    disableDeletion: false
    allowUiUpdates: true
    options:
      path: /var/lib/grafana/dashboards/sovereign-hub
"""

if __name__ == "__main__":
    for name, doc in DASHBOARDS.items():
        (HERE / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (HERE / "provisioning.yaml").write_text(PROVISIONING)
