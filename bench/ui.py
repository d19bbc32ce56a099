"""Station UI figures: GPIO press -> thumbnail in the page, server time per screen, Send, idle RSS.

    .venv/bin/python bench/ui.py [--presses 20] [--sends 5]

Runs the real app with the mock camera at its default still size (4056x3040, the Pi HQ camera) and
gpiozero's MockFactory, in headless Chromium. Prints a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from screenshots import CHROMIUM, CHROMIUM_ARGS, STAFF_PIN, demo_station, demo_toml


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} / {pct(values, 0.9) * 1000:.0f}"


def to_capture(http: requests.Session, url: str) -> None:
    """Sign in, patient, verbal consent and a body site, as the pages' forms post them."""
    http.post(f"{url}/signin/pin", data={"staff_id": "1001", "pin": STAFF_PIN})
    http.post(f"{url}/patient/type", data={"mrn": "MRN0012345"})
    http.post(
        f"{url}/patient/confirm", data={"action": "typed-dob", "day": "1", "month": "1", "year": "1980"}
    )
    http.post(f"{url}/consent/who", data={"consenter": "patient"})
    http.post(f"{url}/consent/how", data={"method": "verbal"})
    for i in range(5):
        http.post(f"{url}/consent/purpose/{i}", data={"answer": "yes"})
    http.post(f"{url}/capture/site", data={"region": "front-lower-leg-a", "laterality": "right"})


def gpio_latency(url: str, runtime: Any, factory: Any, presses: int) -> tuple[list[float], list[float]]:
    from playwright.sync_api import sync_playwright

    shown, ready = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 720}, base_url=url)
        page = context.new_page()
        page.goto("/")
        page.locator("#staff_id").fill("1001")
        page.locator("#pin").fill(STAFF_PIN)
        page.get_by_test_id("pin-submit").click()
        cookies = {c["name"]: c["value"] for c in context.cookies()}
        http = requests.Session()
        http.cookies.update(cookies)
        http.post(f"{url}/patient/type", data={"mrn": "MRN0012345"})
        http.post(
            f"{url}/patient/confirm", data={"action": "typed-dob", "day": "1", "month": "1", "year": "1980"}
        )
        http.post(f"{url}/consent/who", data={"consenter": "patient"})
        http.post(f"{url}/consent/how", data={"method": "verbal"})
        for i in range(5):
            http.post(f"{url}/consent/purpose/{i}", data={"answer": "yes"})
        page.goto("/capture")
        page.wait_for_timeout(1000)
        pin = factory.pin(17)
        for n in range(1, presses + 1):
            start = time.perf_counter()
            pin.drive_low()
            pin.drive_high()
            page.wait_for_function(
                "n => document.querySelectorAll('[data-testid=thumb]').length >= n", arg=n, polling="raf"
            )
            shown.append(time.perf_counter() - start)
            page.wait_for_function(
                "n => document.querySelectorAll('[data-testid=thumb][data-state=ready]').length >= n",
                arg=n,
                polling="raf",
            )
            ready.append(time.perf_counter() - start)
            time.sleep(0.1)
        browser.close()
    return shown, ready


def page_times(url: str, runtime: Any, repeat: int = 15) -> dict[str, list[float]]:
    anonymous = requests.Session()
    http = requests.Session()
    to_capture(http, url)
    http.post(f"{url}/capture/shoot")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(
        p.state == "ready" for p in runtime.sessions.current.photos
    ):
        time.sleep(0.05)
    photo = runtime.sessions.current.photos[0].id
    screens = {
        "sign-in": (anonymous, "/"),
        "capture": (http, "/capture"),
        "body map": (http, "/capture/site"),
        "photo": (http, f"/capture/photo/{photo}"),
        "thumbnail": (http, f"/capture/photo/{photo}/thumb.jpg"),
        "review": (http, "/review"),
        "status poll": (http, "/api/status"),
    }
    times: dict[str, list[float]] = {}
    for name, (client, path) in screens.items():
        for _ in range(repeat):
            start = time.perf_counter()
            response = client.get(url + path, allow_redirects=False)
            times.setdefault(name, []).append(time.perf_counter() - start)
            assert response.status_code == 200, (name, response.status_code)
    runtime.sessions.end(runtime.sessions.current, "bench")
    return times


def send_times(url: str, runtime: Any, sends: int) -> tuple[list[float], list[float]]:
    request_s, server_s = [], []
    for _ in range(sends):
        http = requests.Session()
        to_capture(http, url)
        for _ in range(3):
            http.post(f"{url}/capture/shoot")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            photos = runtime.sessions.current.photos
            if len(photos) == 3 and all(p.state == "ready" for p in photos):
                break
            time.sleep(0.05)
        http.get(f"{url}/review")  # preselects the default destination, as the screen does
        start = time.perf_counter()
        response = http.post(f"{url}/send", allow_redirects=False)
        request_s.append(time.perf_counter() - start)
        assert response.status_code == 302 and response.headers["location"].endswith("/done"), response.text[
            :500
        ]
        server_s.append(runtime.last_send_seconds)
    return request_s, server_s


def idle_rss() -> float:
    """VmRSS (MB) of a `kiosk serve` process with the mock camera, 5 s after it answers."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from kiosk.sealing import passphrase

        (root / "share").mkdir()
        passphrase.write_new_file(root / "share.key")
        (root / "kiosk.toml").write_text(demo_toml(root).replace("[gpio]", "[gpio]\nenabled = false"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        kiosk = Path(sys.executable).parent / "kiosk"
        process = subprocess.Popen(
            [str(kiosk), "--config", str(root / "kiosk.toml"), "serve", "--port", str(port)],
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    time.sleep(0.2)
            time.sleep(5)
            status = Path(f"/proc/{process.pid}/status").read_text()
            return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presses", type=int, default=20)
    parser.add_argument("--sends", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, demo_station(Path(tmp)) as (url, runtime, factory):
        still = runtime.camera.info.still_size
        shown, ready = gpio_latency(url, runtime, factory, args.presses)
        runtime.sessions.end(runtime.sessions.current, "bench")
        pages = page_times(url, runtime)
        request_s, server_s = send_times(url, runtime, args.sends)
    rss = idle_rss()
    load = os.getloadavg()[0]
    print(
        f"mock camera still {still[0]}x{still[1]}; load average at end {load:.1f} on {os.cpu_count()} cores\n"
    )
    print("| measure | median / p90 ms | n |")
    print("| --- | ---: | ---: |")
    print(f"| GPIO press → thumbnail visible in the page | {fmt(shown)} | {len(shown)} |")
    print(f"| GPIO press → full still stripped and ready | {fmt(ready)} | {len(ready)} |")
    for name, values in pages.items():
        print(f"| server time: {name} | {fmt(values)} | {len(values)} |")
    print(f"| Send, 3 photos: POST /send request | {fmt(request_s)} | {len(request_s)} |")
    print(f"| Send, 3 photos: assemble + seal + queue (server) | {fmt(server_s)} | {len(server_s)} |")
    print(f"\nidle RSS of `kiosk serve` (mock camera, no GPIO): {rss:.0f} MB")


if __name__ == "__main__":
    main()
