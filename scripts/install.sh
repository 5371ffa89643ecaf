#!/usr/bin/env bash
# Install scrubin and everything it needs into .venv, Debian packages included.
#   bash scripts/install.sh            runtime only
#   bash scripts/install.sh test       runtime + test extras (pytest, pydicom, ...)
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
# libusb-1.0-0: Open3D 0.20 does not import without it. libgl1/libgomp1: Open3D and VTK.
deb_packages=(libusb-1.0-0 libgl1 libgomp1)
# chromium: the mentor page is tested in a real browser (Playwright drives the system one).
# nftables: the packet-loss tests drop packets inside a network namespace they create.
[[ "$extras" == *test* ]] && deb_packages+=(chromium nftables)
# Playwright must never download its own browser: there is no network here, and Debian's is used.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

missing=()
for pkg in "${deb_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    echo "scrubin install: Debian packages ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        2> >(grep -v "^debconf: delaying package configuration" >&2)
fi

if [[ ! -x .venv/bin/python ]]; then
    echo "scrubin install: creating .venv"
    python3 -m venv .venv
fi
spec="."
[[ -n "$extras" ]] && spec=".[$extras]"
echo "scrubin install: Python packages ($spec)"
# pip warns once per package about find-links folders this machine does not have; hide only those lines.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec" 2> >(grep -v "^WARNING: Location .* is ignored" >&2)
.venv/bin/python -c "import open3d, SimpleITK, vtk, zmq, aiortc, aiohttp, pyigtl"
# Compile the registration kernels once (Numba caches them beside the module): the first
# compile takes tens of seconds, which must never be spent in theatre.
.venv/bin/python -c "from registration import batch_fit, dense_fit; batch_fit.warm_up(); dense_fit.warm_up()"
echo "scrubin install: done (.venv/bin/scrubin)"
