#!/usr/bin/env bash
# Nightly key server backup (keyserver-backup.service runs it as the keyserver user): one encrypted file
# with the database and the KEKs (re-encrypted under the backup passphrase), then old backups are pruned.
# Installed as /opt/keyserver/bin/keyserver-backup. Copy $KEYSERVER_BACKUP_DIR off this host (the
# hospital's backup system); keep the passphrase somewhere else (a safe, a password manager).
set -euo pipefail

backup_dir="${KEYSERVER_BACKUP_DIR:-/var/backups/keyserver}"
keep_days="${KEYSERVER_BACKUP_KEEP_DAYS:-30}"
passphrase_file="${CREDENTIALS_DIRECTORY:?run from keyserver-backup.service (systemd credentials)}/keyserver-backup-passphrase"
keyserver="${KEYSERVER_BIN:-/opt/keyserver/venv/bin/keyserver}"

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$backup_dir/keyserver-$stamp.ksbackup"
"$keyserver" backup --out "$out.partial" --passphrase-file "$passphrase_file"
mv "$out.partial" "$out"
echo "backup written: $out"
find "$backup_dir" -maxdepth 1 -name 'keyserver-*.ksbackup' -mtime +"$keep_days" -print -delete
find "$backup_dir" -maxdepth 1 -name 'keyserver-*.ksbackup.partial' -mmin +60 -delete
