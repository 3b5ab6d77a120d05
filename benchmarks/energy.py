"""Energy benchmark: history write throughput (SQLite; InfluxDB write API on VictoriaMetrics),
query time for 7 days at 30 s, and the cost of recomputing the snapshot and mode.

    .venv/bin/python benchmarks/energy.py [--points 200000] [--json]

Baselines measured in the same run: a bare SQLite table without index or aggregates, and the
influxdb-client writing the same points directly (no spool).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import summary  # noqa: E402

from hub.broker import free_port, port_in_use  # noqa: E402
from hub.energy.model import ForecastPoint, InputValue, ModeThresholds  # noqa: E402
from hub.energy.snapshot import DeviceEnergyView, compute_snapshot  # noqa: E402
from hub.history import Point, SqliteHistory  # noqa: E402

NOW = time.time()


def points(n: int, metrics: int = 10) -> list[Point]:
    return [Point(f"metric_{i % metrics}", NOW - n + i, float(i % 997)) for i in range(n)]


def bench_sqlite(n: int, batch: int) -> dict[str, Any]:
    pts = points(n)
    with tempfile.TemporaryDirectory() as d:
        bare = sqlite3.connect(Path(d) / "bare.sqlite3")
        bare.execute("PRAGMA journal_mode=WAL")
        bare.execute("PRAGMA synchronous=NORMAL")
        bare.execute("CREATE TABLE points (metric TEXT, ts REAL, value REAL)")
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            with bare:
                bare.executemany("INSERT INTO points VALUES (?, ?, ?)",
                                 [(p.metric, p.ts, p.value) for p in pts[i:i + batch]])
        bare_s = time.perf_counter() - t0
        bare.close()
        h = SqliteHistory(Path(d) / "history.sqlite3")
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            h.write(pts[i:i + batch])
        hist_s = time.perf_counter() - t0
        # 7 days at 30 s for one metric, then queries over it at 30 s steps.
        week = [Point("carbon_g_per_kwh", NOW - 7 * 86400 + i * 30, float(i % 300)) for i in range(7 * 2880)]
        h.write(week)
        lat = []
        for _ in range(30):
            t0 = time.perf_counter()
            rows = h.query("carbon_g_per_kwh", NOW - 7 * 86400, NOW, 30, now=NOW)
            lat.append(time.perf_counter() - t0)
        h.close()
    return {"points": n, "batch": batch, "bare_points_per_s": n / bare_s, "history_points_per_s": n / hist_s,
            "ratio_bare_over_history": (n / bare_s) / (n / hist_s),
            "query_7d_30s_rows": len(rows), "query_7d_30s_s": summary(lat)}


def bench_snapshot(devices: int, rounds: int) -> dict[str, Any]:
    inputs = {m: InputValue(m, v, "bench", NOW - 1, 300) for m, v in
              (("pv_w", 3200.0), ("load_w", 800.0), ("grid_w", -2400.0), ("carbon_g_per_kwh", 140.0),
               ("price_per_kwh", 0.245), ("export_price_per_kwh", 0.15), ("battery_soc_pct", 70.0))}
    forecasts = {"carbon_g_per_kwh": [ForecastPoint(NOW + i * 1800, NOW + (i + 1) * 1800, 100 + i) for i in range(96)],
                 "price_per_kwh": [ForecastPoint(NOW + i * 3600, NOW + (i + 1) * 3600, 0.2) for i in range(48)]}
    views = [DeviceEnergyView(f"d{i}", "battery" if i % 2 else "mains", 30.0 + i % 60, False, 5.0 + i, NOW)
             for i in range(devices)]
    t = ModeThresholds()
    lat = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        compute_snapshot(NOW, inputs, forecasts, views, t)
        lat.append(time.perf_counter() - t0)
    return {"devices": devices, "rounds": rounds, "snapshot_s": summary(lat)}


def start_victoria(d: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    exe = shutil.which("victoria-metrics")
    if exe is None:
        return None
    port = free_port()
    proc = subprocess.Popen([exe, f"-httpListenAddr=127.0.0.1:{port}", f"-storageDataPath={d}", "-retentionPeriod=1d",
                             "-search.latencyOffset=0s", "-loggerLevel=ERROR"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while not port_in_use("127.0.0.1", port):
        if time.monotonic() > deadline:
            proc.kill()
            return None
        time.sleep(0.05)
    return proc, port


def bench_influx(n: int, batch: int) -> dict[str, Any] | None:
    try:
        from influxdb_client import InfluxDBClient, Point as IPoint  # noqa: F401
        from influxdb_client.client.write_api import SYNCHRONOUS
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as d:
        started = start_victoria(Path(d) / "vm")
        if started is None:
            return None
        proc, port = started
        try:
            url = f"http://127.0.0.1:{port}"
            pts = points(n)
            lines = [f"bare,metric={p.metric} value={p.value} {int(p.ts)}" for p in pts]
            client = InfluxDBClient(url=url, token="x", org="o", timeout=30_000)
            write = client.write_api(write_options=SYNCHRONOUS)
            t0 = time.perf_counter()
            for i in range(0, n, batch):
                write.write(bucket="b", record=lines[i:i + batch], write_precision="s")
            bare_s = time.perf_counter() - t0
            client.close()
            result: dict[str, Any] = {"points": n, "batch": batch, "bare_client_points_per_s": n / bare_s}
            try:
                import asyncio

                from hub.config import InfluxConfig
                from hub.influx import InfluxWriter
            except ImportError:
                return result

            async def spooled() -> float:
                cfg = InfluxConfig(url=url, token="x", batch_size=batch, flush_interval_s=0.1)
                async with InfluxWriter(cfg, Path(d) / "spool.sqlite3") as w:
                    t0 = time.perf_counter()
                    for p in pts:
                        w.add(p.metric, p.ts, p.value)
                    while w.written < n:
                        await asyncio.sleep(0.01)
                    return time.perf_counter() - t0

            spool_s = asyncio.run(spooled())
            result["spooled_writer_points_per_s"] = n / spool_s
            result["ratio_bare_over_spooled"] = (n / bare_s) / (n / spool_s)
            return result
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    print(f"$ python benchmarks/energy.py {' '.join(sys.argv[1:])}", file=sys.stderr)
    figures = {"sqlite": bench_sqlite(args.points, args.batch), "influx": bench_influx(args.points // 4, args.batch),
               "snapshot_10": bench_snapshot(10, 5000), "snapshot_1000": bench_snapshot(1000, 300)}
    if args.json:
        json.dump(figures, sys.stdout, indent=2)
        print()
        return
    s = figures["sqlite"]
    print(f"history write, SQLite, {s['points']} points in batches of {s['batch']}")
    print(f"  bare table (no index, no aggregates)   {s['bare_points_per_s']:>10,.0f} points/s")
    print(f"  SqliteHistory (index + 5 min rollup)    {s['history_points_per_s']:>10,.0f} points/s"
          f"   (bare/history {s['ratio_bare_over_history']:.2f})")
    q = s["query_7d_30s_s"]
    print(f"query 7 days at 30 s ({s['query_7d_30s_rows']} rows): p50 {q['p50'] * 1000:.1f} ms  p95 {q['p95'] * 1000:.1f} ms")
    i = figures["influx"]
    if i is None:
        print("InfluxDB write API: skipped (victoria-metrics or influxdb-client missing)")
    else:
        print(f"history write, InfluxDB v2 write API on VictoriaMetrics, {i['points']} points")
        print(f"  influxdb-client directly                {i['bare_client_points_per_s']:>10,.0f} points/s")
        if "spooled_writer_points_per_s" in i:
            print(f"  InfluxWriter (disk spool, then client)  {i['spooled_writer_points_per_s']:>10,.0f} points/s"
                  f"   (bare/spooled {i['ratio_bare_over_spooled']:.2f})")
    for key in ("snapshot_10", "snapshot_1000"):
        sn = figures[key]["snapshot_s"]
        print(f"snapshot + mode recompute, {figures[key]['devices']} devices: "
              f"p50 {sn['p50'] * 1e6:.0f} µs  p95 {sn['p95'] * 1e6:.0f} µs")


if __name__ == "__main__":
    main()
