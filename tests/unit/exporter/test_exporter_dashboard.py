"""The Grafana dashboard: valid JSON, a Prometheus datasource variable, the panels the exporter is
for, and every PromQL expression referring only to metrics and labels the exporter exposes.

The check is a small PromQL lexer (strings, label matchers, grouping clauses, functions); the
kernel test also runs every expression against a real Prometheus scraping a real exporter.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import exporter
from exporter.metrics import BY_NAME, DEPLOY_ID_LABEL, METRICS, VM_ID_LABEL, label_names

DASHBOARD = Path(exporter.__file__).parent / "grafana-dashboard.json"

# Labels Prometheus itself adds to every scraped series.
TARGET_LABELS = {"instance", "job"}
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "count_over_time", "delta", "deriv", "exp", "floor",
    "histogram_quantile", "idelta", "increase", "irate", "label_join", "label_replace", "ln",
    "max_over_time", "min_over_time", "predict_linear", "rate", "resets", "round", "scalar",
    "sort", "sort_desc", "sqrt", "sum_over_time", "time", "timestamp", "vector",
    "last_over_time", "quantile_over_time",
    # aggregations
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group",
}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset"}
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}

_TOKEN = re.compile(r"""
    (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<range>\[[^\]]*\])
  | (?P<num>\d+(?:\.\d+)?(?:e[+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){},])
  | (?P<ws>\s+)
""", re.VERBOSE)


def tokens(expr: str) -> list[tuple[str, str]]:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        assert m, f"cannot lex {expr[pos:]!r} in {expr!r}"
        pos = m.end()
        if m.lastgroup != "ws":
            out.append((m.lastgroup or "", m.group()))
    return out


def references(expr: str) -> tuple[set[str], list[str]]:
    """(metric names, problems) of one PromQL expression."""
    toks = tokens(expr)
    metrics: set[str] = set()
    problems = []
    known_labels = label_names() | TARGET_LABELS
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind != "ident":
            i += 1
            continue
        if text in GROUPING and nxt == "(":
            j = i + 2
            while toks[j][1] != ")":
                if toks[j][0] == "ident" and toks[j][1] not in known_labels:
                    problems.append(f"unknown label {toks[j][1]!r} in {text}(...)")
                j += 1
            i = j + 1
            continue
        if nxt == "(" or (text in FUNCTIONS and nxt in GROUPING):  # sum by (x) (...)
            if text not in FUNCTIONS:
                problems.append(f"unknown function {text!r}")
            i += 1
            continue
        if text in KEYWORDS:
            i += 1
            continue
        # A metric name, maybe with a selector.
        metrics.add(text)
        m = BY_NAME.get(text)
        if m is None:
            problems.append(f"metric {text!r} is not exposed by the exporter")
        i += 1
        if nxt == "{":
            allowed = TARGET_LABELS | set(m.labels if m else ()) | (
                {VM_ID_LABEL, DEPLOY_ID_LABEL} if m is None or m.per_container else set())
            while toks[i][1] != "}":
                if toks[i][0] == "ident" and toks[i + 1][1] in ("=", "!=", "=~", "!~") \
                        and toks[i][1] not in allowed:
                    problems.append(f"{text} has no label {toks[i][1]!r}")
                i += 1
            i += 1
    return metrics, problems


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def expressions(d: dict) -> list[str]:
    """Every PromQL expression: panel targets and the selectors of the template variables."""
    out = []
    for p in d["panels"]:
        out.extend(t["expr"] for t in p.get("targets", ()))
    for v in d["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q)
        assert m, q
        selector, label = m.groups()
        metric = BY_NAME[selector.split("{")[0]]
        assert label in set(metric.labels) | TARGET_LABELS | {VM_ID_LABEL, DEPLOY_ID_LABEL}
        out.append(selector)
    return out


def test_dashboard_is_valid_json_with_a_prometheus_datasource_variable() -> None:
    d = dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"instance", "one_vm_id"} <= set(variables)
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))


def test_every_expression_references_exposed_metrics_and_labels() -> None:
    exprs = expressions(dashboard())
    assert len(exprs) > 20
    for e in exprs:
        metrics, problems = references(e)
        assert metrics, f"no metric in {e!r}"
        assert not problems, f"{e!r}: {problems}"


def test_panels_cover_cpu_memory_network_io_oom_throttling_per_vm() -> None:
    d = dashboard()
    used: set[str] = set()
    for e in expressions(d):
        used |= references(e)[0]
    for needed in ("container_cpu_usage_seconds_total",
                   "container_cpu_cfs_throttled_periods_total",
                   "container_memory_working_set_bytes", "container_oom_events_total",
                   "container_network_receive_bytes_total",
                   "container_network_transmit_bytes_total",
                   "container_fs_reads_bytes_total", "container_fs_writes_bytes_total"):
        assert "lxcone_" + needed in used
    titles = " ".join(p["title"].lower() for p in d["panels"])
    for word in ("cpu", "memory", "network", "disk", "oom", "throttl"):
        assert word in titles
    # Per-container panels filter on and group by the identity label.
    for p in d["panels"]:
        for t in p.get("targets", ()):
            if "lxcone_container_" in t["expr"] and "by (" in t["expr"]:
                assert 'one_vm_id=~"$one_vm_id"' in t["expr"]
                assert "one_vm_id" in t["expr"].split("by (", 1)[1].split(")")[0]


@pytest.mark.parametrize(("expr", "problem"), [
    ("rate(container_cpu_usage_seconds_total[5m])", "not exposed"),
    ('lxcone_container_tasks{interface="eth0"}', "no label"),
    ("sum by (pod) (lxcone_container_tasks)", "unknown label"),
    ("frobnicate(lxcone_container_tasks)", "unknown function"),
])
def test_the_checker_catches_mistakes(expr: str, problem: str) -> None:
    assert any(problem in p for p in references(expr)[1])


def test_all_metrics_known_to_the_checker() -> None:
    for m in METRICS:
        assert references(m.name) == ({m.name}, [])
