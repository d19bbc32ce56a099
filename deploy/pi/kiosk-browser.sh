#!/usr/bin/env bash
# The station's browser, started by labwc's autostart as the kiosk user (installed as
# /opt/kiosk/bin/kiosk-browser): keep the screen on, wait until the station app answers, then run Chromium
# in kiosk mode, and start it again if it ever exits.
set -euo pipefail

url="${KIOSK_URL:-http://127.0.0.1:8080/}"
wait_seconds="${KIOSK_WAIT_SECONDS:-90}"

browser=""
for candidate in chromium chromium-browser; do
  if command -v "$candidate" >/dev/null 2>&1; then
    browser="$candidate"
    break
  fi
done
if [ -z "$browser" ]; then
  echo "kiosk-browser: neither chromium nor chromium-browser is installed" >&2
  exit 1
fi

# Screen blanking: this session runs no idle daemon (swayidle), so nothing turns the panel off; make sure
# every output is on in case firmware or a previous session left it off.
if command -v wlopm >/dev/null 2>&1; then
  wlopm --on '*' || true
fi

# Wait for the app (kiosk.service) so the first screen is the station, not an error page. If it does not
# answer in time, start anyway: Chromium reloads its error page by itself once the app is up.
deadline=$((SECONDS + wait_seconds))
until curl --silent --fail --output /dev/null --max-time 2 "$url"; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "kiosk-browser: $url did not answer within ${wait_seconds}s; starting the browser anyway" >&2
    break
  fi
  sleep 1
done

# shellcheck disable=SC2054  # the commas belong to --disable-features
flags=(
  --kiosk
  --noerrdialogs
  --disable-infobars
  --disable-session-crashed-bubble
  --incognito
  --disable-pinch
  --overscroll-history-navigation=0
  --check-for-update-interval=31536000
  --disable-features=Translate,TouchpadOverscrollHistoryNavigation
  --disable-background-networking
  --disable-component-update
  --disable-sync
  --no-first-run
  --password-store=basic
  --ozone-platform=wayland
  --touch-events=enabled
)

# The profile lives in $XDG_RUNTIME_DIR (RAM, per session) and is recreated on every start: nothing the
# browser caches (preview frames, form state) reaches the SD card or outlives the browser.
profile="${XDG_RUNTIME_DIR:-/tmp}/kiosk-chromium"
while true; do
  rm -rf "$profile"
  mkdir -m 0700 "$profile"
  "$browser" "${flags[@]}" --user-data-dir="$profile" "$url" || true
  echo "kiosk-browser: $browser exited; restarting in 2 s" >&2
  sleep 2
done
