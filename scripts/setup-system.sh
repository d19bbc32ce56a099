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
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
