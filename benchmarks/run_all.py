"""Run every benchmark, read its --json output, and flag any figure past its target.

    .venv/bin/python benchmarks/run_all.py                 # every benchmark in benchmarks/targets.toml
    .venv/bin/python benchmarks/run_all.py route energy    # only these (or --only route --only energy)
    .venv/bin/python benchmarks/run_all.py --list          # what would run, and every target; runs nothing
    .venv/bin/python benchmarks/run_all.py --json          # the whole report as JSON on stdout
    .venv/bin/python benchmarks/run_all.py --targets PATH  # another targets file

The benchmarks, their command lines, timeouts, the figures read from their JSON and the bound each
is held to are in benchmarks/targets.toml (its header describes the schema; docs/benchmarks.md is
where each target comes from). Benchmarks run one after another from the repository root, each in
its own process group; one that exceeds its timeout gets SIGINT (so that it can stop the brokers
and hubs it started), then SIGKILL. A benchmark that fails does not stop the others.

Each figure ends up as one row: OK (within its bound), REGRESSED (past it), ERROR (the key is
missing, null or not a number), INFO (reported only: the doc sets no target), SKIPPED (an optional
figure that is absent), UNMET (past a target marked as never met yet, with the reason: shown, not
a failure). A benchmark that exits non-zero, times out or prints no JSON object is one
ERROR row.

Exit status: 0 when every target is met and every benchmark ran; 1 when any target is past its
bound or any benchmark or figure is an ERROR; 2 when the targets file is invalid or a name given
to --only is unknown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_TARGETS = HERE / "targets.toml"
DEFAULT_TIMEOUT_S = 600.0
#: After SIGINT, how long a timed-out benchmark has to clean up before SIGKILL.
GRACE_S = 10.0

OK, REGRESSED, ERROR, INFO, SKIPPED, UNMET = "OK", "REGRESSED", "ERROR", "INFO", "SKIPPED", "UNMET"

EXPRESSIONS = ("value", "ratio", "difference")
#: bound key → (symbol, test of the figure against the bound)
BOUNDS: dict[str, tuple[str, Any]] = {
    "max": ("≤", lambda v, b: v <= b),
    "below": ("<", lambda v, b: v < b),
    "min": ("≥", lambda v, b: v >= b),
    "above": (">", lambda v, b: v > b),
}
FIGURE_KEYS = {"name", *EXPRESSIONS, "scale", "unit", *BOUNDS, "source", "optional", "note", "unmet"}
BENCHMARK_KEYS = {"name", "command", "timeout_s", "doc", "figure"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class TargetsError(Exception):
    """The targets file is invalid; the message names the entry."""


class FigureError(Exception):
    """A figure could not be read from a benchmark's output (missing key, null, not a number)."""


# -- the targets file ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Figure:
    name: str
    kind: str                 # "value", "ratio" or "difference"
    paths: tuple[str, ...]    # one path for "value", two otherwise
    scale: float = 1.0
    unit: str = ""
    bounds: tuple[tuple[str, float], ...] = ()  # (bound key, bound), e.g. ("max", 1.5)
    source: str = ""
    optional: bool = False
    note: str = ""
    #: A target never met yet, and why (the closing note that says so): past it, the row is
    #: UNMET and does not fail the run; a regression is a target that *was* met.
    unmet: str = ""

    def expression(self) -> str:
        text = {"value": lambda p: p[0], "ratio": lambda p: f"{p[0]} / {p[1]}",
                "difference": lambda p: f"{p[0]} − {p[1]}"}[self.kind](self.paths)
        if self.scale != 1:
            scale = f"{self.scale:g}".replace("e+0", "e").replace("e+", "e")
            text = f"({text}) × {scale}" if self.kind != "value" else f"{text} × {scale}"
        return text

    def target(self) -> str:
        if not self.bounds:
            return "-"
        unit = f" {self.unit}" if self.unit else ""
        return " and ".join(f"{BOUNDS[k][0]} {b:g}{unit}" for k, b in self.bounds)

    def evaluate(self, output: Any) -> float:
        values = [number(output, p) for p in self.paths]
        if self.kind == "value":
            v = values[0]
        elif self.kind == "ratio":
            if values[1] == 0:
                raise FigureError(f"{self.paths[1]} is 0: no ratio")
            v = values[0] / values[1]
        else:
            v = values[0] - values[1]
        return v * self.scale


@dataclass(frozen=True)
class Benchmark:
    name: str
    command: tuple[str, ...]
    timeout_s: float
    doc: str
    figures: tuple[Figure, ...]

    def argv(self, python: str) -> list[str]:
        """The command with {python} (this interpreter) and {bin} (its directory) filled in."""
        bindir = str(Path(python).parent)
        return [a.replace("{python}", python).replace("{bin}", bindir) for a in self.command]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _path_ok(p: Any) -> bool:
    return isinstance(p, str) and p != "" and all(part for part in p.split("."))


def _figure(raw: Any, where: str) -> Figure:
    if not isinstance(raw, dict):
        raise TargetsError(f"{where}: must be a table ([[benchmark.figure]])")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise TargetsError(f"{where}: 'name' must be a non-empty string")
    where = f"{where} ('{name}')"
    unknown = sorted(set(raw) - FIGURE_KEYS)
    if unknown:
        raise TargetsError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(FIGURE_KEYS))})")
    kinds = [k for k in EXPRESSIONS if k in raw]
    if len(kinds) != 1:
        raise TargetsError(f"{where}: needs exactly one of 'value', 'ratio', 'difference' (found "
                           f"{', '.join(kinds) or 'none'})")
    kind = kinds[0]
    if kind == "value":
        if not _path_ok(raw[kind]):
            raise TargetsError(f"{where}: 'value' must be a JSON path such as \"a.b.c\", not {raw[kind]!r}")
        paths: tuple[str, ...] = (raw[kind],)
    else:
        pair = raw[kind]
        if not (isinstance(pair, list) and len(pair) == 2 and all(_path_ok(p) for p in pair)):
            raise TargetsError(f"{where}: {kind!r} must be a list of two JSON paths, not {pair!r}")
        paths = tuple(pair)
    scale = raw.get("scale", 1.0)
    if not _is_number(scale) or scale == 0:
        raise TargetsError(f"{where}: 'scale' must be a non-zero number, not {scale!r}")
    unit = raw.get("unit", "")
    if not isinstance(unit, str):
        raise TargetsError(f"{where}: 'unit' must be a string")
    bounds = []
    for key in BOUNDS:
        if key in raw:
            if not _is_number(raw[key]):
                raise TargetsError(f"{where}: {key!r} must be a number, not {raw[key]!r}")
            bounds.append((key, float(raw[key])))
    keys = [k for k, _ in bounds]
    if "max" in keys and "below" in keys or "min" in keys and "above" in keys:
        raise TargetsError(f"{where}: at most one of 'max'/'below' and one of 'min'/'above'")
    source = raw.get("source", "")
    if not isinstance(source, str):
        raise TargetsError(f"{where}: 'source' must be a string")
    if bounds and not source.strip():
        raise TargetsError(f"{where}: a bound needs a 'source' (where the target is stated)")
    optional = raw.get("optional", False)
    if not isinstance(optional, bool):
        raise TargetsError(f"{where}: 'optional' must be true or false")
    note = raw.get("note", "")
    if not isinstance(note, str):
        raise TargetsError(f"{where}: 'note' must be a string")
    unmet = raw.get("unmet", "")
    if not isinstance(unmet, str) or (unmet and not bounds):
        raise TargetsError(f"{where}: 'unmet' must be a string saying why, on a figure with a bound")
    return Figure(name, kind, paths, float(scale), unit, tuple(bounds), source, optional, note, unmet)


def _benchmark(raw: Any, index: int) -> Benchmark:
    where = f"benchmark #{index + 1}"
    if not isinstance(raw, dict):
        raise TargetsError(f"{where}: must be a table ([[benchmark]])")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise TargetsError(f"{where}: 'name' must be a word of letters, digits, '-', '_' or '.', not {name!r}")
    where = f"benchmark '{name}'"
    unknown = sorted(set(raw) - BENCHMARK_KEYS)
    if unknown:
        raise TargetsError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(BENCHMARK_KEYS))})")
    command = raw.get("command")
    if isinstance(command, str):
        command = shlex.split(command)
    if not (isinstance(command, list) and command and all(isinstance(a, str) and a for a in command)):
        raise TargetsError(f"{where}: 'command' must be a non-empty list of strings (argv)")
    timeout = raw.get("timeout_s", DEFAULT_TIMEOUT_S)
    if not _is_number(timeout) or timeout <= 0:
        raise TargetsError(f"{where}: 'timeout_s' must be a positive number of seconds, not {timeout!r}")
    doc = raw.get("doc", "")
    if not isinstance(doc, str):
        raise TargetsError(f"{where}: 'doc' must be a string")
    raw_figures = raw.get("figure", [])
    if not isinstance(raw_figures, list):
        raise TargetsError(f"{where}: 'figure' must be an array of tables ([[benchmark.figure]])")
    figures = [_figure(f, f"{where}, figure #{i + 1}") for i, f in enumerate(raw_figures)]
    seen: set[str] = set()
    for f in figures:
        if f.name in seen:
            raise TargetsError(f"{where}: two figures named '{f.name}'")
        seen.add(f.name)
    return Benchmark(name, tuple(command), float(timeout), doc, tuple(figures))


def load_targets(path: Path) -> list[Benchmark]:
    """The benchmarks of a targets file, validated; TargetsError names the faulty entry."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise TargetsError(f"cannot read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise TargetsError(f"not valid TOML: {e}") from None
    unknown = sorted(set(data) - {"benchmark"})
    if unknown:
        raise TargetsError(f"unknown top-level key {unknown[0]!r} (only [[benchmark]] entries)")
    raw = data.get("benchmark")
    if not isinstance(raw, list) or not raw:
        raise TargetsError("no [[benchmark]] entries")
    benchmarks = [_benchmark(b, i) for i, b in enumerate(raw)]
    names = [b.name for b in benchmarks]
    for n in names:
        if names.count(n) > 1:
            raise TargetsError(f"benchmark '{n}': the name is used twice")
    return benchmarks


# -- reading figures --------------------------------------------------------------------------------

def lookup(doc: Any, path: str) -> Any:
    """The value at a dotted path ("a.b.0.c"); FigureError says where the path stops."""
    node: Any = doc
    parts = path.split(".")
    for i, part in enumerate(parts):
        where = repr(".".join(parts[:i])) if i else "the output"
        if isinstance(node, dict):
            if part not in node:
                raise FigureError(f"missing key {path!r}: no {part!r} in {where}")
            node = node[part]
        elif isinstance(node, list) and part.isdigit():
            if int(part) >= len(node):
                raise FigureError(f"missing key {path!r}: {where} has {len(node)} items")
            node = node[int(part)]
        else:
            raise FigureError(f"missing key {path!r}: {where} is {_kind(node)}, not an object")
    return node


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(v), type(v).__name__)


def number(doc: Any, path: str) -> float:
    v = lookup(doc, path)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise FigureError(f"{path!r} is {_kind(v)}, not a number")
    if not math.isfinite(v):
        raise FigureError(f"{path!r} is {v}, not a finite number")
    return float(v)


def parse_output(stdout: str) -> dict[str, Any]:
    """The JSON object a benchmark printed: the whole of stdout, or else the first object that
    starts a line and runs to the end of stdout (anything printed before it is ignored)."""
    text = stdout.strip()
    if not text:
        raise ValueError("printed nothing on stdout")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None
        decoder = json.JSONDecoder()
        for m in re.finditer(r"^\{", text, re.MULTILINE):
            try:
                obj, end = decoder.raw_decode(text, m.start())
            except json.JSONDecodeError:
                continue
            if not text[end:].strip():
                doc = obj
                break
        if doc is None:
            first = text.splitlines()[0][:80]
            raise ValueError(f"printed no JSON object on stdout (it begins {first!r})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"printed JSON {_kind(doc)}, not an object")
    return doc


# -- running ----------------------------------------------------------------------------------------

@dataclass
class Row:
    figure: str
    status: str
    value: float | None = None
    unit: str = ""
    target: str = "-"
    detail: str = ""
    expression: str = ""
    source: str = ""
    bound: float | None = None  # the bound a REGRESSED figure is past


@dataclass
class Result:
    benchmark: Benchmark
    argv: list[str]
    error: str = ""            # why the run failed, "" when it produced JSON
    returncode: int | None = None
    seconds: float = 0.0
    output: dict[str, Any] | None = None
    stderr_tail: str = ""
    rows: list[Row] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.error) or any(r.status in (ERROR, REGRESSED) for r in self.rows)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to the benchmark's process group (KeyboardInterrupt runs its cleanup: brokers, hubs),
    then SIGKILL to whatever of the group is left after GRACE_S."""
    _signal_group(proc.pid, signal.SIGINT)
    try:
        proc.wait(GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def run_benchmark(b: Benchmark, python: str = sys.executable, timeout_s: float | None = None) -> Result:
    argv = b.argv(python)
    timeout = timeout_s if timeout_s is not None else b.timeout_s
    result = Result(b, argv)
    # Files rather than pipes: a helper that outlives the benchmark (a broker in its own session)
    # cannot keep the runner waiting for end-of-file.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)
        except OSError as e:
            result.error = f"could not start: {e.strerror or e}"
            return _evaluate(result)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            result.error = f"timed out after {timeout:g} s"
        except BaseException:  # Ctrl-C of the runner: the benchmark is in its own session
            _stop(proc)
            raise
        result.seconds = time.monotonic() - t0
        result.returncode = proc.returncode
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    result.stderr_tail = "\n".join(stderr.rstrip().splitlines()[-15:])
    if not result.error and proc.returncode != 0:
        result.error = (f"exited with status {proc.returncode}" if proc.returncode > 0
                        else f"killed by signal {-proc.returncode}")
    if not result.error:
        try:
            result.output = parse_output(stdout)
        except ValueError as e:
            result.error = str(e)
    return _evaluate(result)


def _evaluate(result: Result) -> Result:
    b = result.benchmark
    if result.error or result.output is None:
        checked = sum(1 for f in b.figures if f.bounds)
        result.rows = [Row("(run)", ERROR, detail=result.error + (f"; {checked} target(s) not checked" if checked else ""))]
        return result
    for f in b.figures:
        row = Row(f.name, INFO, unit=f.unit, target=f.target(), expression=f.expression(), source=f.source)
        try:
            row.value = f.evaluate(result.output)
        except FigureError as e:
            if f.optional and (str(e).startswith("missing key") or " is null" in str(e)):
                row.status, row.detail = SKIPPED, str(e)
            else:
                row.status, row.detail = ERROR, str(e)
        else:
            if f.bounds:
                past = [bound for k, bound in f.bounds if not BOUNDS[k][1](row.value, bound)]
                row.status = (UNMET if f.unmet else REGRESSED) if past else OK
                row.bound = past[0] if past else None
                if past and f.unmet:
                    row.detail = f"known: {f.unmet}"
        result.rows.append(row)
    return result


# -- output -----------------------------------------------------------------------------------------

def fmt(v: float | None, unit: str = "", near: float | None = None) -> str:
    if v is None:
        return "-"
    text = f"{v:,.0f}" if abs(v) >= 10_000 else f"{v:.4g}"
    if near is not None and text == f"{near:.4g}" and v != near:
        text = f"{v:.7g}"  # a value past its bound must not print as the bound itself
    return f"{text} {unit}" if unit else text


def show_argv(argv: list[str]) -> str:
    """The command as one could type it from the repository root."""
    root = str(ROOT) + os.sep
    return shlex.join(a[len(root):] if a.startswith(root) else a for a in argv)


def table(results: list[Result]) -> str:
    rows = [("BENCHMARK", "FIGURE", "VALUE", "TARGET", "STATUS", "")]
    for r in results:
        for row in r.rows:
            rows.append((r.benchmark.name, row.figure, fmt(row.value, row.unit, row.bound), row.target, row.status,
                         row.detail))
    widths = [max(len(x[i]) for x in rows) for i in range(5)]
    return "\n".join(("  ".join(c.ljust(w) for c, w in zip(x[:5], widths)) + f"  {x[5]}").rstrip() for x in rows)


def report_text(results: list[Result], targets: Path) -> str:
    lines = [table(results), "", "commands (from the repository root):"]
    width = max(len(r.benchmark.name) for r in results)
    for r in results:
        how = r.error or f"exit {r.returncode}"
        lines.append(f"  {r.benchmark.name:<{width}}  {how}, {r.seconds:.1f} s: {show_argv(r.argv)}")
    for r in results:
        if r.error and r.stderr_tail:
            lines += ["", f"{r.benchmark.name}: last lines of stderr", *("  " + s for s in r.stderr_tail.splitlines())]
    counts = {s: sum(row.status == s for r in results for row in r.rows)
              for s in (OK, REGRESSED, UNMET, ERROR, INFO, SKIPPED)}
    shown = show_argv([str(Path(targets).resolve())])
    lines += ["", ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n) + f"  (targets: {shown})"]
    return "\n".join(lines)


def _clean(v: Any) -> Any:
    """JSON without NaN/Infinity (not JSON): those become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def report_json(results: list[Result], targets: Path) -> dict[str, Any]:
    return _clean({
        "targets": str(targets),
        "ok": not any(r.failed for r in results),
        "benchmarks": [{
            "name": r.benchmark.name, "command": r.argv, "error": r.error or None, "returncode": r.returncode,
            "seconds": round(r.seconds, 3), "stderr_tail": r.stderr_tail if r.error else None,
            "figures": [{"name": row.figure, "status": row.status, "value": row.value, "unit": row.unit,
                         "target": row.target, "expression": row.expression, "source": row.source,
                         "detail": row.detail or None} for row in r.rows],
            "output": r.output,
        } for r in results],
    })


def listing(benchmarks: list[Benchmark], python: str) -> str:
    lines = []
    for b in benchmarks:
        lines.append(f"{b.name}  (timeout {b.timeout_s:g} s)  {b.doc}".rstrip())
        lines.append(f"  $ {show_argv(b.argv(python))}")
        width = max((len(f.name) for f in b.figures), default=0)
        for f in b.figures:
            target = f.target() if f.bounds else "reported only"
            opt = " (optional)" if f.optional else ""
            lines.append(f"    {f.name:<{width}}  {target:<14}  {f.expression()}{opt}")
            if f.source:
                lines.append(f"    {'':<{width}}  source: {f.source}")
            if f.note:
                lines.append(f"    {'':<{width}}  note: {f.note}")
        lines.append("")
    n_targets = sum(1 for b in benchmarks for f in b.figures if f.bounds)
    n_figures = sum(len(b.figures) for b in benchmarks)
    lines.append(f"{len(benchmarks)} benchmarks, {n_targets} targets, {n_figures - n_targets} figures reported only")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", metavar="NAME", help="run only these benchmarks")
    ap.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this benchmark (repeatable)")
    ap.add_argument("--targets", type=Path, default=DEFAULT_TARGETS, metavar="PATH",
                    help="targets file (default: benchmarks/targets.toml)")
    ap.add_argument("--list", action="store_true", help="print the benchmarks and their targets; run nothing")
    ap.add_argument("--json", action="store_true", help="print the whole report as JSON")
    ap.add_argument("--timeout", type=float, metavar="S", help="override every benchmark's timeout_s")
    args = ap.parse_args(argv)
    try:
        benchmarks = load_targets(args.targets)
    except TargetsError as e:
        print(f"{args.targets}: {e}", file=sys.stderr)
        return 2
    wanted = [*args.names, *args.only]
    known = {b.name for b in benchmarks}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        print(f"unknown benchmark {unknown[0]!r} (known: {', '.join(b.name for b in benchmarks)})", file=sys.stderr)
        return 2
    if wanted:
        benchmarks = [b for b in benchmarks if b.name in wanted]
    if args.list:
        print(listing(benchmarks, sys.executable))
        return 0
    if args.timeout is not None and args.timeout <= 0:
        print("--timeout must be positive", file=sys.stderr)
        return 2
    results = []
    for b in benchmarks:
        print(f"running {b.name}: {show_argv(b.argv(sys.executable))}", file=sys.stderr, flush=True)
        r = run_benchmark(b, sys.executable, args.timeout)
        print(f"  {r.error or 'done'} ({r.seconds:.1f} s)", file=sys.stderr, flush=True)
        results.append(r)
    if args.json:
        json.dump(report_json(results, args.targets), sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        print(report_text(results, args.targets))
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
