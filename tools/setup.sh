#!/usr/bin/env bash
# Shared, idempotent set-up for `make demo`, `make test` and `make docs`.
# 1. System libraries for a headless napari (Xvfb, Mesa GL, the xcb libraries Qt loads)
#    and Chromium with its WebDriver (the service page's browser test),
#    installed with apt-get only when one is missing.
# 2. A virtual environment in .venv with the package (editable) and its test and docs
#    extras, rebuilt only when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
SYSTEM_PACKAGES=(xvfb xauth libgl1-mesa-dri libegl1 libdbus-1-3 libfontconfig1 libxkbcommon-x11-0
  libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 libxcb-render-util0
  libxcb-randr0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0
  chromium chromium-driver)  # the last two: the web page's browser test

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp="$VENV/.installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: creating $VENV and installing napari-mitosis with its test and docs extras"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  # pip's notices about local index folders are noise; real errors still fail the step.
  if [ -f /etc/xdg/pip/constraints.txt ]; then
    # A pip constraints file caps torch/torchvision: install the capped versions first, so
    # that resolving the extras never reaches for another (multi-GB) torch build. Without
    # one, pyproject's ranges decide.
    "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "^WARNING: Location" || true
  fi
  "$VENV/bin/python" -m pip install -q -e ".[testing,docs]" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import napari_mitosis, napari, openslide, torch, torchvision" # fail loudly if the install did
  touch "$stamp"
fi
