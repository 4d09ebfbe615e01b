"""Alert rules: promtool unit tests (every alert fires in one case and stays quiet in another),
annotations, runbooks in docs/monitoring.md."""

from __future__ import annotations

import re
import shutil
import subprocess

import yaml

from inferstack.monitoring.names import dcgm_counter_names
from inferstack.monitoring.sources import dashboard_expressions, rule_expressions
from tests.monitoring.conftest import DASHBOARDS, MONITORING, ROOT, Rendered

TESTS = MONITORING / "prometheus" / "tests" / "alerts_test.yml"


def _alerts(rendered: Rendered) -> dict[str, dict]:
    doc = yaml.safe_load((rendered.prometheus / "rules" / "alerts.yml").read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


def test_promtool_unit_tests_pass(rendered: Rendered, promtool: str) -> None:
    tests_dir = rendered.prometheus / "tests"
    tests_dir.mkdir(exist_ok=True)
    shutil.copy(TESTS, tests_dir / TESTS.name)
    result = subprocess.run(
        [promtool, "test", "rules", str(tests_dir / TESTS.name)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case(rendered: Rendered) -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test") or []:
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(_alerts(rendered))
    assert alerts - fires == set(), "alerts without a firing case"
    assert alerts - quiet == set(), "alerts without a quiet case"
    assert (fires | quiet) - alerts == set(), "tests of alerts that do not exist"


def test_every_alert_has_summary_severity_and_runbook(rendered: Rendered) -> None:
    docs = (ROOT / "docs" / "monitoring.md").read_text()
    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", docs, re.M)
    }
    for name, rule in _alerts(rendered).items():
        ann = rule["annotations"]
        assert ann.get("summary") and ann.get("description"), name
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        anchor = ann["runbook_url"].split("#", 1)[1]
        assert anchor == name.lower()
        assert anchor in headings, f"docs/monitoring.md has no runbook section '### {name}'"


def test_dcgm_counters_are_exactly_the_fields_used(rendered: Rendered) -> None:
    expressions = rule_expressions(rendered.rule_files)
    expressions += dashboard_expressions(DASHBOARDS.glob("*.json"))
    used = {n for e in expressions for n in e.names() if n.startswith("DCGM_")}
    assert dcgm_counter_names(MONITORING / "dcgm" / "counters.csv") == used
