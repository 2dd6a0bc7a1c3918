#!/usr/bin/env bash
# Set up the project's virtual environment: system libraries for Qt/Xvfb, pinned torch, the package.
# Usage: scripts/setup.sh PYTHON VENV
set -euo pipefail
py=${1:-python3}
venv=${2:-.venv}

# System packages napari needs on a headless machine (only when missing, only as root).
need_apt=0
command -v xvfb-run >/dev/null 2>&1 || need_apt=1
ldconfig -p 2>/dev/null | grep -q libxkbcommon-x11 || need_apt=1
ldconfig -p 2>/dev/null | grep -q libEGL.so.1 || need_apt=1
if [ "$need_apt" = 1 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xauth libxcb-icccm4 libxcb-keysyms1 \
      libxkbcommon-x11-0 libxcb-image0 libxcb-render-util0 libxcb-xinerama0 libxcb-randr0 \
      libxcb-shape0 libxcb-cursor0 libgl1 libegl1 libfontconfig1 libdbus-1-3 >/dev/null
  else
    echo "setup: install xvfb and the xcb/EGL libraries napari needs (see README), or run as root" >&2
  fi
fi

[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# torch first and pinned (a bare 'torch' may pull a multi-GB download); timm needs the matching torchvision.
"$venv/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
"$venv/bin/python" -m pip install -q -e ".[test]"
