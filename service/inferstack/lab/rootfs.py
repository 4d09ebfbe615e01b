"""The base root filesystem every lab host starts from: Debian 12 (bookworm) with systemd, SSH
and Python, made with debootstrap once and cached as a zstd tarball (restored in about a second).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from inferstack.lab.run import LabError, run

SUITE = "bookworm"
PACKAGES = (
    "systemd,systemd-sysv,dbus,libpam-systemd,python3,python3-apt,python3-venv,ca-certificates,"
    "openssh-server,iproute2,netbase,sudo,curl,gnupg"
)
HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "inferstack" / "lab"


def mirror() -> str:
    """The mirror this machine already uses (debootstrap's own default may be unreachable)."""
    if HOST_SOURCES.exists():
        for line in HOST_SOURCES.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    return DEFAULT_MIRROR


def base_tarball() -> Path:
    tag = hashlib.sha256(f"{SUITE} {PACKAGES}".encode()).hexdigest()[:12]
    return cache_dir() / f"debian-{SUITE}-{tag}.tar.zst"


def ensure_base(log: bool = True) -> Path:
    """The cached base tarball, built with debootstrap when missing (about 80 s)."""
    tarball = base_tarball()
    if tarball.exists():
        return tarball
    for tool in ("debootstrap", "zstd"):
        if not shutil.which(tool):
            raise LabError(f"{tool} not found: run scripts/system-deps (needs root)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="inferstack-rootfs-", dir="/var/tmp") as tmp:
        root = Path(tmp) / "root"
        if log:
            print(f"lab: debootstrap {SUITE} from {mirror()} (once; cached)", file=sys.stderr)
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={PACKAGES}",
                SUITE,
                str(root),
                mirror(),
            ]
        )
        # debootstrap's list has only the release suite: use the machine's (updates, security).
        (root / "etc/apt/sources.list").unlink(missing_ok=True)
        if HOST_SOURCES.exists():
            shutil.copy(HOST_SOURCES, root / "etc/apt/sources.list.d/debian.sources")
        run(["chroot", str(root), "apt-get", "clean"])
        for key in (root / "etc/ssh").glob("ssh_host_*"):
            key.unlink()  # every host gets its own
        partial = tarball.with_suffix(".partial")
        run(["tar", "-C", str(root), "--zstd", "-cpf", str(partial), "."])
        partial.rename(tarball)
    return tarball


def restore(tarball: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=False)
    run(["tar", "-C", str(dest), "--zstd", "-xpf", str(tarball)])
