"""deploy/bootstrap.sh on a machine without uv: it installs uv for the user, PEP 668 or not."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "deploy" / "bootstrap.sh"
SYSTEM_PYTHON = Path("/usr/bin/python3")


def run(home: Path, path: str) -> subprocess.CompletedProcess:
    env = {"HOME": str(home), "PATH": path, "BOOTSTRAP_SYNC": "0", "LANG": "C.UTF-8"}
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONFIG_FILE"):
        if key in os.environ:
            env[key] = os.environ[key]
    return subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.integration
@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs a system /usr/bin/python3")
def test_without_uv_it_installs_one_into_a_venv_of_its_own(tmp_path: Path) -> None:
    """PATH has the system Python (Debian's is externally managed: `pip install --user` is
    refused) and no uv, no pipx: the script must still end with a working ~/.local/bin/uv."""
    assert shutil.which("uv", path="/usr/bin:/bin") is None, "this machine has a system-wide uv"
    first = run(tmp_path, "/usr/bin:/bin")
    assert first.returncode == 0, first.stderr
    assert "a venv of its own" in first.stderr
    uv = tmp_path / ".local" / "bin" / "uv"
    version = subprocess.run([uv, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("uv ")
    assert "add " in first.stderr and "to PATH" in first.stderr  # ~/.local/bin is not on PATH
    again = run(tmp_path, f"{uv.parent}:/usr/bin:/bin")  # found, nothing installed twice
    assert again.returncode == 0, again.stderr
    assert "installing" not in again.stderr


def test_without_uv_or_python_it_says_how_to_install_uv(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "mkdir", "cat", "dirname", "ln", "rm"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    result = run(tmp_path / "home", str(bin_dir))
    assert result.returncode == 1
    assert "curl -LsSf https://astral.sh/uv/install.sh | sh" in result.stderr
    assert "pipx install uv" in result.stderr
