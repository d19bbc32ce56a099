#!/bin/sh
# /usr/local/bin/keyserver on the key server host: the `keyserver` command line with the same user,
# configuration and master secret credential as keyserver.service (run it as root / with sudo).
#   sudo keyserver user add alice --role admin
#   sudo keyserver station enroll-code
#   sudo keyserver audit verify
if [ "$(id -u)" -ne 0 ]; then
  echo "run with sudo: it reads the master secret credential" >&2
  exit 1
fi
if [ -t 0 ] && [ -t 1 ]; then io=--pty; else io=--pipe; fi
exec systemd-run --quiet --wait --collect --same-dir "$io" \
  --uid=keyserver --gid=keyserver \
  --property=LoadCredential=keyserver-master:/etc/keyserver/master.key \
  --property=UMask=0077 \
  --setenv=KEYSERVER_CONFIG=/etc/keyserver/keyserver.toml \
  /opt/keyserver/venv/bin/keyserver "$@"
