"""BENCH ONLY, never deploy: the key server app plus one endpoint that answers an unwrap WITHOUT its audit.

`POST /bench/unwrap-no-audit` takes the same request as `POST /v1/unwrap` and does everything the request
thread does before a release joins its audit batch (reports.prepare_release: JSON body, header validation,
canonical header and its hash, base64, the token's hash, the HPKE unwrap with the cached private key), then
answers with the data key as /v1/unwrap answers (api.release_answer) — no token lookup, no policy, no
database, no audit record.
bench/keyserver.py measures it next to the no-op and the real unwrap, on the same gunicorn stack in the same
run, to split the unwrap's cost into "the work the request itself needs" and "deciding and recording it".

It refuses to load unless KEYSERVER_BENCH_CEILING=1, which only bench/keyserver.py sets for its throwaway
server on 127.0.0.1.
"""

from __future__ import annotations

import os

from flask import Response, abort, g

from keyserver import app as keyserver_app
from keyserver import reports
from keyserver.api import json_body, release_answer

if os.environ.get("KEYSERVER_BENCH_CEILING") != "1":
    raise RuntimeError("bench/keyserver_ceiling.py answers unwraps without audit: bench only")

# After the guard: importing builds the app from KEYSERVER_CONFIG.
from keyserver.wsgi import app

ENDPOINT = "bench_unwrap_no_audit"


def unwrap_no_audit() -> Response:
    if not g.deferred_token:
        abort(401)
    item = reports.prepare_release(
        keyserver_app.state().keys,
        None,
        json_body(),
        action="key.release",
        delivery=False,
        details={"ip": keyserver_app.client_ip(), "via": "token"},
        token=g.deferred_token,
    )
    if item.early is None or item.early[1] is None:  # key not cached yet (no /v1/unwrap before) or bad
        abort(503)
    return release_answer(item.header.report_id, item.header.kek_version or 0, item.early[1], 0)


app.add_url_rule("/bench/unwrap-no-audit", ENDPOINT, unwrap_no_audit, methods=["POST"])
# Like /v1/unwrap: the bearer token is not looked up by the request hook (the release batch does that).
keyserver_app.DEFERRED_TOKEN_ENDPOINTS.add(ENDPOINT)
