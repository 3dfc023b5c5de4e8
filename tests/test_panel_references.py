"""Panel references in drills and docs must name panels that exist.

Drill debriefs and runbooks name dashboard panels in free text; renaming a panel would silently
break them. Two conventions are used, and both are parsed strictly:

- drills (and quoted examples in docs): ``"Dashboard › Panel"``, e.g. the ``where`` of an
  evidence entry with ``kind: dashboard``. ``Dashboard (value) › ...`` sets the dashboard's
  variable; ``› A and B`` names two panels. A ``›`` anywhere else must be in such a quoted
  reference.
- docs: ``*Dashboard* (qualifier) → **Panel**, **Panel** and **Panel** (comment)``, or
  ``*Dashboard* (var = value)`` alone. In a paragraph with such a reference every bold span must
  belong to a panel list, so a reference the parser does not understand fails instead of
  being skipped.

Every dashboard must exist, every panel (rows and panels in collapsed rows included) must exist
in it, and a ``var = value`` qualifier must name one of the dashboard's variables.
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "grafana" / "dashboards"  # provisioned by grafana/provisioning/dashboards
DRILLS = ROOT / "loadtest" / "drills"
DOCS = ROOT / "docs"
RUNBOOKS = DOCS / "runbooks"

# What the repository holds today, a little below: a parser that silently finds nothing fails.
MIN_REFERENCES = {"drills": 15, "runbooks": 100, "docs": 1}


@dataclass(frozen=True)
class Dashboard:
    title: str
    panels: frozenset[str]
    variables: frozenset[str]


@dataclass(frozen=True)
class Ref:
    where: str  # "path:line"
    dashboard: str
    qualifier: str | None  # "order", "slo = checkout-latency" or None
    panel: str | None  # None: the dashboard alone

    def __str__(self) -> str:
        qualifier = f" ({self.qualifier})" if self.qualifier else ""
        panel = f" › {self.panel}" if self.panel else ""
        return f"{self.where}: {self.dashboard}{qualifier}{panel}"


# ---- dashboards ------------------------------------------------------------------------------


def _panel_titles(panels: list[dict]) -> set[str]:
    titles = set()
    for panel in panels:
        if panel.get("title"):
            titles.add(panel["title"])
        titles |= _panel_titles(panel.get("panels", []))  # panels of a collapsed row
    return titles


def load_dashboards(folder: Path = DASHBOARDS) -> dict[str, Dashboard]:
    out: dict[str, Dashboard] = {}
    for path in sorted(folder.rglob("*.json")):
        doc = json.loads(path.read_text())
        panels = _panel_titles(doc.get("panels", []))
        for row in doc.get("rows", []):  # the pre-v16 schema
            panels |= _panel_titles(row.get("panels", []))
        variables = {v["name"] for v in doc.get("templating", {}).get("list", [])}
        assert doc["title"] not in out, f"{path.name}: duplicate dashboard title {doc['title']!r}"
        out[doc["title"]] = Dashboard(doc["title"], frozenset(panels), frozenset(variables))
    assert out, f"no dashboards under {folder}"
    return out


# ---- references: "Dashboard › Panel" ---------------------------------------------------------

ARROW_REF = re.compile(r"(?P<dashboard>[^›]+?)(?: \((?P<qualifier>[^()]*)\))?(?: › (?P<panel>.+))?")
QUOTED_ARROW_REF = re.compile(r"[\"“](?P<ref>[^\"“”\n]*›[^\"“”\n]*)[\"”]")


def parse_arrow_ref(text: str, where: str) -> Ref | None:
    if text.count("›") > 1:
        return None
    m = ARROW_REF.fullmatch(text.strip())
    if m is None:
        return None
    return Ref(where, m["dashboard"], m["qualifier"], m["panel"])


def _free_text_refs(text: str, where_at) -> tuple[list[Ref], list[str]]:
    """Quoted "Dashboard › Panel" references in free text; a ``›`` outside one is a problem."""
    refs, problems, quoted = [], [], set()
    for m in QUOTED_ARROW_REF.finditer(text):
        quoted |= set(range(m.start(), m.end()))
        ref = parse_arrow_ref(m["ref"], where_at(m.start()))
        if ref is None:
            problems.append(f"{where_at(m.start())}: cannot parse reference {m['ref']!r}")
        else:
            refs.append(ref)
    for m in re.finditer("›", text):
        if m.start() not in quoted:
            line = text[: m.start()].rpartition("\n")[2] + text[m.start() :].partition("\n")[0]
            problems.append(
                f"{where_at(m.start())}: '›' outside a quoted \"Dashboard › Panel\" "
                f"reference: {line.strip()!r}"
            )
    return refs, problems


def _scalars(node: yaml.Node, path: tuple = ()):
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield from _scalars(value, (*path, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _scalars(item, (*path, i))
    elif isinstance(node, yaml.ScalarNode):
        yield path, node


def drill_references(path: Path) -> tuple[list[Ref], list[str]]:
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    scalars = dict(_scalars(yaml.compose(path.read_text())))
    refs, problems = [], []
    for key, node in scalars.items():
        line = node.start_mark.line + 1 + (node.style in ("|", ">"))
        kind = scalars.get((*key[:-1], "kind"))
        if key[-1] == "where" and kind is not None and kind.value == "dashboard":
            ref = parse_arrow_ref(node.value, f"{name}:{line}")
            if ref is None:
                problems.append(f"{name}:{line}: cannot parse dashboard evidence {node.value!r}")
            else:
                refs.append(ref)
            continue

        def where_at(offset: int, node=node, line=line) -> str:
            return f"{name}:{line + node.value[:offset].count(chr(10))}"

        found, bad = _free_text_refs(node.value, where_at)
        refs += found
        problems += bad
    return refs, problems


# ---- references: *Dashboard* → **Panel**, **Panel** ------------------------------------------

_ITALIC = r"(?<![*\w])\*(?P<dashboard>[^*\s][^*\n]*?)\*(?!\*)"
MD_HEAD = re.compile(_ITALIC + r"(?:[ \t]+\((?P<qualifier>[^()\n]*)\))?[ \t]*→[ \t]*(?=\*\*)")
MD_DASHBOARD_ONLY = re.compile(_ITALIC + r"[ \t]+\((?P<qualifier>\w+ = [^()\n]*)\)(?![ \t]*→)")
MD_PANEL = re.compile(r"\*\*(?P<panel>[^*\n]+)\*\*(?:\s*\((?:[^()]|\([^()]*\))*\))?")
MD_SEPARATOR = re.compile(r"\s*,\s*(?:and\s+)?|\s+and\s+")
MD_BOLD = re.compile(r"\*\*[^*\n]+\*\*")


def markdown_references(path: Path) -> tuple[list[Ref], list[str]]:
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    text = path.read_text()

    def where_at(offset: int) -> str:
        return f"{name}:{text.count(chr(10), 0, offset) + 1}"

    refs, problems = _free_text_refs(text, where_at)
    used_bold: set[int] = set()
    for head in MD_HEAD.finditer(text):
        pos = head.end()
        while m := MD_PANEL.match(text, pos):
            used_bold.add(m.start())
            refs.append(Ref(where_at(m.start()), head["dashboard"], head["qualifier"], m["panel"]))
            sep = MD_SEPARATOR.match(text, m.end())
            if sep is None or not MD_PANEL.match(text, sep.end()):
                break
            pos = sep.end()
    for m in MD_DASHBOARD_ONLY.finditer(text):
        refs.append(Ref(where_at(m.start()), m["dashboard"], m["qualifier"], None))

    # A bold span beside a panel reference that no panel list took: a reference the parser
    # does not understand (e.g. "**A**; **B**"), which must not go unchecked.
    offset = 0
    for paragraph in re.split(r"(\n\s*\n)", text):
        if MD_HEAD.search(paragraph):
            for m in MD_BOLD.finditer(paragraph):
                if offset + m.start() not in used_bold:
                    problems.append(
                        f"{where_at(offset + m.start())}: {m[0]} is next to a panel reference "
                        "but not in a panel list (write *Dashboard* → **Panel**, **Panel**)"
                    )
        offset += len(paragraph)
    return refs, problems


# ---- checking --------------------------------------------------------------------------------


def _split_panels(text: str, titles: frozenset[str]) -> list[str] | None:
    """``text`` as one or more panel titles joined by " and ", or None."""
    if text in titles:
        return [text]
    words = text.split(" and ")
    for i in range(1, len(words)):
        head = " and ".join(words[:i])
        if head in titles and (tail := _split_panels(" and ".join(words[i:]), titles)):
            return [head, *tail]
    return None


def _closest(word: str, candidates) -> str:
    close = difflib.get_close_matches(word, sorted(candidates), n=3, cutoff=0.4)
    return ", ".join(repr(c) for c in close) or "none"


def check(refs: list[Ref], dashboards: dict[str, Dashboard]) -> list[str]:
    problems = []
    for ref in refs:
        dashboard = dashboards.get(ref.dashboard)
        if dashboard is None:
            problems.append(
                f"{ref}: no dashboard {ref.dashboard!r}; "
                f"closest: {_closest(ref.dashboard, dashboards)}"
            )
            continue
        if ref.qualifier is not None:
            var = ref.qualifier.partition(" = ")[0] if " = " in ref.qualifier else None
            if var is not None and var not in dashboard.variables:
                problems.append(
                    f"{ref}: dashboard {dashboard.title!r} has no variable {var!r} "
                    f"(it has {sorted(dashboard.variables)})"
                )
            elif var is None and not dashboard.variables:
                problems.append(
                    f"{ref}: ({ref.qualifier}) sets a variable, but dashboard "
                    f"{dashboard.title!r} has none"
                )
        if ref.panel is not None and _split_panels(ref.panel, dashboard.panels) is None:
            problems.append(
                f"{ref}: no panel {ref.panel!r} in dashboard {dashboard.title!r}; "
                f"closest: {_closest(ref.panel, dashboard.panels)}"
            )
    return problems


def collect(source: str) -> tuple[list[Ref], list[str]]:
    if source == "drills":
        paths, parse = sorted(DRILLS.glob("*.yaml")), drill_references
    elif source == "runbooks":
        paths, parse = sorted(RUNBOOKS.glob("*.md")), markdown_references
    else:
        paths = sorted(p for p in DOCS.rglob("*.md") if not p.is_relative_to(RUNBOOKS))
        parse = markdown_references
    assert paths, f"no {source} files"
    refs, problems = [], []
    for path in paths:
        found, bad = parse(path)
        refs += found
        problems += bad
    return refs, problems


# ---- tests -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboards() -> dict[str, Dashboard]:
    return load_dashboards()


@pytest.mark.parametrize("source", sorted(MIN_REFERENCES))
def test_panel_references_resolve(source: str, dashboards: dict[str, Dashboard]) -> None:
    refs, problems = collect(source)
    problems += check(refs, dashboards)
    assert not problems, f"{len(problems)} broken panel reference(s):\n" + "\n".join(problems)
    assert len(refs) >= MIN_REFERENCES[source], (
        f"only {len(refs)} panel references found in {source}: is the parser still matching?"
    )


def test_panels_of_collapsed_rows_are_collected(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text(
        json.dumps(
            {
                "title": "D",
                "panels": [
                    {"type": "stat", "title": "Open"},
                    {"type": "row", "title": "Row", "collapsed": True, "panels": [{"title": "In"}]},
                ],
            }
        )
    )
    assert load_dashboards(tmp_path)["D"].panels == {"Open", "Row", "In"}


def test_renamed_panel_breaks_its_references(tmp_path: Path) -> None:
    copy = tmp_path / "dashboards"
    shutil.copytree(DASHBOARDS, copy)
    overview = copy / "overview.json"
    old, new = '"Latency p99 by service"', '"p99 latency by service"'
    assert old in overview.read_text()
    overview.write_text(overview.read_text().replace(old, new))

    renamed = load_dashboards(copy)
    for source in MIN_REFERENCES:
        problems = check(collect(source)[0], renamed)
        assert problems, f"renaming a panel broke no reference in {source}"
        assert all("'Latency p99 by service'" in p for p in problems), problems
        assert all("closest: 'p99 latency by service'" in p for p in problems), problems


def test_made_up_references_are_reported(tmp_path: Path, dashboards) -> None:
    drill = tmp_path / "drill.yaml"
    drill.write_text(
        "hints:\n"
        "  - {text: '\"SLOs › Objective\", then TriageLab overview › Up.', cost: 10}\n"
        "debrief:\n"
        "  summary: |\n"
        '    Read "TriageLab overview › Latency p99 per service".\n'
        "  evidence:\n"
        '    - {kind: dashboard, where: "TriageLab overview › Latency p99 by servce", what: x}\n'
        '    - {kind: dashboard, where: "Overview › Up", what: x}\n'
        '    - {kind: dashboard, where: "Service detail (order) › DB pool and Pool", what: x}\n'
        '    - {kind: dashboard, where: "SLOs › Up › Up", what: x}\n'
        '    - {kind: dashboard, where: "TriageLab overview (order) › Up", what: x}\n'
        '    - {kind: promql, where: "Prometheus", what: "up"}\n'
    )
    refs, problems = drill_references(drill)
    problems += check(refs, dashboards)
    expected = [
        ":2: '›' outside a quoted",  # the second one: "SLOs › Objective" is fine
        ":5: TriageLab overview › Latency p99 per service: no panel",
        "TriageLab overview › Latency p99 by servce: no panel 'Latency p99 by servce' in "
        "dashboard 'TriageLab overview'; closest: 'Latency p99 by service'",
        "Overview › Up: no dashboard 'Overview'; closest: 'TriageLab overview'",
        "Service detail (order) › DB pool and Pool: no panel",
        "cannot parse dashboard evidence 'SLOs › Up › Up'",
        "(order) sets a variable, but dashboard 'TriageLab overview' has none",
    ]
    for text in expected:
        assert any(text in p for p in problems), f"{text!r} not in {problems}"
    assert len(problems) == len(expected), problems

    runbook = tmp_path / "runbook.md"
    runbook.write_text(
        "## Dashboard panels\n\n"
        "*TriageLab overview* → **Up** (fine) and **Upp**; **Revenue**;\n"
        "*SLOs* (service = x) → **Burn rate per window**; *Service detail* (nope = x).\n\n"
        "Prose with *emphasis* (an aside) and **bold** is left alone.\n"
    )
    refs, problems = markdown_references(runbook)
    problems += check(refs, dashboards)
    expected = [
        ":3: TriageLab overview › Upp: no panel 'Upp'",
        ":3: **Revenue** is next to a panel reference but not in a panel list",
        ":4: SLOs (service = x) › Burn rate per window: dashboard 'SLOs' has no variable 'service'",
        ":4: Service detail (nope = x): dashboard 'Service detail' has no variable 'nope'",
    ]
    for text in expected:
        assert any(text in p for p in problems), f"{text!r} not in {problems}"
    assert len(problems) == len(expected), problems
