#!/usr/bin/env bash
# Clinical Photo Kiosk key server on a Debian 12 (bookworm) VM: PostgreSQL, the key server under gunicorn
# as a systemd service (master secret as a systemd credential), Caddy in front for TLS, and timers for
# KEK rotation, inbox retention, audit verification and nightly encrypted backups. As root:
#
#   sudo git clone <repository> /opt/keyserver/src
#   sudo /opt/keyserver/src/deploy/keyserver/install.sh --hostname keys.hospital.example
#
# Idempotent: run it again after `git pull` to update (migrations run when the service starts).
# The secrets, /etc/keyserver/keyserver.toml, /etc/default/keyserver and a customised Caddyfile are
# written only when missing.
#
#   --hostname NAME   the key server's DNS name (default: hostname -f)
#   --tls MODE        acme (default: automatic certificates) or own (the hospital's certificate in
#                     /etc/caddy/tls/keys.pem + key.pem)
#   --source DIR      the checkout to install (default: the one this script is in)
#   --root DIR        dry run: lay every file down under DIR, run nothing, print the commands instead
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root=""
source_dir="$(cd "$here/../.." && pwd)"
server_name=""
tls=acme

while [ $# -gt 0 ]; do
  case "$1" in
    --hostname) server_name="${2:?--hostname needs a name}"; shift 2 ;;
    --tls) tls="${2:?--tls needs acme or own}"; shift 2 ;;
    --source) source_dir="${2:?--source needs a directory}"; shift 2 ;;
    --root) root="${2:?--root needs a directory}"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$tls" in acme|own) ;; *) echo "--tls must be acme or own" >&2; exit 2 ;; esac

dry=0
if [ -n "$root" ]; then
  dry=1
  mkdir -p "$root"
  root="$(cd "$root" && pwd)"
fi
if [ -z "$server_name" ]; then
  server_name="$(hostname -f 2>/dev/null || hostname)"
fi

prefix=/opt/keyserver
venv="$prefix/venv"
etc=/etc/keyserver
backups=/var/backups/keyserver

log() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
run() {
  if [ "$dry" -eq 1 ]; then
    printf 'would run:'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}
put() { # put SOURCE DEST MODE [OWNER:GROUP]
  local src="$1" dest="$2" mode="$3" owner="${4:-root:root}"
  install -D -m "$mode" "$src" "$root$dest"
  if [ "$dry" -eq 1 ]; then
    if [ "$owner" != "root:root" ]; then run chown "$owner" "$dest"; fi
  else
    chown "$owner" "$dest"
  fi
}
put_text() { # put_text DEST MODE [OWNER:GROUP] < text
  local tmp
  tmp="$(mktemp)"
  cat >"$tmp"
  put "$tmp" "$@"
  rm -f "$tmp"
}
make_dir() { # make_dir DIR MODE [OWNER:GROUP]
  local owner="${3:-root:root}"
  install -d -m "$2" "$root$1"
  if [ "$dry" -eq 1 ]; then
    if [ "$owner" != "root:root" ]; then run chown "$owner" "$1"; fi
  else
    chown "$owner" "$1"
    chmod "$2" "$1"
  fi
}
# A random secret: 32 bytes as 64 hex digits, created only if missing, readable by root only.
new_secret() {
  if [ -e "$root$1" ]; then
    note "keeping $1"
  else
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' | put_text "$1" 0600
    note "created $1: keep a copy offline NOW (see docs/operations.md, backup and restore)"
  fi
}

if [ "$dry" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
  echo "run as root: sudo $0 $*" >&2
  exit 1
fi
if [ "$dry" -eq 1 ]; then
  echo "dry run: installing into $root; commands are printed, not run"
fi
if [ ! -f "$source_dir/pyproject.toml" ]; then
  echo "no checkout at $source_dir (pyproject.toml missing); pass --source" >&2
  exit 1
fi

log "packages"
run apt-get update -q
run apt-get install -y -q --no-install-recommends python3-venv postgresql caddy ca-certificates

log "user keyserver"
if [ "$dry" -eq 1 ] || ! getent passwd keyserver >/dev/null; then
  run useradd --system --user-group --home-dir /var/lib/keyserver --no-create-home \
    --shell /usr/sbin/nologin --comment "Clinical Photo Kiosk key server" keyserver
fi

log "application in $venv (from $source_dir)"
make_dir "$prefix" 0755
make_dir "$prefix/bin" 0755
run python3 -m venv "$venv"
run "$venv/bin/pip" install --quiet --upgrade pip
run "$venv/bin/pip" install --quiet "$source_dir"
run "$venv/bin/pip" install --quiet --no-deps --force-reinstall "$source_dir"
put "$here/keyserver-backup.sh" "$prefix/bin/keyserver-backup" 0755
put "$here/keyserver-cli.sh" /usr/local/bin/keyserver 0755

log "configuration and secrets in $etc"
make_dir "$etc" 0750 root:keyserver
if [ -e "$root$etc/keyserver.toml" ]; then
  note "keeping $etc/keyserver.toml (yours to edit)"
else
  sed "s/@HOSTNAME@/$server_name/" "$here/keyserver.toml.template" | put_text "$etc/keyserver.toml" 0640 root:keyserver
fi
new_secret "$etc/master.key"
new_secret "$etc/backup.passphrase"
if [ ! -e "$root/etc/default/keyserver" ]; then
  put_text /etc/default/keyserver 0644 <<'DEFAULTS'
# Settings for keyserver.service (kept across reinstalls); restart the service after a change.
# Workers: one batches audit commits best; 2 add capacity at more CPU per release (docs/performance.md).
# Bind: 127.0.0.1 behind Caddy on this
# host; a private address (and a firewall) when Caddy runs on another host.
#KEYSERVER_BIND=127.0.0.1:8700
#KEYSERVER_WORKERS=1     # one process batches audit commits best; see docs/keyserver.md
#KEYSERVER_THREADS=32    # at least the requests you expect at once, so releases join one batch
#KEYSERVER_PIN_WORKERS=1  # pin each worker to one CPU (keyserver.gunicorn_conf); 0 turns it off
DEFAULTS
fi
make_dir "$backups" 0700 keyserver:keyserver

log "PostgreSQL: role and database keyserver (peer authentication over the unix socket)"
if [ "$dry" -eq 1 ]; then
  run runuser -u postgres -- createuser keyserver
  run runuser -u postgres -- createdb --owner=keyserver keyserver
else
  run systemctl enable --now postgresql.service
  if ! runuser -u postgres -- psql -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'keyserver'" | grep -q 1; then
    run runuser -u postgres -- createuser keyserver
  fi
  if ! runuser -u postgres -- psql -tAc "SELECT 1 FROM pg_database WHERE datname = 'keyserver'" | grep -q 1; then
    run runuser -u postgres -- createdb --owner=keyserver keyserver
  fi
fi

log "systemd units and timers"
for unit in keyserver.service keyserver-rotate.service keyserver-rotate.timer keyserver-purge.service \
  keyserver-purge.timer keyserver-audit-verify.service keyserver-audit-verify.timer \
  keyserver-backup.service keyserver-backup.timer; do
  put "$here/$unit" "/etc/systemd/system/$unit" 0644
done

log "Caddy ($tls certificates for $server_name)"
caddyfile=Caddyfile
if [ "$tls" = own ]; then caddyfile=Caddyfile.hospital-cert; fi
if [ -e "$root/etc/caddy/Caddyfile" ] && ! grep -q '/usr/share/caddy' "$root/etc/caddy/Caddyfile"; then
  note "keeping /etc/caddy/Caddyfile (customised); the template is $here/$caddyfile"
else
  sed "s/keys\.hospital\.example/$server_name/g" "$here/$caddyfile" | put_text /etc/caddy/Caddyfile 0644
fi

log "enable and start"
run systemctl daemon-reload
run systemctl enable --now keyserver.service
run systemctl enable --now keyserver-rotate.timer keyserver-purge.timer keyserver-audit-verify.timer \
  keyserver-backup.timer
run systemctl reload-or-restart caddy.service
# The first KEK (afterwards the timer rotates it): a no-op when an active key exists and is not due.
run /usr/local/bin/keyserver kek rotate --if-due

log "done"
cat <<NEXT
    Next:
      1. Copy $etc/master.key and $etc/backup.passphrase to offline storage (two places).
      2. sudo keyserver user add <you> --role admin --totp
      3. Stations: sudo keyserver station enroll-code   (or the admin page at https://$server_name/)
      4. Check: curl -fsS https://$server_name/healthz ; systemctl list-timers 'keyserver-*'
NEXT
