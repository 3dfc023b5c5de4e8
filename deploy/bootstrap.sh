#!/usr/bin/env bash
# Find uv or install it for this user, then install the locked Python environment.
#
# Where uv comes from, first that works:
#   1. uv already on PATH, or in ~/.local/bin (where every method below puts it);
#   2. pipx install uv;
#   3. a private virtual environment, ~/.local/share/triagelab/uv, with `pip install uv` in it
#      and ~/.local/bin/uv linked to it: a venv is always allowed, so this respects PEP 668
#      ("externally-managed-environment" refuses `pip install --user` on Debian and Ubuntu);
#   4. otherwise: a message with the official install command, and exit code 1.
# BOOTSTRAP_SYNC=0 installs uv only (the test of this script uses it).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$HOME/.local/bin"
VENV="$HOME/.local/share/triagelab/uv"
INSTALL_DOC="https://docs.astral.sh/uv/getting-started/installation/"

find_uv() {
  if command -v uv >/dev/null 2>&1 && uv --version >/dev/null 2>&1; then command -v uv; return; fi
  if [ -x "$BIN/uv" ] && "$BIN/uv" --version >/dev/null 2>&1; then echo "$BIN/uv"; return; fi
  return 1
}

python_for_venv() {
  local py
  for py in python3 python; do
    if command -v "$py" >/dev/null 2>&1 \
      && "$py" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 8))' 2>/dev/null; then
      command -v "$py"; return
    fi
  done
  return 1
}

install_uv() {
  mkdir -p "$BIN"
  if command -v pipx >/dev/null 2>&1; then
    echo "==> installing uv with pipx" >&2
    if pipx install --quiet uv >&2 && find_uv >/dev/null; then return 0; fi
  fi
  local py
  if py=$(python_for_venv); then
    echo "==> installing uv into $VENV (a venv of its own: PEP 668 safe)" >&2
    rm -rf "$VENV"
    "$py" -m venv "$VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check uv >&2
    ln -sf "$VENV/bin/uv" "$BIN/uv"
    find_uv >/dev/null && return 0
  fi
  cat >&2 <<MSG
uv is needed and could not be installed here (no pipx, and no Python with venv).
Install it with the official installer, then run make again:
    curl -LsSf https://astral.sh/uv/install.sh | sh
(or: pipx install uv; details: $INSTALL_DOC)
MSG
  return 1
}

uv=$(find_uv) || { install_uv && uv=$(find_uv); } || exit 1
case ":$PATH:" in
  *":$(dirname "$uv"):"*) ;;
  *) echo "note: uv is at $uv; add $(dirname "$uv") to PATH to call it yourself" >&2 ;;
esac
if [ "${BOOTSTRAP_SYNC:-1}" != 0 ]; then
  "$uv" sync --frozen --quiet
fi
