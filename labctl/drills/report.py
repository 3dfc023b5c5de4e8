"""A drill's report (Markdown from templates/report.md.j2, plus one PNG): what happened, when, why.

The plot puts error ratio, p99 latency, SLO burn rate and the alert intervals on one time axis
with the fault window shaded, which is the picture a debrief needs: the symptom starts with the
fault, the alert follows after its window and ``for:``, and everything returns after the clear.
matplotlib is a dev dependency: without it the report is written without the plot.
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2

from labctl import tables
from labctl.drills.journal import Journal
from labctl.drills.model import Drill
from labctl.drills.native_steps import command_line, window_of


def _label(metric: dict[str, str], key: str) -> str:
    return metric.get(key) or "all"


def plot(run_dir: Path, journal: Journal, series: dict[str, list[dict]]) -> Path | None:
    """One PNG, four panels sharing the time axis (seconds since the drill started)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    t0 = journal.started_at
    fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=True)
    panels = [  # key, title, label, axis, the least top of the y axis
        ("error_ratio", "5xx ratio", "service", axes[0], 0.05),
        ("p99", "p99 latency (s)\ninterpolated in its bucket", "service", axes[1], 0.1),
        ("burn_rate", "burn rate (5m window)", "slo", axes[2], 16.0),
    ]
    for key, title, label, ax, least_top in panels:
        peak = 0.0
        for s in series.get(key, []):
            points = [(float(t) - t0, float(v)) for t, v in s["values"] if v not in ("NaN",)]
            if points:
                xs, ys = zip(*points, strict=True)
                peak = max(peak, *ys)
                ax.plot(xs, ys, label=_label(s["metric"], label), linewidth=1.2)
        # From zero, and never a scale that turns a flat zero line into noise (-0.04…0.04).
        ax.set_ylim(0, max(least_top, peak * 1.1))
        ax.set_ylabel(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", ncol=3)
        ax.grid(alpha=0.3)
    axes[2].axhline(14.4, color="red", linestyle="--", linewidth=0.8)
    ax = axes[3]
    alerts = [a for a in journal.alerts if not a.carried]
    names: list[str] = []
    for alert in alerts:
        service = alert.labels.get("service", "")
        name = f"{alert.alert} {service}".strip()
        if name not in names:
            names.append(name)
        row = names.index(name)
        color = "tab:red" if alert.labels.get("severity") == "page" else "tab:orange"
        for start, end in alert.intervals:
            end = end if end is not None else journal.ended_at
            ax.broken_barh([(start - t0, end - start)], (row - 0.4, 0.8), color=color)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_ylim(-1, max(1, len(names)))
    ax.set_xlabel("seconds since the drill started (red: page, orange: ticket)")
    ax.set_title("alerts firing", fontsize=9)
    for a in axes:
        for fault in journal.faults:
            a.axvspan(fault.at - t0, fault.until - t0, color="grey", alpha=0.15)
    fig.suptitle(f"{journal.drill or 'blind drill'} — run {journal.run_id}")
    fig.tight_layout()
    path = run_dir / "report.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _secs(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.0f}s"


_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("labctl.drills", "templates"),
    undefined=jinja2.StrictUndefined,  # a field renamed in the journal fails, not renders ""
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,  # Markdown, not HTML
)
_TEMPLATES.filters["secs"] = _secs


def native_table(drill: Drill, journal: Journal) -> str:
    """The debrief's native steps for this run's window, with what each found when checked."""
    window = window_of(drill, journal.started_at, journal.load_ended_at)
    checked = {r.command: r for r in journal.native}
    rows = []
    for step in drill.debrief.native:
        command = command_line(step, window)
        result = checked.get(command)
        found = "(not checked: blind run)" if result is None else result.found
        mark = "" if result is None else ("yes" if result.ok else "NO")
        rows.append((step.pillar, f"`{command}`", step.finds, found, mark))
    return tables.markdown(("pillar", "run", "shows", "found in this run", "ok"), rows)


def write_report(
    run_dir: Path, drill: Drill, journal: Journal, series: dict[str, list[dict]]
) -> Path:
    """Markdown report beside the journal; the debrief is included (the drill is over)."""
    image = plot(run_dir, journal, series)
    t0 = journal.started_at
    timeline = tables.markdown(
        ("t", "what"),
        (
            (f"{ev['t'] - t0:.0f}s", f"{ev['event']} " + json.dumps(
                {k: v for k, v in ev.items() if k not in ("t", "event")}, default=str
            ))
            for ev in journal.events
        ),
    )  # fmt: skip
    expected = tables.markdown(
        ("alert", "bound", "fired after", "ok"),
        [
            (e.alert + (f" {e.labels}" if e.labels else ""), f"{e.within:.0f}s",
             _secs(e.detected_after), "yes" if e.ok else "NO")
            for e in journal.expected
        ]
        or [("(none expected)", "", "", "")],
    )  # fmt: skip
    fired = tables.markdown(
        ("alert", "labels", "fired at", "carried"),
        [
            (a.alert, {k: v for k, v in a.labels.items() if k in ("service", "severity", "slo")},
             _secs(None if a.fired_at is None else a.fired_at - t0), "yes" if a.carried else "")
            for a in journal.alerts
        ]
        or [("(none)", "", "", "")],
    )  # fmt: skip
    text = _TEMPLATES.get_template("report.md.j2").render(
        drill=drill, j=journal, timeline=timeline, expected=expected, fired=fired,
        native=native_table(drill, journal), image=image.name if image else None,
    )  # fmt: skip
    path = run_dir / "report.md"
    path.write_text(text, encoding="utf-8")
    return path
