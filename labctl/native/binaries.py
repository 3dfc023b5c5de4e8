"""Find (and on Debian as root, install) Prometheus and Alertmanager.

Debian names the Alertmanager binary ``prometheus-alertmanager``; upstream tarballs and
Homebrew call it ``alertmanager``. Both are accepted, and ``PROMETHEUS_BIN`` /
``ALERTMANAGER_BIN`` name a binary explicitly (a wrong explicit name is an error, never a
silent fallback).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from labctl.config import Binaries, LabError

TOOLS = ("prometheus", "alertmanager")
CANDIDATES = {
    "prometheus": ("prometheus",),
    "alertmanager": ("alertmanager", "prometheus-alertmanager"),
}
ENV_NAMES = {"prometheus": "PROMETHEUS_BIN", "alertmanager": "ALERTMANAGER_BIN"}
APT_PACKAGES = {"prometheus": "prometheus", "alertmanager": "prometheus-alertmanager"}
# The Debian packages start these system units on install; they would hold :9090 and :9093.
SYSTEM_UNITS = {"prometheus": "prometheus", "alertmanager": "prometheus-alertmanager"}

INSTALL_HINT = """\
Prometheus and/or Alertmanager are not installed, so the lab runs without them (no alerts).
Install them, then run `make up` again:
  Debian/Ubuntu: sudo apt-get install prometheus prometheus-alertmanager
                 sudo systemctl disable --now prometheus prometheus-alertmanager
                 (the packages start system services on :9090/:9093; the lab runs its own)
  macOS:         brew install prometheus alertmanager
  elsewhere:     https://prometheus.io/download/ - put prometheus and alertmanager on PATH,
                 or set PROMETHEUS_BIN / ALERTMANAGER_BIN to their paths"""


def find_binaries(env: Mapping[str, str] | None = None) -> Binaries:
    """Resolve both tools without installing anything."""
    env = os.environ if env is None else env
    path = env.get("PATH", os.defpath)
    found: dict[str, str | None] = {}
    explicit = set()
    for tool in TOOLS:
        setting = env.get(ENV_NAMES[tool], "").strip()
        if setting:
            resolved = shutil.which(setting, path=path)
            if resolved is None:
                raise LabError(
                    f"{ENV_NAMES[tool]}={setting!r}: no such executable; "
                    f"fix the path or unset {ENV_NAMES[tool]} to search PATH"
                )
            found[tool] = resolved
            explicit.add(tool)
            continue
        found[tool] = next(
            (hit for name in CANDIDATES[tool] if (hit := shutil.which(name, path=path))), None
        )
    return Binaries(found["prometheus"], found["alertmanager"], frozenset(explicit))


def can_apt_install(env: Mapping[str, str]) -> bool:
    """Debian family, root, apt-get present, and not switched off with LAB_AUTO_INSTALL=0."""
    if env.get("LAB_AUTO_INSTALL", "1").strip().lower() in {"0", "no", "false", "off"}:
        return False
    return (
        Path("/etc/debian_version").exists()
        and hasattr(os, "geteuid")
        and os.geteuid() == 0
        and shutil.which("apt-get", path=env.get("PATH", os.defpath)) is not None
    )


def ensure_binaries(
    env: Mapping[str, str] | None = None, out: Callable[[str], None] = print
) -> Binaries:
    """Find both tools; install the missing ones with apt-get where we may, else print how."""
    env = os.environ if env is None else env
    found = find_binaries(env)
    missing = [t for t in TOOLS if getattr(found, t) is None]
    if not missing:
        return found
    if can_apt_install(env):
        packages = [APT_PACKAGES[t] for t in missing]
        out(f"{', '.join(missing)} not found: installing Debian packages {' '.join(packages)}")
        _apt_install(packages, out)
        _stop_system_units([SYSTEM_UNITS[t] for t in missing], out)
        found = find_binaries(env)
        missing = [t for t in TOOLS if getattr(found, t) is None]
    if missing:
        out(INSTALL_HINT)
    return found


def _apt_install(packages: list[str], out: Callable[[str], None]) -> None:
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    out(f"  $ {' '.join(cmd)}")
    if subprocess.run(cmd, env=apt_env, check=False).returncode == 0:
        return
    out("  apt-get install failed; refreshing the package lists and trying once more")
    subprocess.run(["apt-get", "update"], env=apt_env, check=False)
    if subprocess.run(cmd, env=apt_env, check=False).returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed; see its output above")


def _stop_system_units(units: list[str], out: Callable[[str], None]) -> None:
    """The packages' own services would take the lab's ports; the lab runs its own copies."""
    if shutil.which("systemctl") is None or not Path("/run/systemd/system").exists():
        return
    for unit in units:
        active = subprocess.run(["systemctl", "is-active", "--quiet", unit], check=False).returncode
        if active == 0:
            out(f"  stopping the system unit {unit} the package started (the lab runs its own)")
            subprocess.run(["systemctl", "disable", "--now", unit], check=False)
