"""The metric names the dashboard and the alert rules use, and where each one comes from.

Static checks (infra/deploy/check runs `python metric_names.py`):
- the dashboard JSON parses, its panels have unique ids, sit on the 24-column grid without overlapping, and take
  their data source from the `datasource` variable;
- every PromQL expression of the dashboard (Grafana's `$__rate_interval`, `$instance`... substituted) and of the
  rules parses with Prometheus's parser;
- every name used is a metric the job registers (pipeline/src: `counter!`/`gauge!`/`histogram!`, a histogram also
  as `_bucket`/`_sum`/`_count`), batch-verify's `recon_verify_*`, or Prometheus's own `up` (names of a feature
  whose code is not in the tree yet, OUTPUT_METRICS and `recon_verify_*`, only warn);
- every metric the job registers is on the dashboard (a new metric must get a panel);
- every alert of the rules has a promtool test in which it fires;
- FLEET_WORKER_METRICS / FLEET_COMMITTER_METRICS below name exactly the recon_worker_* / recon_committer_* metrics
  that pipeline/src/telemetry.rs registers (a new one must be added there, a removed one taken out).
live_job.py checks the same names against the real `/metrics` of a running job: the single-process job's for the
job metrics, and a fleet's worker and committer processes for the fleet metrics (which a single-process job never
exports).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import promql_parser
import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "infra" / "grafana" / "dashboards" / "recon-pipeline.json"
RULES = REPO / "infra" / "prometheus" / "recon-alerts.yml"
RULE_TESTS = REPO / "infra" / "prometheus" / "tests" / "recon-alerts.test.yml"
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
# Names that do not come from recon-pipeline, and from where they come.
PROMETHEUS_NAMES = {"up"}
VERIFY_PREFIX = "recon_verify_"
# Metrics of the optional exactly-once outputs (issue #9: [alerts], [current_balances], off by default), registered
# in pipeline/src/job/outputs.rs. A job without those outputs enabled never exports them, so the live check does
# not wait for them; where that file is absent (a tree from before #9) their names only warn.
OUTPUT_METRICS = {
    "recon_alerts_raised_total",
    "recon_alerts_transactions_total",
    "recon_alerts_produced_total",
    "recon_output_checkpoint",
    "recon_current_balances_transactions_total",
    "recon_current_balances_rows_total",
}
OUTPUTS_SOURCE = REPO / "pipeline" / "src" / "job" / "outputs.rs"
# Metrics of `recon-pipeline maintain` (a separate command): `run` never exports them, so the live check does not
# wait for them either.
OUTPUT_METRICS |= {
    "recon_maintain_snapshots_expired_total",
    "recon_maintain_files_deleted_total",
    "recon_maintain_deleted_bytes_total",
    "recon_maintain_failures_total",
}
# Metrics of a fleet ([fleet] tasks = K), registered in pipeline/src/telemetry.rs: a single-process job never
# exports them, so live_job.py checks them against a live fleet instead (a worker and a committer process). A
# worker also exports the job's per-checkpoint metrics (those of the tasks it runs); a committer, besides its own,
# recon_seconds_since_last_commit (FLEET_COMMITTER_JOB_METRICS).
FLEET_SOURCE = REPO / "pipeline" / "src" / "telemetry.rs"
FLEET_WORKER_METRICS = {
    "recon_worker_tasks",
    "recon_worker_rebalances_total",
    "recon_worker_task_moves_total",
    "recon_worker_task_handover_seconds",
}
FLEET_COMMITTER_METRICS = {
    "recon_committer_commit_duration_seconds",
    "recon_committer_last_sequence",
    "recon_committer_task_lag_checkpoints",
}
FLEET_METRICS = FLEET_WORKER_METRICS | FLEET_COMMITTER_METRICS
FLEET_WORKER_JOB_METRICS = {
    "recon_last_checkpoint_id",
    "recon_last_checkpoint_timestamp_seconds",
    "recon_checkpoint_duration_seconds",
    "recon_records_total",
    "recon_stopped",
}
FLEET_COMMITTER_JOB_METRICS = {"recon_seconds_since_last_commit", "recon_stopped"}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$instance": ".*"}


def grafana_to_promql(expr: str) -> str:
    for var, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    return expr


def names_in(expr: str) -> set[str]:
    """Metric names of every selector in `expr`; raises ValueError if it does not parse or has a nameless selector."""
    found: set[str] = set()
    nameless: list[str] = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                found.add(node.name)
            else:
                nameless.append(str(node))
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    if nameless:
        raise ValueError(f"selector without a metric name: {nameless}")
    return found


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs(d: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target, annotation and query variable."""
    out = []
    for p in d.get("panels", []):
        for t in p.get("targets", []):
            out.append((f"panel {p.get('id')} {p.get('title')!r} {t.get('refId')}", grafana_to_promql(t["expr"])))
    for a in d.get("annotations", {}).get("list", []):
        if "expr" in a:
            out.append((f"annotation {a.get('name')!r}", grafana_to_promql(a["expr"])))
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", v["definition"])
            if m:
                out.append((f"variable {v['name']}", m.group(1)))
    return out


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def source_metrics() -> dict[str, str]:
    """Metric name -> kind (counter, gauge, histogram) as registered in pipeline/src."""
    found = {}
    for path in sorted((REPO / "pipeline" / "src").rglob("*.rs")):
        for kind, name in re.findall(r"\b(counter|gauge|histogram)!\(\s*\"([a-z_:][a-z0-9_:]*)\"", path.read_text()):
            found[name] = kind
    return found


def verify_source_names() -> set[str] | None:
    """recon_verify_* names in batch-verify's sources, or None when batch-verify exports none yet."""
    text = "".join(p.read_text() for p in (REPO / "batch-verify" / "src").rglob("*.rs"))
    names = set(re.findall(r"\b(recon_verify_[a-z0-9_]+)", text))
    return names or None


def job_series(registered: dict[str, str]) -> set[str]:
    """Series names the job's /metrics can show, given the registered metrics."""
    out = set()
    for name, kind in registered.items():
        out |= {name + s for s in HISTOGRAM_SERIES} if kind == "histogram" else {name}
    return out


def strip_series_suffix(name: str, registered: dict[str, str]) -> str:
    for s in HISTOGRAM_SERIES:
        if name.endswith(s) and registered.get(name[: -len(s)]) == "histogram":
            return name[: -len(s)]
    return name


def used_names(problems: list[str]) -> tuple[set[str], set[str]]:
    """(names the dashboard uses, names the rules use); unparsable expressions go to `problems`."""
    dash, rule = set(), set()
    for where, expr in dashboard_exprs(dashboard()):
        try:
            dash |= names_in(expr)
        except ValueError as e:  # promql_parser raises ValueError too
            problems.append(f"{DASHBOARD.name} {where}: {e}: {expr}")
    for r in rules():
        try:
            rule |= names_in(r["expr"])
        except ValueError as e:
            problems.append(f"{RULES.name} {r.get('alert')}: {e}: {r['expr']}")
    return dash, rule


def check_dashboard_layout(d: dict, problems: list[str]) -> None:
    ids, boxes = set(), []
    for p in d.get("panels", []):
        where = f"{DASHBOARD.name} panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            problems.append(f"{where}: duplicate id")
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if not all(k in g for k in ("x", "y", "w", "h")) or g["x"] + g["w"] > 24:
            problems.append(f"{where}: gridPos {g} is not within the 24-column grid")
            continue
        for other_where, o in boxes:
            if (
                g["x"] < o["x"] + o["w"]
                and o["x"] < g["x"] + g["w"]
                and g["y"] < o["y"] + o["h"]
                and o["y"] < g["y"] + g["h"]
            ):
                problems.append(f"{where}: overlaps {other_where}")
        boxes.append((where, g))
        if p.get("type") == "row":
            continue
        refs = [t.get("refId") for t in p.get("targets", [])]
        if not refs or len(set(refs)) != len(refs):
            problems.append(f"{where}: needs targets with distinct refIds")
        if p.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{where}: datasource must be the ${{datasource}} variable")
        if not p.get("description"):
            problems.append(f"{where}: no description (say what the panel means and which alert goes with it)")
    if "datasource" not in {v.get("name") for v in d.get("templating", {}).get("list", [])}:
        problems.append(f"{DASHBOARD.name}: no `datasource` variable")


def check_fleet_names(registered: dict[str, str], problems: list[str]) -> None:
    """FLEET_*_METRICS are exactly the recon_worker_* / recon_committer_* metrics telemetry.rs registers."""
    text = FLEET_SOURCE.read_text()
    in_telemetry = set(
        re.findall(r"\b(?:counter|gauge|histogram)!\(\s*\"((?:recon_worker|recon_committer)_[a-z0-9_]+)\"", text)
    )
    anywhere = {n for n in registered if n.startswith(("recon_worker_", "recon_committer_"))}
    for name in sorted(FLEET_METRICS - in_telemetry):
        problems.append(
            f"metric_names.py FLEET_*_METRICS lists {name}, which {FLEET_SOURCE.relative_to(REPO)} does not register"
        )
    for name in sorted(anywhere - FLEET_METRICS):
        problems.append(
            f"pipeline/src registers the fleet metric {name}: add it to FLEET_WORKER_METRICS or FLEET_COMMITTER_METRICS"
        )


def check_rule_tests(problems: list[str]) -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    firing = {c["alertname"] for t in tests["tests"] for c in t.get("alert_rule_test", []) if c.get("exp_alerts")}
    for r in rules():
        if r.get("alert") and r["alert"] not in firing:
            problems.append(f"{RULE_TESTS.name}: no test in which {r['alert']} fires")
        for key in ("summary", "description"):
            if r.get("alert") and not r.get("annotations", {}).get(key):
                problems.append(f"{RULES.name} {r['alert']}: annotation {key} missing")


def check_names(
    used: set[str], source: str, registered: dict[str, str], problems: list[str], warnings: list[str]
) -> None:
    series = job_series(registered)
    verify = verify_source_names()
    for name in sorted(used):
        if name in series or name in PROMETHEUS_NAMES:
            continue
        if name in OUTPUT_METRICS and not OUTPUTS_SOURCE.exists():
            warnings.append(f"{source} uses {name}: this tree has no {OUTPUTS_SOURCE.relative_to(REPO)} yet (issue #9)")
            continue
        if name.startswith(VERIFY_PREFIX):
            if verify is None:
                warnings.append(
                    f"{source} uses {name}: batch-verify exports no recon_verify_* metric yet (name from issue #8)"
                )
            elif name not in verify:
                problems.append(f"{source} uses {name}, which batch-verify does not export (it has {sorted(verify)})")
            continue
        problems.append(f"{source} uses {name}, which no code registers (pipeline/src has {sorted(registered)})")


def main() -> int:
    problems: list[str] = []
    warnings: list[str] = []
    d = dashboard()
    check_dashboard_layout(d, problems)
    registered = source_metrics()
    if len(registered) < 10:
        problems.append(f"found only {len(registered)} metrics in pipeline/src: has telemetry.rs changed its macros?")
    dash, rule = used_names(problems)
    check_names(dash, DASHBOARD.name, registered, problems, warnings)
    check_names(rule, RULES.name, registered, problems, warnings)
    on_dashboard = {strip_series_suffix(n, registered) for n in dash}
    for name in sorted(set(registered) - on_dashboard):
        problems.append(f"{DASHBOARD.name}: metric {name} ({registered[name]}, pipeline/src) has no panel")
    check_rule_tests(problems)
    check_fleet_names(registered, problems)
    for w in warnings:
        print(f"WARNING {w}")
    for p in problems:
        print(f"FAIL {p}")
    print(
        f"metric names: {len(registered)} registered by the job, {len(dash)} used by the dashboard, "
        f"{len(rule)} by the rules; {len(FLEET_METRICS)} fleet metrics, all in telemetry.rs; {len(problems)} problem(s)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
