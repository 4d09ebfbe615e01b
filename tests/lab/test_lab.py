"""Fresh host -> bad inventories refused -> site.yml -> health.yml -> site.yml changes nothing ->
operators' systemctl -> rolling restart under load -> monitoring returns data."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.lab.conftest import MODEL, Lab, recap
from tests.procs import KeepAliveLoad, metric_total


def _nothing_installed(lab: Lab) -> None:
    r = lab.exec("sh", "-c", "ls /etc/systemd/system/inferstack* /opt/inferstack 2>&1; "
                 "systemctl list-units --no-legend 'inferstack*'")  # fmt: skip
    assert "inferstack.target" not in r.stdout and "inferstack-" not in r.stdout, r.stdout


BAD_INVENTORIES = {
    "tp-does-not-divide-gpus": (["-e", "inferstack_tensor_parallel_size=3"],
                                "inferstack_tensor_parallel_size"),
    "tp-does-not-divide-heads": (["-e", "inferstack_gpu_count=6",
                                  "-e", "inferstack_tensor_parallel_size=6"],
                                 "num_attention_heads"),
    "model-missing": (["-e", "vllm_download_model=false"], "vllm_model_path"),
    "no-api-keys": (["-e", '{"gateway_api_keys": []}'], "gateway_api_keys"),
    "no-socket-group": (["-e", "gateway_socket_group=no-such-group"], "gateway_socket_group"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_INVENTORIES))
def test_bad_inventory_fails_early_naming_the_variable(lab: Lab, case: str) -> None:
    args, variable = BAD_INVENTORIES[case]
    r = lab.playbook("site.yml", *args)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-2000:]
    assert variable in out, out[-3000:]
    _nothing_installed(lab)


def test_port_clash_fails_early_naming_the_variable(lab: Lab) -> None:
    started = lab.exec("systemd-run", "--unit=clash", "python3", "-m", "http.server", "8100")
    assert started.returncode == 0, started.stderr
    try:
        r = lab.playbook("site.yml")
        out = r.stdout + r.stderr
        assert r.returncode != 0
        assert "Port 8100" in out and "inferstack_engine_port_base" in out, out[-3000:]
    finally:
        lab.exec("systemctl", "stop", "clash")
    _nothing_installed(lab)


def test_unreachable_host_stops_the_run(lab: Lab, tmp_path: Path) -> None:
    ghost = tmp_path / "ghost.yml"
    ghost.write_text(
        f"all:\n  hosts:\n    ghost: {{ansible_host: {lab.address.rsplit('.', 1)[0]}.99}}\n"
        "  children:\n    inferstack:\n      children:\n        engine: {hosts: {ghost: null}}\n"
    )
    r = lab.playbook("site.yml", "-i", str(ghost), "-e", "ansible_ssh_timeout=3")
    assert r.returncode != 0
    assert "UNREACHABLE" in r.stdout
    _nothing_installed(lab)


def test_site_deploys_and_health_passes(lab: Lab) -> None:
    lab.deploy_and_check()


def test_second_site_run_changes_nothing(lab: Lab) -> None:
    r = lab.playbook("site.yml")
    assert r.returncode == 0, r.stdout[-3000:]
    changed = re.findall(r"^changed: \[.*$|^TASK \[(.*)\]", r.stdout, re.M)
    assert recap(r.stdout)["changed"] == 0, [c for c in changed if c][-20:]


def test_check_mode_on_a_converged_host_changes_nothing(lab: Lab) -> None:
    r = lab.playbook("site.yml", "--check")
    assert r.returncode == 0, r.stdout[-3000:]
    assert recap(r.stdout)["changed"] == 0


def test_units_pass_systemd_analyze_verify(lab: Lab) -> None:
    r = lab.exec("systemd-analyze", "verify", "inferstack.target", "inferstack-gateway.service",
                 "inferstack-gateway.socket", "inferstack-engine@0.service")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_operators_stop_and_start_the_target(lab: Lab) -> None:
    units = ["inferstack-gateway", "inferstack-gateway.socket", "inferstack-engine@0",
             "inferstack-engine@1"]  # fmt: skip
    assert lab.exec("systemctl", "stop", "inferstack.target").returncode == 0
    states = lab.exec("systemctl", "is-active", *units).stdout.split()
    assert states == ["inactive"] * 4, states
    assert lab.exec("systemctl", "start", "inferstack.target").returncode == 0
    deadline = time.monotonic() + 60
    ready = 0
    while time.monotonic() < deadline and ready != 200:
        try:
            ready = httpx.get(f"http://{lab.address}:8000/ready", timeout=2).status_code
        except httpx.HTTPError:
            time.sleep(0.5)
    assert ready == 200


def test_rolling_restart_under_load_fails_no_request(lab: Lab) -> None:
    r, ok, failures = lab.playbook_under_load("rolling-restart.yml", clients=6)
    assert r.returncode == 0, r.stdout[-4000:]
    assert ok > 50
    assert failures == [], f"{len(failures)} failed of {ok + len(failures)}: {failures[:3]}"


def test_site_applies_a_changed_engine_configuration_without_failing_a_request(lab: Lab) -> None:
    """site.yml changes both instances' environment under load: the instances are marked and
    restarted at its end one at a time, drained first (restarted in place, both were ejected at
    once and most requests failed with 503). The gateway's unit did not change: not restarted."""
    engines = ("inferstack-engine@0", "inferstack-engine@1")
    before, gateway = lab.main_pids(*engines), lab.main_pids("inferstack-gateway")
    change = '{"vllm_extra_env": {"INFERSTACK_ROLLOUT": "1"}}'
    r, ok, failures = lab.playbook_under_load("site.yml", "-e", change, clients=6)
    assert r.returncode == 0, r.stdout[-4000:]
    assert ok > 50
    assert failures == [], f"{len(failures)} failed of {ok + len(failures)}: {failures[:3]}"
    after = lab.main_pids(*engines)
    assert all(a != b for a, b in zip(after, before, strict=True)), (before, after)
    assert lab.main_pids("inferstack-gateway") == gateway
    assert lab.pending_restarts() == []
    env = lab.exec("cat", "/etc/inferstack/engine/1.env").stdout
    assert "INFERSTACK_ROLLOUT=1" in env


def test_site_restarts_a_lone_gateway_whose_unit_changed_without_failing_a_request(
    lab: Lab,
) -> None:
    """The lab's one gateway must be restarted when its unit changes (a reload would not apply
    it). Its socket unit keeps the ports open meanwhile: the edge's connections wait for the
    new master instead of being refused (before: 5.9 s of 502s)."""
    gateway = lab.main_pids("inferstack-gateway")
    change = ("-e", "gateway_graceful_timeout_s=601")  # the unit's TimeoutStopSec
    r, ok, failures = lab.playbook_under_load("site.yml", *change, clients=6)
    assert r.returncode == 0, r.stdout[-4000:]
    assert ok > 50
    assert failures == [], f"{len(failures)} failed of {ok + len(failures)}: {failures[:3]}"
    assert lab.main_pids("inferstack-gateway") != gateway
    assert lab.pending_restarts() == []
    unit = lab.exec("systemctl", "cat", "inferstack-gateway.service").stdout
    assert "TimeoutStopSec=631" in unit


def test_every_rule_and_panel_returns_data_from_the_lab_prometheus(lab: Lab) -> None:
    import subprocess

    from tests.lab.conftest import BIN, ROOT

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "inferstack"), "monitoring", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=300, check=False)  # fmt: skip

    # What operators see when engines fail: a stopped instance gives upstream errors and
    # retries, no instance left gives 503 rejections. Then the stack comes back.
    url = f"http://{lab.address}:8000/v1/chat/completions"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    auth = {"Authorization": f"Bearer {lab.api_key}"}
    assert _retried_after_an_instance_stops(lab, auth) > 0, "no request was retried"
    assert lab.exec("systemctl", "stop", "inferstack-engine@1").returncode == 0
    statuses = {httpx.post(url, json=body, headers=auth, timeout=30).status_code for _ in range(4)}
    assert statuses == {503}, statuses
    assert lab.exec("systemctl", "start", "inferstack.target").returncode == 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if httpx.get(f"http://{lab.address}:8000/ready", timeout=5).status_code == 200:
            break
        time.sleep(0.5)
    loaded = cli("load", "--gateway", f"http://{lab.address}:8000", "--api-key", lab.api_key,
               "--model", MODEL)  # fmt: skip
    assert loaded.returncode == 0, loaded.stdout[-2000:] + loaded.stderr[-2000:]
    verify = cli("verify", "--prometheus", f"http://{lab.address}:9090")
    assert verify.returncode == 0, verify.stdout[-4000:] + verify.stderr[-2000:]


def _retried_after_an_instance_stops(lab: Lab, auth: dict[str, str], attempts: int = 3) -> float:
    """Stop engine@0 under running traffic until the gateway has retried a request on the other
    instance; the gateway's retry count.

    Requests the gateway sends to the stopped instance before its health probe (every 2 s)
    notices are refused and retried. Short requests keep that window open: the stopping
    instance's in-flight requests end at once, after which it is the least loaded and gets the
    next request. (With long requests it holds in-flight ones while it drains, least-loaded
    routing sends new ones elsewhere, and the probe may notice first: no retry to see. Hence
    a few attempts, each with the instance back in rotation first.)"""
    gateway = f"http://{lab.address}:8000"
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                       "max_tokens": 1}).encode()  # fmt: skip
    headers = {**auth, "Content-Type": "application/json", "Cache-Control": "no-cache, no-store"}
    for _ in range(attempts):
        with KeepAliveLoad(gateway, "/v1/chat/completions", body, headers, clients=8) as load:
            time.sleep(0.5)
            assert lab.exec("systemctl", "stop", "inferstack-engine@0").returncode == 0
            time.sleep(1.0)
        assert load.done > 0
        retries = metric_total(gateway, "inferstack_retries_total")
        if retries > 0:
            return retries
        assert lab.exec("systemctl", "start", "inferstack-engine@0").returncode == 0
        time.sleep(8)  # eject_s (5 s) and a passing probe in every gateway worker
    return 0.0
