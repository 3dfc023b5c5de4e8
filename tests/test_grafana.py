"""Grafana provisioning and dashboards, checked as files (no Grafana binary here).

Data sources must exist under the uids that panels and correlations name; dashboards must be
valid, unique and point at real data sources; the links between signals (exemplar -> trace,
log line -> trace, trace -> logs and metrics) must name data sources that exist and match what
the services really emit.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from labctl.config import loaded_rule_files

ROOT = Path(__file__).resolve().parent.parent
PROVISIONING = ROOT / "grafana" / "provisioning"
DASHBOARDS = ROOT / "grafana" / "dashboards"
BUILTIN_UIDS = {"-- Grafana --", "-- Mixed --", "-- Dashboard --", "grafana"}


@pytest.fixture(scope="module")
def datasources() -> dict[str, dict]:
    found: dict[str, dict] = {}
    for path in sorted((PROVISIONING / "datasources").glob("*.y*ml")):
        doc = yaml.safe_load(path.read_text())
        assert doc["apiVersion"] == 1, path
        for ds in doc["datasources"]:
            assert ds.get("uid"), f"{path.name}: {ds['name']} has no fixed uid"
            assert ds["uid"] not in found, f"duplicate data source uid {ds['uid']}"
            found[ds["uid"]] = ds
    return found


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict]:
    out = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        out[path.name] = json.loads(path.read_text())
    assert out, "no dashboards"
    return out


def all_panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def ds_uid(ref) -> str | None:
    if ref is None or isinstance(ref, str):
        return ref
    return ref.get("uid")


def test_the_four_data_sources_have_fixed_uids_and_types(datasources):
    types = {uid: ds["type"] for uid, ds in datasources.items()}
    assert types == {
        "prometheus": "prometheus",
        "loki": "loki",
        "jaeger": "jaeger",
        "alertmanager": "alertmanager",
    }
    urls = {uid: ds["url"] for uid, ds in datasources.items()}
    assert urls["prometheus"] == "http://prometheus:9090"
    assert urls["loki"] == "http://loki:3100"
    assert urls["jaeger"] == "http://jaeger:16686"
    assert urls["alertmanager"] == "http://alertmanager:9093"
    assert datasources["alertmanager"]["jsonData"]["implementation"] == "prometheus"
    assert [uid for uid, ds in datasources.items() if ds.get("isDefault")] == ["prometheus"]


def test_data_source_urls_name_compose_services_on_their_ports():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for path in (PROVISIONING / "datasources").glob("*.y*ml"):
        for ds in yaml.safe_load(path.read_text())["datasources"]:
            host = re.fullmatch(r"http://([\w-]+):\d+", ds["url"])[1]
            assert host in compose, ds["url"]


def correlations(datasources) -> Iterator[tuple[str, str, str]]:
    """(from uid, what, to uid) for every link between data sources."""
    for uid, ds in datasources.items():
        data = ds.get("jsonData", {})
        for dest in data.get("exemplarTraceIdDestinations", []):
            yield uid, "exemplar", dest["datasourceUid"]
        for field in data.get("derivedFields", []):
            yield uid, "derived field", field["datasourceUid"]
        for key in ("tracesToLogsV2", "tracesToMetrics", "serviceMap", "lokiSearch"):
            if key in data:
                yield uid, key, data[key]["datasourceUid"]
        if "alertmanagerUid" in data:
            yield uid, "alertmanagerUid", data["alertmanagerUid"]


def test_every_correlation_names_an_existing_data_source(datasources):
    links = list(correlations(datasources))
    assert {(a, b) for a, _, b in links} >= {
        ("prometheus", "jaeger"),  # exemplar -> trace
        ("loki", "jaeger"),  # log line -> trace
        ("jaeger", "loki"),  # trace -> logs
        ("jaeger", "prometheus"),  # trace -> metrics
    }
    for source, what, target in links:
        assert target in datasources, f"{source} {what} -> {target}: no such data source"


def test_exemplars_link_by_the_label_the_services_put_on_them(datasources):
    (dest,) = datasources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert dest["name"] == "trace_id"  # docs/telemetry.md: exemplars carry trace_id
    kit = "\n".join(p.read_text() for p in (ROOT / "services" / "kit").glob("*.py"))
    assert re.search(r"exemplar\s*=\s*\{\"trace_id\"", kit), "exemplars lost their trace_id"


def _jaeger_trace_response(resource: dict, span: dict) -> dict:
    """A Jaeger v2 `GET /api/traces/{id}` answer for one span, by Jaeger's own translation
    (jaeger's OTLP -> model translator: `service.name` becomes `processes[*].serviceName` and is
    dropped from the tags; every other resource attribute becomes a process tag; span attributes
    become span tags). Written from Jaeger's source, not recorded from a server."""
    process_tags = [
        {"key": k, "type": "string", "value": str(v)}
        for k, v in resource.items()
        if k != "service.name"
    ]
    return {
        "data": [
            {
                "traceID": span["trace_id"],
                "spans": [
                    {
                        "traceID": span["trace_id"],
                        "spanID": span["span_id"],
                        "operationName": span["name"],
                        "references": [],
                        "startTime": 1,
                        "duration": 1,
                        "tags": [
                            {"key": k, "type": "string", "value": str(v)}
                            for k, v in span["attributes"].items()
                        ],
                        "logs": [],
                        "processID": "p1",
                    }
                ],
                "processes": {
                    "p1": {"serviceName": resource["service.name"], "tags": process_tags}
                },
            }
        ]
    }


def _grafana_tags(span: dict, process: dict, mapping: list[dict]) -> list[str]:
    """Grafana's trace-to-logs/metrics tag rule (createSpanLink.tsx): the span's and its
    process's tags whose key is configured, as `<mapped name>="<value>"`; service.name is not
    among them for Jaeger, which answers it as process.serviceName."""
    names = {m["key"]: m.get("value") or m["key"] for m in mapping}
    tags = [*process["tags"], *span["tags"]]
    return [f'{names[t["key"]]}="{t["value"]}"' for t in tags if t["key"] in names]


def test_trace_links_find_the_service_in_what_jaeger_really_returns(datasources, tmp_path):
    from services.kit import Settings
    from services.kit.tracing import build_tracer_provider

    provider = build_tracer_provider(Settings(data_dir=tmp_path).for_service("gateway"))
    with provider.get_tracer("t").start_as_current_span("GET /api/products") as live:
        ctx = live.get_span_context()
        live.set_attribute("http.route", "/api/products")
    span = {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x"),
            "name": "GET /api/products", "attributes": dict(live.attributes)}  # fmt: skip
    trace = _jaeger_trace_response(dict(provider.resource.attributes), span)["data"][0]
    jspan, process = trace["spans"][0], trace["processes"]["p1"]
    assert process["serviceName"] == "gateway"
    assert all(t["key"] != "service.name" for t in process["tags"])  # the old mapping's gap

    t2l = datasources["jaeger"]["jsonData"]["tracesToLogsV2"]
    tags = _grafana_tags(jspan, process, t2l["tags"])
    assert tags == ['service="gateway"']  # the Loki label Alloy sets
    logql = (
        "{" + ", ".join(tags) + "}" + (f' |="{trace["traceID"]}"' if t2l["filterByTraceID"] else "")
    )
    assert logql == f'{{service="gateway"}} |="{span["trace_id"]}"'
    alloy = (ROOT / "deploy" / "alloy" / "config.alloy").read_text()
    assert re.search(r'target_label\s*=\s*"service"', alloy), "Alloy must set the service label"

    # Trace -> metrics: $__tags becomes the same matchers; every query must parse with them
    # and without them (a span whose process lacks the tag).
    t2m = datasources["jaeger"]["jsonData"]["tracesToMetrics"]
    metric_tags = ", ".join(_grafana_tags(jspan, process, t2m["tags"]))
    assert metric_tags == 'service="gateway"'
    queries = [q["query"].replace("$$", "$") for q in t2m["queries"]]
    assert queries and all("$__tags" in q for q in queries)
    rules = [
        {"record": f"link:check:{i}", "expr": q.replace("$__tags", value)}
        for i, q in enumerate(queries)
        for value in (metric_tags, "")
    ]
    path = tmp_path / "links.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "links", "rules": rules}]}))
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian prometheus) is needed: make system-deps"
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_derived_field_finds_the_trace_id_in_a_real_service_log_line(datasources, capfd):
    """Log one line through the kit's logging inside a span, then apply Grafana's regex."""
    from opentelemetry.sdk.trace import TracerProvider

    from services.kit.logs import configure_logging, get_logger

    configure_logging("gateway")
    tracer = TracerProvider().get_tracer("test")
    capfd.readouterr()
    with tracer.start_as_current_span("checkout") as span:
        get_logger().info("checkout_done", order_id="o-1")
        trace_id = format(span.get_span_context().trace_id, "032x")
    line = next(ln for ln in capfd.readouterr().out.splitlines() if "checkout_done" in ln)
    record = json.loads(line)
    for key in ("service", "level", "trace_id"):  # what Alloy's stage.json extracts
        assert key in record, key
    (field,) = datasources["loki"]["jsonData"]["derivedFields"]
    # Grafana stores `$$` for a literal `$`; the regex itself has none.
    match = re.search(field["matcherRegex"], line)
    assert match and match.group(1) == trace_id
    assert field["url"] == "$${__value.raw}"


def test_dashboard_provider_matches_the_compose_mount():
    (provider_file,) = (PROVISIONING / "dashboards").glob("*.y*ml")
    (provider,) = yaml.safe_load(provider_file.read_text())["providers"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]
    mounts = dict(v.split(":")[1::-1][:2] for v in compose["volumes"])
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    home = compose["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (DASHBOARDS / Path(home).name).is_file()


def test_dashboards_are_valid_and_uniquely_identified(dashboards):
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids), uids
    titles = [d["title"] for d in dashboards.values()]
    assert len(set(titles)) == len(titles), titles
    for name, dash in dashboards.items():
        assert "id" not in dash or dash["id"] is None, f"{name}: drop the instance-specific id"
        ids = [p["id"] for p in all_panels(dash)]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"
        for panel in all_panels(dash):
            pos = panel["gridPos"]
            assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, f"{name}: {panel['title']}"


def test_the_four_dashboards_exist(dashboards):
    assert {d["uid"] for d in dashboards.values()} >= {
        "triagelab-overview",
        "triagelab-service",
        "triagelab-slos",
        "triagelab-load",
    }


def test_every_panel_and_query_uses_a_provisioned_data_source(dashboards, datasources):
    known = set(datasources) | BUILTIN_UIDS
    for name, dash in dashboards.items():
        for panel in all_panels(dash):
            if panel["type"] in {"row", "text"}:
                continue
            uid = ds_uid(panel.get("datasource"))
            assert uid in known, f"{name} / {panel['title']}: data source {uid!r}"
            for target in panel.get("targets", []):
                t_uid = ds_uid(target.get("datasource")) or uid
                assert t_uid in known, f"{name} / {panel['title']}: data source {t_uid!r}"
                kind = datasources[t_uid]["type"] if t_uid in datasources else None
                if kind in {"prometheus", "loki"}:
                    assert target.get("expr"), f"{name} / {panel['title']}: empty query"
        for var in dash.get("templating", {}).get("list", []):
            if "datasource" in var:
                assert ds_uid(var["datasource"]) in known, f"{name} / ${var['name']}"
        for ann in dash.get("annotations", {}).get("list", []):
            assert ds_uid(ann.get("datasource")) in known, f"{name} / {ann['name']}"


def test_latency_panels_show_exemplars(dashboards):
    seen = 0
    for name, dash in dashboards.items():
        for panel in all_panels(dash):
            if panel["type"] not in {"timeseries", "heatmap"}:
                continue
            for target in panel.get("targets", []):
                expr = target.get("expr", "")
                if re.search(r"http_(client_)?request_duration_seconds_bucket", expr):
                    seen += 1
                    assert target.get("exemplar") is True, f"{name} / {panel['title']}"
    assert seen >= 5


def test_dashboard_links_point_at_dashboards_that_exist(dashboards):
    uids = {d["uid"] for d in dashboards.values()}
    text = json.dumps(list(dashboards.values()))
    linked = set(re.findall(r"/d/([\w-]+)", text))
    assert linked, "the overview should link to the service detail dashboard"
    assert linked <= uids, linked - uids


def test_queries_use_only_the_label_names_alloy_gives_loki(dashboards):
    alloy = (ROOT / "deploy" / "alloy" / "config.alloy").read_text()
    labels = set(re.findall(r'target_label\s*=\s*"(\w+)"', alloy)) | {"platform"}
    block = re.search(r"stage\.labels \{\s*values = \{(.*?)\}", alloy, re.S)[1]
    labels |= set(re.findall(r"(\w+)\s*=", block))
    for name, dash in dashboards.items():
        for panel in all_panels(dash):
            for target in panel.get("targets", []):
                if ds_uid(target.get("datasource")) != "loki":
                    continue
                selector = re.search(r"\{([^}]*)\}", target["expr"])[1]
                used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
                assert used <= labels, f"{name} / {panel['title']}: {used - labels}"


def test_dashboards_query_only_metrics_of_the_telemetry_contract(dashboards):
    """A renamed metric breaks panels silently; docs/telemetry.md is the contract."""
    contract = (ROOT / "docs" / "telemetry.md").read_text()
    rules = "\n".join(p.read_text() for p in loaded_rule_files())
    recorded = set(re.findall(r"record:\s*(\S+)", rules))
    known_extra = {"up", "ALERTS"}
    suffix = re.compile(r"_(bucket|count|sum)$")
    for name, dash in dashboards.items():
        for panel in all_panels(dash):
            for target in panel.get("targets", []):
                if ds_uid(target.get("datasource")) != "prometheus":
                    continue
                expr = re.sub(r'"[^"]*"', '""', target["expr"])  # drop label values
                metrics = set(re.findall(r"([a-zA-Z_:][\w:]*)\s*(?:\{|\[)", expr))
                for metric in metrics:
                    if metric in known_extra or metric in recorded:
                        continue
                    base = suffix.sub("", metric)
                    assert base in contract or metric in contract, (
                        f"{name} / {panel['title']}: {metric} is not in docs/telemetry.md"
                    )
