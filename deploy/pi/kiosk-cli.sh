#!/bin/sh
# /usr/local/bin/kiosk on the station: the station's command line, run as the kiosk user (who owns
# /var/lib/kiosk) with the station's configuration. Examples: kiosk doctor, kiosk outbox list, kiosk enroll.
export KIOSK_CONFIG="${KIOSK_CONFIG:-/boot/firmware/kiosk.toml}"
if [ "$(id -un)" = kiosk ]; then
  exec /opt/kiosk/venv/bin/kiosk "$@"
elif [ "$(id -u)" -eq 0 ]; then
  exec runuser -u kiosk -- env KIOSK_CONFIG="$KIOSK_CONFIG" /opt/kiosk/venv/bin/kiosk "$@"
else
  exec sudo -u kiosk env KIOSK_CONFIG="$KIOSK_CONFIG" /opt/kiosk/venv/bin/kiosk "$@"
fi
