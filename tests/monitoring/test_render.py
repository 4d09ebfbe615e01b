"""The roles' rendered configuration, checked with the real tools: promtool, amtool,
systemd-analyze; the scrape configuration has the targets and labels of the inventory."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.monitoring.conftest import DASHBOARDS, Rendered


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_promtool_checks_config_and_rules(rendered: Rendered, promtool: str) -> None:
    config = rendered.prometheus / "prometheus.yml"
    result = _run(promtool, "check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(rendered.rule_files) == 3
    for rules in rendered.rule_files:
        result = _run(promtool, "check", "rules", str(rules))
        assert result.returncode == 0, result.stdout + result.stderr


def _targets(config: dict, job: str) -> list[tuple[str, dict[str, str]]]:
    [scrape] = [s for s in config["scrape_configs"] if s["job_name"] == job]
    return [(t, sc["labels"]) for sc in scrape["static_configs"] for t in sc["targets"]]


def test_scrape_config_follows_the_inventory(rendered: Rendered) -> None:
    config = yaml.safe_load((rendered.prometheus / "prometheus.yml").read_text())
    p = rendered.ports
    assert config["global"]["scrape_interval"] == "1s"
    assert {s["job_name"] for s in config["scrape_configs"]} == {
        "engine",
        "gateway",
        "nginx",
        "redis",
        "node",
        "dcgm",
        "alertmanager",
        "prometheus",
    }
    engines = _targets(config, "engine")
    assert sorted((t, lb["host"], lb["gpu_group"]) for t, lb in engines) == sorted(
        [
            (f"127.0.0.1:{p['engine']}", "sim1", "0"),
            (f"127.0.0.1:{p['engine'] + 1}", "sim1", "1"),
            (f"127.0.0.1:{p['gpu_engine']}", "gpu1", "0"),
            (f"127.0.0.1:{p['gpu_engine'] + 1}", "gpu1", "1"),
        ]
    )
    assert all(
        lb["role"] == "engine" and lb["instance"].startswith(lb["host"]) for _, lb in engines
    )
    # Only the vLLM host gets a DCGM target; GPU index // TP becomes gpu_group.
    [(dcgm_target, dcgm_labels)] = _targets(config, "dcgm")
    assert dcgm_target == f"127.0.0.1:{p['dcgm']}" and dcgm_labels["host"] == "gpu1"
    [dcgm_job] = [s for s in config["scrape_configs"] if s["job_name"] == "dcgm"]
    relabels = [(r.get("regex"), r.get("replacement")) for r in dcgm_job["metric_relabel_configs"]]
    assert relabels == [("2;(0|1)", "0"), ("2;(2|3)", "1"), ("tp", None)]
    node = _targets(config, "node")
    assert sorted(lb["host"] for _, lb in node) == ["gpu1", "mon1", "sim1"]
    assert {lb["host"]: lb["role"] for _, lb in node}["mon1"] == "gateway,cache,edge,monitoring"
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        f"127.0.0.1:{p['alertmanager']}"
    ]
    assert config["rule_files"] == [str(rendered.prometheus / "rules" / "*.yml")]


def test_inventory_rules_give_expected_gpus_per_vllm_host(rendered: Rendered) -> None:
    doc = yaml.safe_load((rendered.prometheus / "rules" / "inventory.yml").read_text())
    rules = doc["groups"][0]["rules"]
    assert [(r["record"], r["expr"], r["labels"]["host"]) for r in rules] == [
        ("inferstack:gpus_expected:count", "vector(4)", "gpu1")
    ]


def test_alertmanager_config_passes_amtool(rendered: Rendered) -> None:
    path = rendered.host("mon1") / "alertmanager" / "alertmanager.yml"
    result = _run("amtool", "check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(path.read_text())
    assert config["route"]["receiver"] == "default"
    assert config["route"]["routes"] == [
        {"receiver": "critical", "matchers": ['severity="critical"'], "repeat_interval": "1h"}
    ]
    hooks = {r["name"]: r["webhook_configs"][0]["url"] for r in config["receivers"]}
    assert hooks == {
        "default": rendered.webhook_url,
        "critical": rendered.webhook_url + "/critical",
    }


def test_exporter_flags(rendered: Rendered) -> None:
    p = rendered.ports

    def args(host: str, role: str) -> list[str]:
        text = (rendered.host(host) / role / "default").read_text()
        [line] = [ln for ln in text.splitlines() if ln.startswith("ARGS=")]
        return shlex.split(shlex.split(line[len("ARGS=") :])[0])

    assert args("mon1", "nginx_exporter")[:2] == [
        f"-nginx.scrape-uri=http://127.0.0.1:{p['edge_status']}/stub_status",
        f"-web.listen-address=127.0.0.1:{p['nginx_exporter']}",
    ]
    assert args("mon1", "redis_exporter") == [
        f"-redis.addr=redis://127.0.0.1:{p['redis']}",
        f"-web.listen-address=127.0.0.1:{p['redis_exporter']}",
    ]
    for host in ("mon1", "sim1", "gpu1"):
        assert args(host, "node_exporter") == [f"--web.listen-address=127.0.0.1:{p['node']}"]
    # Exporters only where their component is: no nginx/redis exporter on engine hosts, no
    # DCGM exporter on the simulator host.
    assert not (rendered.host("sim1") / "nginx_exporter").exists()
    assert not (rendered.host("sim1") / "dcgm_exporter").exists()
    assert (rendered.host("gpu1") / "dcgm_exporter" / "counters.csv").read_text() == (
        DASHBOARDS.parents[1] / "dcgm" / "counters.csv"
    ).read_text()


def test_dcgm_exporter_unit_verifies(rendered: Rendered, tmp_path: Path) -> None:
    """systemd-analyze verify, with stand-ins for what only a GPU host has: the exporter
    binary (replaced by /usr/bin/true in the copy) and DCGM's nvidia-dcgm.service."""
    unit = rendered.host("gpu1") / "dcgm_exporter" / "inferstack-dcgm-exporter.service"
    text = unit.read_text()
    assert "--collectors /etc/dcgm-exporter/inferstack-counters.csv" in text
    assert f"--address 127.0.0.1:{rendered.ports['dcgm']}" in text
    for line in ("PartOf=inferstack.target", "WantedBy=inferstack.target", "DynamicUser=yes"):
        assert line in text
    (tmp_path / unit.name).write_text(text.replace("/usr/bin/dcgm-exporter", "/usr/bin/true"))
    (tmp_path / "nvidia-dcgm.service").write_text("[Service]\nExecStart=/usr/bin/true\n")
    (tmp_path / "inferstack.target").write_text("[Unit]\nDescription=stand-in\n")
    result = _run(
        shutil.which("systemd-analyze") or "systemd-analyze",
        "verify",
        *(str(tmp_path / n) for n in (unit.name, "nvidia-dcgm.service", "inferstack.target")),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_points_at_the_dashboards(rendered: Rendered) -> None:
    """Grafana cannot run here: the provisioning files are checked for what Grafana reads."""
    grafana = rendered.host("mon1") / "grafana"
    ds = yaml.safe_load((grafana / "provisioning" / "datasources" / "inferstack.yml").read_text())
    assert ds["apiVersion"] == 1
    [source] = ds["datasources"]
    assert source["uid"] == "inferstack-prometheus" and source["type"] == "prometheus"
    assert source["url"] == f"http://127.0.0.1:{rendered.ports['prometheus']}"
    boards = yaml.safe_load(
        (grafana / "provisioning" / "dashboards" / "inferstack.yml").read_text()
    )
    [provider] = boards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == str(grafana / "dashboards")
    env = (grafana / "inferstack.env").read_text()
    assert "GF_ANALYTICS_REPORTING_ENABLED=false" in env
