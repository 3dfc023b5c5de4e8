"""A drill's journal (JSON) and report (Markdown + one PNG): what happened, when, and why.

The plot puts error ratio, p99 latency, SLO burn rate and the alert intervals on one time axis
with the fault window shaded, which is the picture a debrief needs: the symptom starts with the
fault, the alert follows after its window and ``for:``, and everything returns after the clear.
matplotlib is a dev dependency: without it the report is written without the plot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from labctl.drill_model import Drill


def write_journal(run_dir: Path, journal: dict[str, Any]) -> Path:
    path = run_dir / "journal.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(journal, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _label(metric: dict[str, str], key: str) -> str:
    return metric.get(key) or "all"


def plot(run_dir: Path, journal: dict[str, Any], series: dict[str, list[dict]]) -> Path | None:
    """One PNG, four panels sharing the time axis (seconds since the drill started)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    t0 = journal["started_at"]
    fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=True)
    panels = [
        ("error_ratio", "5xx ratio", "service", axes[0]),
        ("p99", "p99 latency (s)", "service", axes[1]),
        ("burn_rate", "burn rate (5m window)", "slo", axes[2]),
    ]
    for key, title, label, ax in panels:
        for s in series.get(key, []):
            points = [(float(t) - t0, float(v)) for t, v in s["values"] if v not in ("NaN",)]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, label=_label(s["metric"], label), linewidth=1.2)
        ax.set_ylabel(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", ncol=3)
        ax.grid(alpha=0.3)
    axes[2].axhline(14.4, color="red", linestyle="--", linewidth=0.8)
    ax = axes[3]
    alerts = [a for a in journal.get("alerts", []) if not a.get("carried")]
    names: list[str] = []
    for alert in alerts:
        service = alert["labels"].get("service", "")
        name = f"{alert['alert']} {service}".strip()
        if name not in names:
            names.append(name)
        row = names.index(name)
        color = "tab:red" if alert["labels"].get("severity") == "page" else "tab:orange"
        for start, end in alert["intervals"]:
            end = end if end is not None else journal["ended_at"]
            ax.broken_barh([(start - t0, end - start)], (row - 0.4, 0.8), color=color)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_ylim(-1, max(1, len(names)))
    ax.set_xlabel("seconds since the drill started (red: page, orange: ticket)")
    ax.set_title("alerts firing", fontsize=9)
    for a in axes:
        for fault in journal.get("faults", []):
            a.axvspan(fault["at"] - t0, fault["until"] - t0, color="grey", alpha=0.15)
    fig.suptitle(f"{journal.get('drill') or 'blind drill'} — run {journal['run_id']}")
    fig.tight_layout()
    path = run_dir / "report.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _fmt(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.0f}s"


def write_report(
    run_dir: Path, drill: Drill, journal: dict[str, Any], series: dict[str, list[dict]]
) -> Path:
    """Markdown report beside the journal; the debrief is included (the drill is over)."""
    image = plot(run_dir, journal, series)
    t0 = journal["started_at"]
    lines = [
        f"# Drill report: {drill.title} (`{drill.id}`)",
        "",
        f"Run `{journal['run_id']}` — verdict **{journal['verdict']}**; time to detect (first "
        f"page after the fault): {_fmt(journal.get('time_to_detect'))}.",
        "",
        "## Briefing",
        "",
        drill.briefing.strip(),
        "",
        "## Timeline",
        "",
        "| t | what |",
        "|---|---|",
    ]
    for ev in journal.get("events", []):
        detail = {k: v for k, v in ev.items() if k not in ("t", "event")}
        lines.append(f"| {ev['t'] - t0:.0f}s | {ev['event']} {json.dumps(detail, default=str)} |")
    lines += ["", "## Expected alerts", "", "| alert | bound | fired after | ok |"]
    lines.append("|---|---|---|---|")
    for row in journal.get("expected", []):
        name = row["alert"] + (f" {row['labels']}" if row["labels"] else "")
        lines.append(
            f"| {name} | {row['within']:.0f}s | {_fmt(row['detected_after'])} | "
            f"{'yes' if row['ok'] else 'NO'} |"
        )
    if not journal.get("expected"):
        lines.append("| (none expected) | | | |")
    lines += ["", "## Alerts that fired", "", "| alert | labels | fired at | carried |"]
    lines.append("|---|---|---|---|")
    for alert in journal.get("alerts", []):
        keep = {k: v for k, v in alert["labels"].items() if k in ("service", "severity", "slo")}
        fired = alert["fired_at"]
        lines.append(
            f"| {alert['alert']} | {keep} | {_fmt(None if fired is None else fired - t0)} | "
            f"{'yes' if alert['carried'] else ''} |"
        )
    if not journal.get("alerts"):
        lines.append("| (none) | | | |")
    data = journal.get("data_check", {})
    lines += ["", "## Data check", "", f"ok: **{data.get('ok')}**"]
    lines += [f"- {p}" for p in data.get("problems", [])]
    lines += [f"- {k}: {v}" for k, v in data.items() if k not in ("ok", "problems")]
    if journal.get("failures"):
        lines += ["", "## Failures", ""] + [f"- {f}" for f in journal["failures"]]
    if journal.get("score"):
        s = journal["score"]
        lines += [
            "",
            "## Score",
            "",
            f"**{s['total']}/100** — service {'right' if s['service_right'] else 'wrong'}, kind "
            f"{'right' if s['kind_right'] else 'wrong'}, answered after "
            f"{_fmt(s['time_to_answer'])}, {s['hints_used']} hint(s), "
            f"{s['wrong_guesses']} wrong guess(es). Breakdown: {s['breakdown']}",
        ]
    lines += [
        "",
        "## Debrief",
        "",
        f"Cause: **{drill.answer.kind}** on **{drill.answer.service}**.",
        "",
        drill.debrief.summary.strip(),
        "",
    ]
    lines += [f"- *{e.kind}* — {e.where}: {e.what}" for e in drill.debrief.evidence]
    if image:
        lines += ["", f"![error ratio, p99, burn rate, alerts]({image.name})"]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
