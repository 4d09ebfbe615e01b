"""One lab host: its root filesystem, its boot under systemd-nspawn, commands inside it.

The host machine need not run systemd: nspawn is started with ``--register=no --keep-unit``
and commands go in with ``nsenter`` into the container's PID 1. A wrapper restarts nspawn when
the container reboots (exit code 133), so ``ansible.builtin.reboot`` works.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from inferstack.lab.network import BRIDGE
from inferstack.lab.rootfs import cache_dir, restore
from inferstack.lab.run import LabError, ok, run
from inferstack.lab.shapes import BRIDGE_ADDRESS, PREFIX_LEN, HostSpec

APT_ARCHIVES = "var/cache/apt/archives"


def deb_cache() -> Path:
    return cache_dir() / "apt-archives"


def nameservers() -> list[str]:
    path = Path("/etc/resolv.conf")
    lines = path.read_text().splitlines() if path.exists() else []
    found = [ln.split()[1] for ln in lines if ln.startswith("nameserver") and len(ln.split()) > 1]
    return [ns for ns in found if not ns.startswith("127.")] or ["1.1.1.1"]


class Machine:
    def __init__(self, spec: HostSpec, state_dir: Path) -> None:
        self.spec = spec
        # nspawn names the host side of the link and its runtime files after the machine
        # name: labs on other bridges get their own names.
        self.machine_name = spec.name if BRIDGE == "inferstack0" else f"{spec.name}-{BRIDGE[-4:]}"
        self.dir = state_dir / "hosts" / spec.name
        self.root = self.dir / "root"
        self.pidfile = self.dir / "wrapper.pid"
        self.log = self.dir / "console.log"

    # -- root filesystem ---------------------------------------------------------------------
    def prepare(self, tarball: Path, hosts: tuple[HostSpec, ...], ssh_pubkey: str) -> None:
        if self.root.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        restore(tarball, self.root)
        root, name, addr = self.root, self.spec.name, self.spec.address
        (root / "etc/hostname").write_text(name + "\n")
        (root / "etc/machine-id").write_text("")
        (root / "etc/hosts").write_text(
            "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
            + "".join(f"{h.address} {h.name}\n" for h in hosts)
        )
        resolv = root / "etc/resolv.conf"
        resolv.unlink(missing_ok=True)
        resolv.write_text("".join(f"nameserver {ns}\n" for ns in nameservers()))
        (root / "etc/systemd/network/10-lab-host0.network").write_text(
            "[Match]\nName=host0\n\n[Network]\n"
            f"Address={addr}/{PREFIX_LEN}\nGateway={BRIDGE_ADDRESS}\nLinkLocalAddressing=no\n"
        )
        sshd = root / "etc/ssh/sshd_config.d/inferstack-lab.conf"
        sshd.write_text(
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\nUseDNS no\n"
        )
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(ssh_pubkey)
        (ssh_dir / "authorized_keys").chmod(0o600)
        run(["ssh-keygen", "-A", "-f", str(root)])
        wants = root / "etc/systemd/system"
        for unit in ("apt-daily.timer", "apt-daily-upgrade.timer"):
            (wants / unit).unlink(missing_ok=True)
            (wants / unit).symlink_to("/dev/null")  # no apt runs racing the playbooks
        run(["chroot", str(root), "systemctl", "enable", "-q", "systemd-networkd"])
        # Packages downloaded by earlier labs: hard links, apt checks their hashes.
        if deb_cache().is_dir():
            for deb in deb_cache().glob("*.deb"):
                target = root / APT_ARCHIVES / deb.name
                if not target.exists():
                    os.link(deb, target)

    def harvest_debs(self) -> None:
        """Keep what apt downloaded for the next lab (hard links into the cache)."""
        archives = self.root / APT_ARCHIVES
        if not archives.is_dir():
            return
        deb_cache().mkdir(parents=True, exist_ok=True)
        for deb in archives.glob("*.deb"):
            target = deb_cache() / deb.name
            if not target.exists():
                os.link(deb, target)

    # -- lifecycle ---------------------------------------------------------------------------
    def wrapper_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def boot(self) -> None:
        if self.wrapper_pid():
            return
        nspawn = [
            "systemd-nspawn", "-b", "-D", str(self.root), "--register=no", "--keep-unit",
            "-M", self.machine_name, f"--hostname={self.spec.name}", "--console=passive",
            f"--network-bridge={BRIDGE}",
            "--resolv-conf=off", "--timezone=off", "--link-journal=no",
        ]  # fmt: skip
        # Exit code 133 = the container asked for a reboot: boot it again (unless nspawn failed
        # at once, which it also reports as 133 at times).
        script = (
            'while :; do t=$(date +%s); "$@"; rc=$?; '
            '[ "$rc" -eq 133 ] && [ $(($(date +%s) - t)) -ge 5 ] || exit "$rc"; done'
        )
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                ["sh", "-c", script, "lab-host", *nspawn],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pidfile.write_text(str(proc.pid))

    def pid1(self) -> int | None:
        """PID (on this machine) of the container's systemd."""
        wrapper = self.wrapper_pid()
        if wrapper is None:
            return None
        for nspawn in _children(wrapper):
            for child in _children(nspawn):
                if _comm(child) == "systemd":
                    return child
        return None

    def exec(self, *cmd: str, check: bool = True) -> str:
        pid = self.pid1()
        if pid is None:
            raise LabError(f"{self.spec.name} is not running (see {self.log})")
        return run(["nsenter", "-t", str(pid), "-a", *cmd], check=check)

    def wait_running(self, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        state = "not started"
        while time.monotonic() < deadline:
            if self.wrapper_pid() is None:
                raise LabError(f"{self.spec.name}: systemd-nspawn exited; see {self.log}")
            if self.pid1() is not None:
                state = self.exec("systemctl", "is-system-running", check=False).strip()
                if state in ("running", "degraded") and ok(
                    ["nsenter", "-t", str(self.pid1()), "-n", "ss", "-Htln", "sport = :22"]
                ):
                    return state
            time.sleep(0.2)
        raise LabError(f"{self.spec.name}: not up after {timeout:.0f} s (state {state})")

    def stop(self, timeout: float = 30.0) -> None:
        wrapper = self.wrapper_pid()
        if wrapper is None:
            return
        if self.pid1() is not None:
            # poweroff ends nspawn with 0, which ends the wrapper loop
            self.exec("systemctl", "poweroff", "--no-block", check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.wrapper_pid():
            time.sleep(0.2)
        if self.wrapper_pid():
            os.killpg(wrapper, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)

    def remove(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""
