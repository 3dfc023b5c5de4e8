"""SLO rules from one spec: ``spec`` (slos.yaml parsed and checked), ``rules`` (Prometheus
recording and alerting rules per profile), ``promtool`` (generated burn-rate tests with measured
times), ``commands`` (``labctl slo ...``)."""

from labctl.slo.promtool import TTP_FAULTS, Measured, generate_tests, ttp_table
from labctl.slo.rules import (
    build_rules,
    drifted,
    error_ratio_expr,
    le_matcher,
    loading_problems,
    render_all,
)
from labctl.slo.spec import (
    SEVERITIES,
    SLO,
    SPEC_PATH,
    Profile,
    Spec,
    SpecError,
    load_spec,
    parse_duration,
)

__all__ = [
    "SEVERITIES",
    "SLO",
    "SPEC_PATH",
    "TTP_FAULTS",
    "Measured",
    "Profile",
    "Spec",
    "SpecError",
    "build_rules",
    "drifted",
    "error_ratio_expr",
    "generate_tests",
    "le_matcher",
    "load_spec",
    "loading_problems",
    "parse_duration",
    "render_all",
    "ttp_table",
]  # fmt: skip
