"""The operator's files: Prometheus alert rules pass their promtool unit tests, and
the Grafana dashboard queries only metrics the processes export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from prometheus_client import REGISTRY

import app.workers.metrics  # noqa: F401  (registers every metric)

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "agent-sleepwake.json"
# Functions, keywords and label names that look like identifiers in PromQL.
METRIC = re.compile(r"\bagent_[a-z0-9_]+\b")


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `apt-get install -y prometheus` (.ci/run does it)"
    return found


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    checked = subprocess.run(
        [promtool(), "check", "rules", "alerts.yml"],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def exported_series() -> set[str]:
    """Every sample name the processes' registry can expose (counters' ``_total``,
    histograms' ``_bucket`` / ``_count`` / ``_sum`` included)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum"))
    return names


def queried(text: str) -> set[str]:
    return set(METRIC.findall(text))


def test_every_metric_the_alerts_name_is_exported() -> None:
    named = queried((PROMETHEUS / "alerts.yml").read_text())
    assert named
    assert named - exported_series() == set()


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert len(exprs) >= 8
    named = set().union(*(queried(e) for e in exprs))
    assert named - exported_series() == set()
    # The panels the operators asked for are there.
    for wanted in (
        "agent_sessions",
        "agent_sleeps_total",
        "agent_wakes_total",
        "agent_stops_total",
        "agent_wake_lag_seconds",
        "agent_resume_attempts_total",
        "agent_charges_total",
        "agent_spend_microdollars_total",
        "agent_batch_duration_seconds_bucket",
    ):
        assert wanted in named, wanted
