"""Browser-like helpers over requests: log in through the real login form, read CSRF tokens."""

from __future__ import annotations

import re

import requests

_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')


def csrf_from(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(url: str, username: str, password: str) -> tuple[requests.Session, str]:
    """A signed-in session and its CSRF token."""
    session = requests.Session()
    form = session.get(f"{url}/login", timeout=10)
    r = session.post(
        f"{url}/login",
        data={"username": username, "password": password, "csrf_token": csrf_from(form.text)},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 302, r.text
    page = session.get(f"{url}/open" if username != "audrey" else f"{url}/audit", timeout=10)
    return session, csrf_from(page.text)
