#!/usr/bin/env bash
# Debian packages for the real-server tests (tests/test_real_servers.py) and docs/servers.md:
# nginx (static hosting, reverse proxy) and Orthanc with its DICOMweb and GDCM plugins.
# Idempotent and quiet: does nothing when everything is installed. Never starts a service.
#   bash tools/install_servers.sh
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
[ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
[ -e /usr/share/orthanc/plugins/libOrthancGdcm.so ] || need+=(orthanc-gdcm)
[ ${#need[@]} -eq 0 ] && exit 0

echo "install_servers.sh: installing ${need[*]} (apt)"
# Package scripts must not start the system services (no init here; tests start their own).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy"
  created_policy=1
fi
trap '[ "$created_policy" = 1 ] && as_root rm -f "$policy"' EXIT
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
