#!/usr/bin/env bash
# The one test command: installs what the tests need on a fresh machine, then runs every test.
#   bash tools/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# System packages: Debian's chromium for the browser tests (Playwright drives /usr/bin/chromium;
# never `playwright install`, which downloads a browser).
need_apt=()
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# OpenJPEG for glymur, which writes the classic JPEG 2000 streams of the packet-reader tests.
dpkg -s libopenjp2-7 >/dev/null 2>&1 || need_apt+=(libopenjp2-7)
# Node.js and npm: set-up packs the runtime from the npm registry and compiles it inside Pyodide
# under Node (tools/runtime/); machines of this kind have them, this is for one that does not.
command -v node >/dev/null && command -v npm >/dev/null || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "test.sh: installing ${need_apt[*]} (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Real servers for the orthanc/nginx tests (Debian's nginx-light, orthanc, orthanc-dicomweb).
bash tools/install_servers.sh

echo "test.sh: Python packages"
python -m pip install -q --disable-pip-version-check -r requirements-dev.txt

echo "test.sh: browser runtime and demo data"
python tools/setup_runtime.py
python tools/demo_data.py
python tools/setup_peer.py  # the Cornerstone3D peer page (npm + esbuild) for tests/test_peer.py and bench --peer

echo "test.sh: pytest"
exec python -m pytest "$@"
