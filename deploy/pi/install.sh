#!/usr/bin/env bash
# Clinical Photo Kiosk: turn a Raspberry Pi 4 or 5 running Raspberry Pi OS Bookworm 64-bit (Lite or
# Desktop) into a locked-down, wall-mounted photo station. Run it from a checkout, as root:
#
#   sudo git clone <repository> /opt/kiosk/src && sudo /opt/kiosk/src/deploy/pi/install.sh
#
# It is idempotent: run it again after `git pull` to update. Files it owns are rewritten; the settings
# you edit (/boot/firmware/kiosk.toml, /etc/kiosk/*, the NTP servers) are written only when missing.
#
#   --root DIR        dry run: lay every file down under DIR, run no apt/useradd/systemctl, and print the
#                     commands it would run (the tests use this)
#   --source DIR      the checkout to install (default: the one this script is in)
#   --station-id ID   station id for a new kiosk.toml (default: the host name)
#   --kernel VERSION  kernel release deciding the tmpfs `noswap` option (default: uname -r)
#   --overlayfs       also make the root file system read-only (raspi-config overlayfs; see
#                     docs/install-pi.md for what that means for the outbox)
#
# What it sets up, top to bottom: packages; the kiosk user; /opt/kiosk/venv with this project; the data
# dir, the config and /run/kiosk (tmpfs); kiosk.service; the display (labwc + Chromium in kiosk mode);
# no swap, no core dumps, a RAM-only journal; the firewall; time sync; unattended security upgrades.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root=""
source_dir="$(cd "$here/../.." && pwd)"
station_id=""
kernel="$(uname -r)"
overlayfs=0

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="${2:?--root needs a directory}"; shift 2 ;;
    --source) source_dir="${2:?--source needs a directory}"; shift 2 ;;
    --station-id) station_id="${2:?--station-id needs a value}"; shift 2 ;;
    --kernel) kernel="${2:?--kernel needs a version}"; shift 2 ;;
    --overlayfs) overlayfs=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

dry=0
if [ -n "$root" ]; then
  dry=1
  mkdir -p "$root"
  root="$(cd "$root" && pwd)"
fi

# Paths on the station (the same in a dry run, under $root).
prefix=/opt/kiosk
venv="$prefix/venv"
data_dir=/var/lib/kiosk
config_file=/boot/firmware/kiosk.toml
etc_kiosk=/etc/kiosk
home=/home/kiosk
url="http://127.0.0.1:8080/"

log() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }

# Run a command, or in a dry run print it.
run() {
  if [ "$dry" -eq 1 ]; then
    printf 'would run:'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# put SOURCE DEST MODE [OWNER:GROUP]: install a file from the checkout (always rewritten).
put() {
  local src="$1" dest="$2" mode="$3" owner="${4:-root:root}"
  install -D -m "$mode" "$src" "$root$dest"
  if [ "$owner" != "root:root" ]; then run chown "$owner" "$dest"; fi
  if [ "$dry" -eq 0 ]; then chown "$owner" "$dest"; fi
}

# put_text DEST MODE [OWNER:GROUP] < text
put_text() {
  local dest="$1" mode="$2" owner="${3:-root:root}" tmp
  tmp="$(mktemp)"
  cat >"$tmp"
  put "$tmp" "$dest" "$mode" "$owner"
  rm -f "$tmp"
}

# put_if_missing SOURCE DEST MODE [OWNER:GROUP]: settings the administrator edits are never overwritten.
put_if_missing() {
  if [ -e "$root$2" ]; then
    note "keeping $2 (yours to edit)"
  else
    put "$@"
  fi
}

make_dir() { # make_dir DIR MODE [OWNER:GROUP]
  local dir="$1" mode="$2" owner="${3:-root:root}"
  install -d -m "$mode" "$root$dir"
  if [ "$dry" -eq 1 ]; then
    if [ "$owner" != "root:root" ]; then run chown "$owner" "$dir"; fi
  else
    chown "$owner" "$dir"
    chmod "$mode" "$dir"
  fi
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
available() { apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -qv '(none)'; }

# --- 0. preflight -------------------------------------------------------------------------------------------
if [ "$dry" -eq 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "run as root: sudo $0 $*" >&2
    exit 1
  fi
  # shellcheck disable=SC1091
  . /etc/os-release
  if [ "${VERSION_CODENAME:-}" != bookworm ]; then
    echo "warning: written for Raspberry Pi OS Bookworm; this is ${PRETTY_NAME:-unknown}" >&2
  fi
  if [ "$(uname -m)" != aarch64 ]; then
    echo "warning: written for 64-bit Raspberry Pi OS (aarch64); this is $(uname -m)" >&2
  fi
  if [ ! -d /boot/firmware ]; then
    echo "no /boot/firmware: this is not Raspberry Pi OS Bookworm" >&2
    exit 1
  fi
else
  echo "dry run: installing into $root; commands are printed, not run"
fi
if [ ! -f "$source_dir/pyproject.toml" ]; then
  echo "no checkout at $source_dir (pyproject.toml missing); pass --source" >&2
  exit 1
fi

# --- 1. packages --------------------------------------------------------------------------------------------
log "packages"
packages=(
  python3-venv python3-picamera2   # the venv sees picamera2 (libcamera bindings) from the system
  libjpeg-turbo-progs              # jpegtran: lossless orientation fixes on stdin/stdout
  fonts-dejavu-core                # report.pdf and the touchscreen
  rclone                           # the rclone destination (cloud storage)
  labwc wlr-randr curl             # the display: a Wayland compositor; curl waits for the app
  nftables                         # the firewall
  unattended-upgrades              # security updates every night
  systemd-timesyncd                # a correct clock for TLS and audit times
)
# pyzbar is not used (barcodes are read by zxing-cpp, a wheel), so libzbar0 is not needed.
if [ "$dry" -eq 1 ]; then
  run apt-get update
  run apt-get install -y --no-install-recommends "${packages[@]}" "chromium|chromium-browser" python3-lgpio wlopm
else
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # Raspberry Pi OS renamed its Chromium build from chromium-browser to chromium in 2025; before that,
  # `chromium` came from Debian without the Pi's hardware video decoding. Prefer what is installed.
  browser=chromium
  if installed chromium-browser && ! installed chromium; then
    browser=chromium-browser
  elif ! installed chromium && apt-cache policy chromium-browser 2>/dev/null | grep -q archive.raspberrypi \
    && ! apt-cache policy chromium 2>/dev/null | grep -q archive.raspberrypi; then
    browser=chromium-browser
  fi
  optional=()
  for p in python3-lgpio wlopm; do # lgpio: gpiozero on the Pi 5; wlopm: display power (Pi OS repository)
    if available "$p"; then optional+=("$p"); fi
  done
  apt-get install -y -q --no-install-recommends "${packages[@]}" "$browser" "${optional[@]}"
fi

# --- 2. the kiosk user --------------------------------------------------------------------------------------
log "user kiosk"
groups=()
for g in video gpio render input; do
  if getent group "$g" >/dev/null; then groups+=("$g"); fi
done
if [ "$dry" -eq 1 ] || ! getent passwd kiosk >/dev/null; then
  run useradd --system --user-group --create-home --home-dir "$home" --shell /usr/sbin/nologin \
    --comment "Clinical Photo Kiosk" kiosk
fi
if [ ${#groups[@]} -gt 0 ]; then
  run usermod --append --groups "$(IFS=,; echo "${groups[*]}")" kiosk
fi
run passwd --lock kiosk
if getent passwd kiosk >/dev/null; then
  kiosk_uid="$(id -u kiosk)"
  kiosk_gid="$(id -g kiosk)"
else # dry run on a machine without the user: a typical system uid
  kiosk_uid=999
  kiosk_gid=999
fi

# --- 3. the application -------------------------------------------------------------------------------------
log "application in $venv (from $source_dir)"
make_dir "$prefix" 0755
make_dir "$prefix/bin" 0755
run python3 -m venv --system-site-packages "$venv"
# picamera2's compiled parts (python3-simplejpeg, python3-libcamera) are built against Debian's numpy 1.x:
# a numpy 2 in the venv would shadow it and break them. NumPy 1.x stays binary compatible upwards.
printf 'numpy<2\n' | put_text "$prefix/constraints.txt" 0644
run "$venv/bin/pip" install --quiet --upgrade pip
run "$venv/bin/pip" install --quiet --constraint "$prefix/constraints.txt" "${source_dir}[pi]"
run "$venv/bin/pip" install --quiet --no-deps --force-reinstall "$source_dir"
put "$here/kiosk-browser.sh" "$prefix/bin/kiosk-browser" 0755
put "$here/kiosk-cli.sh" /usr/local/bin/kiosk 0755

# --- 4. data, configuration, working RAM --------------------------------------------------------------------
log "data dir, configuration, /run/kiosk"
make_dir "$data_dir" 0700 kiosk:kiosk
make_dir "$etc_kiosk" 0750 root:kiosk
if [ -z "$station_id" ]; then
  station_id="$(hostname 2>/dev/null || echo station)"
fi
station_id="$(printf '%s' "$station_id" | tr -c 'A-Za-z0-9._-' '-' | cut -c1-64)"
if [ -e "$root$config_file" ]; then
  note "keeping $config_file (yours to edit)"
else
  sed "s/@STATION_ID@/$station_id/" "$here/kiosk.toml.template" | put_text "$config_file" 0644
  note "wrote $config_file for station $station_id: set the key server URL and destinations"
fi
noswap=""
kernel_major="${kernel%%.*}"
kernel_minor="${kernel#*.}"
kernel_minor="${kernel_minor%%[!0-9]*}"
if [ "$kernel_major" -gt 6 ] || { [ "$kernel_major" -eq 6 ] && [ "${kernel_minor:-0}" -ge 4 ]; }; then
  noswap=",noswap"
else
  note "kernel $kernel has no tmpfs noswap (6.4+); swap is disabled below, so RAM pages still stay off disk"
fi
sed -e "s/@KIOSK_UID@/$kiosk_uid/" -e "s/@KIOSK_GID@/$kiosk_gid/" -e "s/@NOSWAP@/$noswap/" \
  "$here/run-kiosk.mount" | put_text /etc/systemd/system/run-kiosk.mount 0644

# --- 5. the station service ---------------------------------------------------------------------------------
log "kiosk.service"
put "$here/kiosk.service" /etc/systemd/system/kiosk.service 0644

# --- 6. the display: labwc on tty7, Chromium in kiosk mode --------------------------------------------------
log "display (labwc + Chromium)"
put "$here/kiosk-display.service" /etc/systemd/system/kiosk-display.service 0644
put "$here/kiosk-display.pam" /etc/pam.d/kiosk-display 0644
make_dir "$home" 0700 kiosk:kiosk
make_dir "$home/.config" 0755 kiosk:kiosk
# labwc's configuration belongs to root: the browser (running as kiosk) cannot change what starts.
make_dir "$home/.config/labwc" 0755
for f in autostart environment rc.xml menu.xml; do
  put "$here/labwc/$f" "$home/.config/labwc/$f" 0644
done
for dir in /etc/chromium/policies/managed /etc/chromium-browser/policies/managed; do
  put "$here/chromium-policy.json" "$dir/kiosk.json" 0644
done
# An invisible pointer: a cursor theme whose every cursor is one transparent pixel (Xcursor format).
theme=/usr/share/icons/kiosk-invisible
make_dir "$theme/cursors" 0755
printf '[Icon Theme]\nName=kiosk-invisible\nComment=No visible pointer (touchscreen station)\n' \
  | put_text "$theme/index.theme" 0644
{
  # header: magic, header size 16, version 1.0, 1 TOC entry
  printf '%b' 'Xcur\x10\x00\x00\x00\x00\x00\x01\x00\x01\x00\x00\x00'
  # TOC: image type 0xfffd0002, nominal size 24, at byte 28
  printf '%b' '\x02\x00\xfd\xff\x18\x00\x00\x00\x1c\x00\x00\x00'
  # image: header 36, type, size 24, version 1, 1x1 pixel, hotspot 0,0, delay 0, one transparent ARGB pixel
  printf '%b' '\x24\x00\x00\x00\x02\x00\xfd\xff\x18\x00\x00\x00\x01\x00\x00\x00'
  printf '%b' '\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00'
  printf '%b' '\x00\x00\x00\x00'
} | put_text "$theme/cursors/default" 0644
for name in left_ptr arrow pointer hand1 hand2 text xterm ibeam watch wait progress left_ptr_watch \
  crosshair cross not-allowed grab grabbing move all-scroll col-resize row-resize context-menu help; do
  ln -sfn default "$root$theme/cursors/$name"
done
run systemctl set-default graphical.target
# Raspberry Pi OS Desktop starts a display manager (lightdm) on tty7; the station's screen is kiosk-display.
if [ "$dry" -eq 1 ]; then
  run systemctl disable lightdm.service
elif [ -L /etc/systemd/system/display-manager.service ]; then
  run systemctl disable "$(basename "$(readlink -f /etc/systemd/system/display-manager.service)")"
fi

# --- 7. nothing plaintext reaches the SD card: no swap, no core dumps, a RAM-only journal ------------------
log "swap off, core dumps off, journal in RAM"
put "$here/system/journald.conf" /etc/systemd/journald.conf.d/50-kiosk.conf 0644
put "$here/system/coredump.conf" /etc/systemd/coredump.conf.d/50-kiosk.conf 0644
put "$here/system/system.conf" /etc/systemd/system.conf.d/50-kiosk.conf 0644
put "$here/system/sysctl.conf" /etc/sysctl.d/90-kiosk.conf 0644
put "$here/system/limits.conf" /etc/security/limits.d/50-kiosk.conf 0644
put "$here/system/zram-generator.conf" /etc/systemd/zram-generator.conf 0644
put "$here/system/rpi-swap.conf" /etc/rpi/swap.conf.d/90-kiosk.conf 0644
if [ "$dry" -eq 1 ] || installed dphys-swapfile; then # Raspberry Pi OS's swap file (before 2025)
  run dphys-swapfile swapoff
  run dphys-swapfile uninstall
  run systemctl disable --now dphys-swapfile.service
  run apt-get purge -y dphys-swapfile
fi
if [ "$dry" -eq 1 ] || installed zram-tools; then
  run systemctl disable --now zramswap.service
  run apt-get purge -y zram-tools
fi
if [ "$dry" -eq 1 ] || installed rsyslog; then # it would copy the journal to /var/log
  run systemctl disable --now rsyslog.service
  run apt-get purge -y rsyslog
fi
run systemctl mask swap.target # nothing (fstab, zram, rpi-swap) can activate swap
run swapoff --all
run sysctl --quiet --system
run systemctl daemon-reexec # DefaultLimitCORE=0
run systemctl restart systemd-journald.service
run rm -rf /var/log/journal

# --- 8. firewall --------------------------------------------------------------------------------------------
log "firewall (nftables)"
put "$here/nftables.conf" /etc/nftables.conf 0644
put_if_missing "$here/firewall-local.nft" "$etc_kiosk/firewall-local.nft" 0644

# --- 9. time, updates -------------------------------------------------------------------------------------
log "time sync and unattended upgrades"
put_if_missing "$here/system/timesyncd.conf" /etc/systemd/timesyncd.conf.d/50-kiosk.conf 0644
put "$here/system/20auto-upgrades" /etc/apt/apt.conf.d/20auto-upgrades 0644
put "$here/system/52kiosk-unattended-upgrades" /etc/apt/apt.conf.d/52kiosk-unattended-upgrades 0644

# --- 10. start ----------------------------------------------------------------------------------------------
log "enable and start"
run systemctl daemon-reload
run systemctl enable --now nftables.service systemd-timesyncd.service unattended-upgrades.service
run timedatectl set-ntp true
run systemctl enable --now run-kiosk.mount
run systemctl enable kiosk.service kiosk-display.service
run systemctl restart kiosk.service
run systemctl restart kiosk-display.service

if [ "$overlayfs" -eq 1 ]; then
  log "read-only root (overlayfs)"
  note "every write to / goes to RAM and is lost at reboot, including $data_dir (the outbox)."
  note "Keep $data_dir on a separate writable partition first (docs/install-pi.md)."
  run raspi-config nonint enable_overlayfs
  note "reboot to activate; \`raspi-config nonint disable_overlayfs\` and a reboot to update the station"
fi

log "done"
cat <<EOF
    Next:
      1. Edit $config_file (key server URL, destinations), or from a PC: bootfs/kiosk.toml
      2. sudo reboot
      3. Enroll on the admin screen, or: kiosk enroll --key-server https://keys.example.org --code CODE
      4. kiosk doctor
    The station app: $url (this machine only). Logs: journalctl -u kiosk -u kiosk-display
EOF
