"""`make bench`: every benchmark of issue 7 in one run, one table, var/bench/bench.json and
docs/benchmarks.md regenerated.

Runs, in order: instrumentation overhead (tests/bench/overhead.py), checkout capacity and the
load generator's cost (capacity.py), lab footprint (footprint.py), and reads the time to detect
from the latest drill verify runs (ttd.py). ``--quick`` runs each in its smoke mode (under 3
minutes in all); ``--only capacity,footprint`` picks some.

docs/benchmarks.md is made of ``## `` sections. This script owns the sections named in
``GENERATED`` and rewrites them from the JSON; every other section (the hand-written
"Instrumentation overhead" analysis, "Where the time goes" notes) is kept as it is, in place.

Benchmarks report; a figure never fails this command. It exits 1 only when a benchmark crashed
(the others still run and the table says which one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
import traceback
from pathlib import Path

from tests.bench import capacity, footprint, locust_cost, ttd
from tests.bench.common import BENCH_DIR, ROOT, machine

OUT = BENCH_DIR / "bench.json"
DOC = ROOT / "docs" / "benchmarks.md"
ORDER = ("overhead", "capacity", "locust_cost", "footprint", "ttd")

LATEST = "Latest run (`make bench`)"
LOCUST_COST = "Load generator cost"
CAPACITY = "Checkout capacity"
FOOTPRINT = "Lab footprint"
TTD = "Time to detect"
GENERATED = (LATEST, CAPACITY, LOCUST_COST, FOOTPRINT, TTD)
INTRO = """# Benchmarks

Figures measured on the lab machine. Benchmarks print figures and write JSON; they never fail
the test suite on a number. Each section says how to reproduce it. `make bench`
(`uv run --frozen python -m tests.bench.run_all`, `--quick` for a smoke run under 3 minutes)
runs them all, writes `var/bench/bench.json` and regenerates the sections marked *generated*;
the other sections are written by hand and kept.
"""


def run_one(name: str, quick: bool) -> dict:
    """Run one benchmark in process; its JSON report, or {"error": ...}."""
    argv = ["--quick"] if quick else []
    t0 = time.monotonic()
    try:
        if name == "overhead":
            from tests.bench import overhead

            code = overhead.main(argv)
            path = overhead.OUT
        elif name == "capacity":
            code = capacity.main(argv + ([] if quick else ["--profile"]))
            path = capacity.OUT
        elif name == "locust_cost":
            code = locust_cost.main(argv)
            path = locust_cost.OUT
        elif name == "footprint":
            code = footprint.main(argv)
            path = footprint.OUT
        else:
            code = ttd.main([])
            path = ttd.OUT
    except BaseException as exc:  # a crash of one benchmark must not lose the others
        if isinstance(exc, KeyboardInterrupt):
            raise
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}", "seconds": time.monotonic() - t0}
    if code:
        return {"error": f"exited {code}", "seconds": time.monotonic() - t0}
    report = json.loads(Path(path).read_text())
    report["seconds"] = round(time.monotonic() - t0, 1)
    return report


# ---------------------------------------------------------------------------- table


def summary_rows(results: dict) -> list[dict]:
    """One row per figure with its goal: what `make bench` prints and the doc's summary shows."""
    rows = []

    def add(item, what, value, goal, met, note=""):
        rows.append(
            {"item": item, "what": what, "value": value, "goal": goal, "met": met, "note": note}
        )

    o = results.get("overhead")
    if o and "error" not in o:
        by = {r["app"]: r for r in o["summary"]}
        kit = by.get("kit")
        if kit:
            add(
                1, "instrumentation overhead: kit / bare req/s", f"{kit['ratio']:.2f}",
                ">= 0.75", kit["ratio"] >= 0.75,
                f"cpu ratio {kit['cpu_ratio']:.2f}; {kit['cpu_us_per_req']:.0f} µs/req vs bare "
                f"{by['bare']['cpu_us_per_req']:.0f}" if "bare" in by else "",
            )  # fmt: skip
    elif o:
        add(1, "instrumentation overhead", "—", ">= 0.75", None, o["error"])
    c = results.get("capacity")
    if c and "error" not in c:
        res = c["result"]
        value = "none within limits" if res["max_checkouts_per_s"] is None else (
            f"{res['max_checkouts_per_s']:.1f} /s"
        )  # fmt: skip
        cpu = res["cpu_cores"] or {}
        note = (
            f"at {res['at_users']} users, p99 {res['p99_ms']} ms; CPU cores "
            + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if v >= 0.01)
            if res["at_users"]
            else ""
        )
        add(2, "checkout capacity (p99 < 500 ms, errors < 0.1%)", value, ">= 250 /s",
            res["goal_met"], note)  # fmt: skip
    elif c:
        add(2, "checkout capacity", "—", ">= 250 /s", None, c["error"])
    lc = results.get("locust_cost")
    if lc and "error" not in lc:
        r = lc["result"]
        v = r["cpu_s_per_1000_req"]
        in_lab = (c or {}).get("locust_cost", {})
        note = f"FastHttpUser at {r['req_per_s']:.0f} req/s against a bare app"
        if in_lab.get("cpu_s_per_1000_req_at_busiest_step") is not None:
            note += (
                f"; in the capacity run {in_lab['cpu_s_per_1000_req_at_busiest_step']:.2f} at "
                f"{in_lab['req_per_s_at_busiest_step']} req/s (fixed cost dominates)"
            )
        add(3, "Locust CPU s per 1,000 requests", "—" if v is None else f"{v:.3f}", "<= 0.25",
            None if v is None else v <= 0.25, note)  # fmt: skip
    elif lc:
        add(3, "Locust CPU s per 1,000 requests", "—", "<= 0.25", None, lc["error"])
    f = results.get("footprint")
    if f and "error" not in f:
        s = f["summary"]
        add(4, f"time from up to all healthy (median of {len(s['healthy_s_all'])})",
            f"{s['healthy_s_median']:.1f} s", "<= 20 s", s["healthy_goal_met"],
            "runs: " + ", ".join(f"{x:.1f}" for x in s["healthy_s_all"]))  # fmt: skip
        add(4, "resident memory, idle / default load", f"{s['idle_rss_mb']:.0f} / "
            f"{s['loaded_rss_mb']:.0f} MB", "<= 800 MB", s["memory_goal_met"])  # fmt: skip
        if s.get("loaded_cores") is not None:
            add(4, "CPU cores of the whole lab, idle / default load",
                f"{s['idle_cores']:.3f} / {s['loaded_cores']:.3f}",
                f"<= {s['goal_loaded_cores']} at default load", s["cpu_goal_met"],
                f"{s['loaded_cores_without_locust']:.3f} without Locust")  # fmt: skip
    elif f:
        add(4, "lab footprint", "—", "", None, f["error"])
    t = results.get("ttd")
    if t and "error" not in t:
        timed = [r for r in t["rows"] if r["bound_s"] is not None]
        within = [r for r in timed if r.get("within_bound")]
        if t["found"]:
            add(5, "time to detect (latest verify runs)", f"{len(within)}/{len(timed)} alerts "
                "within bound", "all within bound", len(within) == len(timed),
                "per drill below")  # fmt: skip
        else:
            add(5, "time to detect", "—", "all within bound", None, t["message"])
    elif t:
        add(5, "time to detect", "—", "", None, t["error"])
    return rows


def _met(m: bool | None) -> str:
    return "—" if m is None else ("yes" if m else "**no**")


def print_summary(rows: list[dict]) -> None:
    print()
    print(f"{'#':>1s} {'figure':52s} {'value':>24s} {'goal':>16s} {'met':>4s}  note")
    for r in rows:
        met = _met(r["met"]).replace("**", "")
        print(
            f"{r['item']:1d} {r['what'][:52]:52s} {r['value']:>24s} {r['goal']:>16s} {met:>4s}"
            f"  {r['note']}"
        )


# ------------------------------------------------------------------------------ doc


def split_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(text before the first `## `, [(heading, body incl. heading line)])."""
    parts = re.split(r"(?m)^(?=## )", text)
    head, sections = parts[0], []
    for part in parts[1:]:
        heading = part.splitlines()[0][3:].strip()
        heading = re.sub(r"\s*\(generated\)$", "", heading)
        sections.append((heading, part.rstrip() + "\n"))
    return head, sections


def _mode(meta: dict) -> str:
    mode = "quick (smoke) mode" if meta["quick"] else "full mode"
    if meta.get("only"):  # a partial run with no earlier run to keep the other figures of
        mode += f", only `{','.join(meta['only'])}` (the other benchmarks were not run)"
    return mode


def render_latest(meta: dict, rows: list[dict]) -> str:
    m = meta["machine"]
    lines = [
        f"## {LATEST} (generated)",
        "",
        f"{meta['when']}, {_mode(meta)}, "
        f"{meta['seconds'] / 60:.1f} min. Machine: {m['nproc']} cores ({m['cpu_model']}), "
        f"{m['memory_gb']} GB memory, Linux {m['kernel']}, Python {m['python']}, "
        f"Locust {m.get('locust', '?')}, Prometheus {m.get('prometheus', '?')}. Load average "
        f"{meta['loadavg_start']} at the start and {meta['loadavg_end']} at the end (1, 5, 15 "
        "min): the machine is shared, other runs compete for the same 2 cores."
        + "".join(
            f" Re-run since with `--only {','.join(r['only'])}`: {r['when']}."
            for r in meta.get("reruns", [])
        ),
        "",
        "| # | figure | value | goal | met | note |",
        "|---|---|---:|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['item']} | {r['what']} | {r['value']} | {r['goal']} | {_met(r['met'])} "
            f"| {r['note']} |"
        )
    return "\n".join(lines) + "\n"


def render_capacity(c: dict | None) -> str:
    lines = [f"## {CAPACITY} (generated)", ""]
    if not c or "error" in c:
        lines.append(f"Not measured in the latest run ({(c or {}).get('error', 'skipped')}).")
        return "\n".join(lines) + "\n"
    cfg = c["config"]
    lines += [
        "`uv run --frozen python -m tests.bench.capacity` (`--quick`: 2 steps × 20 s; "
        "`--profile`: py-spy on the hottest service in the last step). The native lab through "
        "the runner's API on free ports without its steady Locust; Locust headless on the same "
        f"machine ({cfg['locust_processes']} process, `{cfg['user_class']}` from "
        "`tests/bench/capacity_locust.py`: the shopper journey's login and browse once per user, "
        f"then checkouts at {cfg['user_rate']:g} per second per user). Steps "
        f"{cfg['steps']} users × {cfg['step_seconds']:g} s; the first {cfg['settle_seconds']:g} s "
        "of each step are left out. Checkouts/s, p50/p99 and the 5xx ratio come from the lab's "
        'Prometheus (gateway, `route="/api/checkout"`), `>500ms` is the exact share above the '
        "0.5 s bucket edge, errors = max(5xx ratio, Locust's client-side failures); CPU from "
        "psutil (cores used, process trees). A step counts when p99 < 500 ms and errors < 0.1%.",
        "",
        "Cores used per component; *CPU ms/checkout* (lab total) is the steadiest figure on a "
        "shared machine; *others* = cores busy outside the lab and Locust (other engineers' runs).",
        "",
        "| users | checkouts/s | p50 ms | p99 ms | >500 ms | errors | lab CPU | CPU ms/checkout "
        "| gateway | order | payment | notification | auth | Locust CPU | others | load avg | ok |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in c["steps"]:
        cpu = r["cpu_cores"]
        lines.append(
            f"| {r['users']} | {r['checkouts_per_s']:.1f} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{_pct(r['share_over_500ms'])} | {_pct(r['error_ratio'])} | "
            f"{r['cpu_cores_total_lab']:.2f} | {r.get('lab_cpu_ms_per_checkout')} | "
            + " | ".join(
                f"{cpu.get(s, 0):.2f}"
                for s in ("gateway", "order", "payment", "notification", "auth")
            )
            + f" | {r['locust_cpu_cores']} | {r.get('other_cpu_cores', '—')} | {r['loadavg']} | "
            f"{'yes' if r['ok'] else 'no'} |"
        )
    res = c["result"]
    lines.append("")
    if res["max_checkouts_per_s"] is None:
        lines.append("**No step stayed within p99 < 500 ms and errors < 0.1%.**")
    else:
        lines.append(
            f"**Capacity: {res['max_checkouts_per_s']:.1f} checkouts/s** at {res['at_users']} "
            f"users (p99 {res['p99_ms']} ms, errors {_pct(res['error_ratio'])}); goal ≥ 250/s: "
            f"{'met' if res['goal_met'] else '**not met**'}."
        )
    if c["steps"]:
        last = c["steps"][-1]
        lat = last.get("latency_by_route_ms", {})
        if lat:
            lines += [
                "",
                f"Per hop at the last step ({last['users']} users), server-side p50 / p99 ms: "
                + "; ".join(
                    f"{k} {v.get('p50_ms', '—')} / {v.get('p99_ms', '—')}"
                    for k, v in lat.items()
                    if "metrics" not in k
                )
                + ".",
            ]
    cpc = _cpu_per_checkout(c["steps"])
    if cpc:
        lines += [
            "",
            f"At {cpc['at_users']} users ({cpc['which']}) the lab spent **{cpc['lab_cpu_ms']} ms "
            "of CPU per checkout** ("
            + ", ".join(f"{k} {v}" for k, v in cpc["by_service_ms"].items() if v >= 0.5)
            + f"): with every core of this machine for the lab alone, at most "
            f"~{cpc['ceiling_checkouts_per_s_on_all_cores']} checkouts/s.",
        ]
    lc = c["locust_cost"]
    lines += [
        "",
        "**Load generator cost in the lab** (item 3; see also the next section): "
        f"{lc['cpu_s_per_1000_req_at_busiest_step']} CPU "
        f"seconds per 1,000 requests at the busiest step ({lc['req_per_s_at_busiest_step']} "
        f"req/s; goal ≤ {lc['goal']}). At low rates Locust's fixed cost (stats, greenlet "
        "scheduling) dominates the per-request figure; the busiest step is the fair one.",
    ]
    if c.get("profile"):
        lines += ["", f"Profile of {c['profile']['service']}: `{c['profile']['file']}`."]
    return "\n".join(lines) + "\n"


def _cpu_per_checkout(steps: list[dict]) -> dict | None:
    """CPU per checkout at the best step within limits (else the last): the ceiling it implies."""
    ok = [r for r in steps if r.get("ok") and r.get("lab_cpu_ms_per_checkout")]
    pick = max(ok, key=lambda r: r["checkouts_per_s"]) if ok else (steps[-1] if steps else None)
    if not pick or not pick.get("lab_cpu_ms_per_checkout"):
        return None
    return {
        "at_users": pick["users"],
        "which": "the best step within limits" if ok else "the last step",
        "lab_cpu_ms": pick["lab_cpu_ms_per_checkout"],
        "by_service_ms": pick["cpu_ms_per_checkout_by_service"],
        "ceiling_checkouts_per_s_on_all_cores": round(
            (os.cpu_count() or 1) * 1000 / pick["lab_cpu_ms_per_checkout"], 1
        ),
    }


def render_locust_cost(lc: dict | None) -> str:
    lines = [f"## {LOCUST_COST} (generated)", ""]
    if not lc or "error" in lc:
        lines.append(f"Not measured in the latest run ({(lc or {}).get('error', 'skipped')}).")
        return "\n".join(lines) + "\n"
    lines += [
        "`uv run --frozen python -m tests.bench.locust_cost` (`--quick`: one user count, 8 s). "
        "One Locust process pinned to core 1, `FastHttpUser` with no wait and the project's "
        "Prometheus exporter on the request event (`tests/bench/locust_cost_locust.py`), "
        "against the bare FastAPI app pinned to core 0; Locust's CPU (process tree, psutil) over "
        "the window divided by the requests it completed. The capacity run reports the same "
        "figure in the lab, where the rate is low and Locust's fixed cost dominates.",
        "",
        "| users | req/s | Locust cores | CPU s per 1,000 req | load avg |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in lc["rows"]:
        lines.append(
            f"| {r['users']} | {r['req_per_s']:.0f} | {r['locust_cpu_cores']:.2f} | "
            f"{r['cpu_s_per_1000_req']} | {r['loadavg']} |"
        )
    res = lc["result"]
    lines += [
        "",
        f"Best: **{res['cpu_s_per_1000_req']} CPU s per 1,000 requests** at "
        f"{res['req_per_s']:.0f} req/s "
        f"(goal ≤ 0.25: {'met' if res['goal_met'] else '**not met**'}).",
    ]
    return "\n".join(lines) + "\n"


def render_footprint(f: dict | None) -> str:
    lines = [f"## {FOOTPRINT} (generated)", ""]
    if not f or "error" in f:
        lines.append(f"Not measured in the latest run ({(f or {}).get('error', 'skipped')}).")
        return "\n".join(lines) + "\n"
    s, first = f["summary"], f["runs"][0]
    lines += [
        "`uv run --frozen python -m tests.bench.footprint` (`--quick`: 1 run, 15 s of load). "
        "`NativeLab.up()` on OS-chosen ports in a fresh runtime folder, as `make up` does: "
        "services and monitoring first, then the runner's steady Locust; the two calls together "
        "are the time to all healthy. Memory: sum of RSS over every component's process tree "
        f"at idle (no Locust, after {f['config']['idle_seconds']:g} s) and under the default "
        f"load (after {f['config']['load_seconds']:g} s). RSS counts shared pages once per "
        "process, so the total is an upper bound. CPU: the cores each process tree used, idle "
        "over the same idle span after the settle, loaded over the last two thirds of the load "
        "(the first third ramps up).",
        "",
        "| run | services + monitoring s | Locust s | all healthy s | load avg |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in f["runs"]:
        lines.append(
            f"| {r['run']} | {r['services_healthy_s']:.1f} | {r['locust_healthy_s']:.1f} | "
            f"{r['all_healthy_s']:.1f} | {r['loadavg']} |"
        )
    lines += [
        "",
        f"Median time to healthy **{s['healthy_s_median']:.1f} s** (goal ≤ 20 s: "
        f"{'met' if s['healthy_goal_met'] else '**not met**'}).",
        "",
        "| component | idle MB | default load MB | idle cores | default load cores |",
        "|---|---:|---:|---:|---:|",
    ]
    idle_cores = first.get("idle_cores_by_component", {})
    loaded_cores = first.get("loaded_cores_by_component", {})

    def core(by: dict, name: str) -> str:
        return "—" if name not in by else f"{by[name]:.3f}"

    for name, mb in first["loaded_rss_mb_by_component"].items():
        idle = first["idle_rss_mb_by_component"].get(name)
        lines.append(
            f"| {name} | {'—' if idle is None else f'{idle:.0f}'} | {mb:.0f} | "
            f"{core(idle_cores, name)} | {core(loaded_cores, name)} |"
        )
    total_idle = "—" if s.get("idle_cores") is None else f"**{s['idle_cores']:.3f}**"
    total_loaded = "—" if s.get("loaded_cores") is None else f"**{s['loaded_cores']:.3f}**"
    lines.append(
        f"| **total** | **{first['idle_rss_mb']:.0f}** | **{first['loaded_rss_mb']:.0f}** | "
        f"{total_idle} | {total_loaded} |"
    )
    lines += ["", f"Goal ≤ 800 MB: {'met' if s['memory_goal_met'] else '**not met**'}."]
    if s.get("loaded_cores") is not None:
        lines.append(
            f"CPU at the default load: {s['loaded_cores']:.3f} cores "
            f"({s['loaded_cores_without_locust']:.3f} without Locust), goal ≤ "
            f"{s['goal_loaded_cores']}: {'met' if s['cpu_goal_met'] else '**not met**'}."
        )
    return "\n".join(lines) + "\n"


def render_ttd(t: dict | None) -> str:
    lines = [f"## {TTD} (generated)", ""]
    if not t or "error" in t:
        lines.append(f"Not read in the latest run ({(t or {}).get('error', 'skipped')}).")
        return "\n".join(lines) + "\n"
    lines += [
        "`uv run --frozen python -m tests.bench.ttd` reads the latest journal of each drill "
        "under `var/drills/verify-*/` (written by `make verify`): seconds from the fault's start "
        "to the expected alert firing, next to the drill's bound.",
        "",
    ]
    if not t["found"]:
        lines.append(t["message"] + ".")
        return "\n".join(lines) + "\n"
    lines += [
        "| drill | alert | detected after s | bound s | verdict | run |",
        "|---|---|---:|---:|---|---|",
    ]
    for r in t["rows"]:
        det = "not detected" if r["detected_after_s"] is None and r["bound_s"] else (
            "—" if r["detected_after_s"] is None else f"{r['detected_after_s']:.1f}"
        )  # fmt: skip
        bound = "—" if r["bound_s"] is None else f"{r['bound_s']:.0f}"
        alert = (r["alert"] or "(none expected)").replace("|", "\\|")
        lines.append(
            f"| {r['drill']} | `{alert}` | {det} | {bound} | {r['verdict']} | {r['run_id']} |"
        )
    return "\n".join(lines) + "\n"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.2%}"


def write_doc(meta: dict, rows: list[dict], results: dict, doc: Path = DOC) -> None:
    text = doc.read_text(encoding="utf-8") if doc.exists() else INTRO
    _, sections = split_sections(text)
    fresh = {
        LATEST: render_latest(meta, rows),
        CAPACITY: render_capacity(results.get("capacity")) if "capacity" in results else None,
        LOCUST_COST: (
            render_locust_cost(results.get("locust_cost")) if "locust_cost" in results else None
        ),
        FOOTPRINT: render_footprint(results.get("footprint")) if "footprint" in results else None,
        TTD: render_ttd(results.get("ttd")) if "ttd" in results else None,
    }
    out: list[str] = []
    placed = set()
    for heading, body in sections:
        if heading in fresh:
            out.append(fresh[heading] or body)  # a benchmark not run this time keeps its section
            placed.add(heading)
        else:
            out.append(body)
    # New generated sections: the summary first, the others after the hand-written ones.
    if LATEST not in placed:
        out.insert(0, fresh[LATEST])
    for heading in (CAPACITY, LOCUST_COST, FOOTPRINT, TTD):
        if heading not in placed and fresh[heading]:
            out.append(fresh[heading])
    doc.write_text(INTRO + "\n" + "\n".join(out), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="each benchmark's smoke mode (< 3 min)")
    p.add_argument("--only", default=",".join(ORDER), help=f"comma-separated of {ORDER}")
    p.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument(
        "--render-only",
        action="store_true",
        help="run nothing: rewrite docs/benchmarks.md from the last var/bench/bench.json",
    )
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.render_only:
        saved = json.loads(args.out.read_text())
        rows = summary_rows(saved["results"])
        print_summary(rows)
        write_doc(saved, rows, saved["results"])
        print(f"wrote {DOC.relative_to(ROOT)}")
        return 0
    chosen = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in ORDER]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; known: {ORDER}")
    t0 = time.monotonic()
    info = machine()
    start_load = [round(x, 2) for x in os.getloadavg()]
    # A partial run (--only) keeps the other figures of the previous run, so the summary table
    # and bench.json stay whole; `reran` says which figures are new.
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    results: dict = {}
    if set(chosen) != set(ORDER):
        results = {k: v for k, v in previous.get("results", {}).items() if k not in chosen}
    for name in ORDER:
        if name in chosen:
            print(f"\n===== {name}{' (quick)' if args.quick else ''}")
            results[name] = run_one(name, args.quick)
    results = {name: results[name] for name in ORDER if name in results}
    rows = summary_rows(results)
    now = time.strftime("%Y-%m-%d %H:%M %Z")
    meta = {
        "when": now,
        "quick": args.quick,
        "seconds": time.monotonic() - t0,
        "machine": info,
        "loadavg_start": start_load,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    if set(chosen) != set(ORDER) and previous:
        keep = ("when", "quick", "seconds", "machine", "loadavg_start", "loadavg_end", "only")
        meta = {k: previous[k] for k in keep if k in previous} or meta
        meta["reruns"] = [*previous.get("reruns", []), {"when": now, "only": chosen}]
    elif set(chosen) != set(ORDER):
        meta["only"] = [n for n in ORDER if n in chosen]
    print_summary(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({**meta, "summary": rows, "results": results}, indent=2, default=str) + "\n"
    )
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    if not args.no_doc:
        write_doc(meta, rows, results)
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
