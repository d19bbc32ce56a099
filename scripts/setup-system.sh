#!/usr/bin/env bash
# Install the Debian packages the project needs, only those missing, as root or through sudo.
# Kept as one list so that `make test`, `make demo` and CI agree on a fresh machine.
set -euo pipefail

packages=(
  python3-venv            # the project venv
  libimage-exiftool-perl  # tests: prove photos carry no metadata
  libjpeg-turbo-progs     # jpegtran: lossless orientation correction
  fonts-dejavu-core       # a Unicode font for report.pdf
  poppler-utils           # tests and docs: render report.pdf pages
  postgresql              # key server: production database; tests start a throwaway cluster from it
  chromium                # tests: the recipient page's WebCrypto code in real headless Chromium
  rclone                  # the rclone destination (cloud storage); tests: rclone serve webdav/sftp
  systemd                 # tests: `systemd-analyze verify` over the deploy/ units
  nftables                # tests: `nft --check` on the station firewall ruleset
  caddy                   # tests: `caddy adapt` on the key server's Caddyfiles
  orthanc                 # tests: a real PACS for the DICOMweb destination
  orthanc-dicomweb        # tests: Orthanc's DICOMweb (STOW/QIDO/WADO-RS) plugin
  dicom3tools             # tests: dciodvfy checks the DICOM objects against their IODs
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "Installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq

# The tests run caddy, orthanc and postgresql themselves, on loopback and free ports. Debian would also
# start them as system services (caddy on port 80 of every interface): policy-rc.d (Debian's standard
# switch) stops that during the install, and the ones installed here are disabled afterwards.
policy=/usr/sbin/policy-rc.d
own_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  own_policy=yes
fi
status=0
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" || status=$?
[ -n "$own_policy" ] && $sudo rm -f "$policy"
[ "$status" -eq 0 ] || exit "$status"

if [ -d /run/systemd/system ]; then
  for service in caddy orthanc postgresql; do
    if printf '%s\n' "${missing[@]}" | grep -qx "$service"; then
      $sudo systemctl disable --now "$service" >/dev/null 2>&1 || true
    fi
  done
fi
