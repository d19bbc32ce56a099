"""A small but real FHIR R4 server for tests: HTTP on 127.0.0.1, resources in memory.

It speaks the parts of the FHIR RESTful API a kiosk uses, with the spec's semantics:

- ``POST /`` a transaction Bundle (``application/fhir+json``), validated with fhir.resources (R4B models,
  the closest to R4 that the library ships); 400 + OperationOutcome when it is not valid FHIR;
- entries processed in the spec's order (POST, then PUT), all or nothing: conditional creates honour
  ``ifNoneExist`` (existing match: 200 and no new resource; several: 412), PUT creates or updates a
  client-chosen id, fullUrls and conditional references (``Patient?identifier=…``: none found 404,
  several 412) are rewritten to ``Type/id`` everywhere in the bundle, as the transaction rules require;
- a ``transaction-response`` Bundle with ``response.status`` and ``location`` per entry;
- ``GET /<Type>/<id>`` and ``GET /<Type>?identifier=[system|]value`` (searchset Bundle with total);
- ``GET /metadata``: the server's CapabilityStatement (behind the same authentication as the rest);
- optional bearer or basic authentication, a request log, and injected failures for tests: error statuses
  (``fail_with``) and raw answers that are not FHIR at all (``raw_replies``).
"""

from __future__ import annotations

import base64
import copy
import json
import ssl
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

FHIR_JSON = "application/fhir+json"


class TransactionFailed(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def outcome(status: int, code: str, message: str) -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": message}],
    }
    return Response(json.dumps(body), status=status, content_type=FHIR_JSON)


def _identifier_matches(resource: dict[str, Any], token: str) -> bool:
    system, _, value = token.rpartition("|") if "|" in token else (None, "", token)
    for identifier in resource.get("identifier", []):
        if system is not None and identifier.get("system") != system:
            continue
        if value == "" or identifier.get("value") == value:
            return True
    return False


class FhirServer:
    def __init__(self, *, token: str | None = None, basic: tuple[str, str] | None = None) -> None:
        self.token = token
        self.basic = basic
        self.store: dict[str, dict[str, dict[str, Any]]] = {}  # type -> id -> resource
        self.versions: dict[tuple[str, str], int] = {}
        self.requests: list[dict[str, Any]] = []  # method, path, headers of every request
        self.fail_with: list[int] = []  # statuses to answer the next requests with, then normal again
        self.raw_replies: list[tuple[int, str, bytes]] = []  # (status, content type, body) for the next ones
        self.lock = threading.Lock()
        self.url = ""

    # -- test helpers -----------------------------------------------------------------------------
    def add_patient(self, system: str, value: str, **fields: Any) -> str:
        patient_id = uuid.uuid4().hex[:12]
        resource = {
            "resourceType": "Patient",
            "id": patient_id,
            "identifier": [{"system": system, "value": value}],
        }
        self._store({**resource, **fields})
        return patient_id

    def capability_statement(self) -> dict[str, Any]:
        """What ``GET /metadata`` answers: an R4 CapabilityStatement (Patient search, transactions)."""
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-11-22",
            "kind": "instance",
            "software": {"name": "tests.fhir_server"},
            "implementation": {"description": "test FHIR server", "url": self.url},
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [
                {
                    "mode": "server",
                    "resource": [
                        {
                            "type": "Patient",
                            "interaction": [{"code": "read"}, {"code": "search-type"}],
                            "searchParam": [{"name": "identifier", "type": "token"}],
                        }
                    ],
                    "interaction": [{"code": "transaction"}],
                }
            ],
        }

    def resources(self, resource_type: str) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(r) for r in self.store.get(resource_type, {}).values()]

    def search(self, resource_type: str, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        found = list(self.store.get(resource_type, {}).values())
        for name, values in query.items():
            if name.startswith("_"):
                continue  # result parameters (_count, _elements, ...): irrelevant to matching here
            if name != "identifier":
                raise TransactionFailed(400, "not-supported", f"search parameter {name} is not supported")
            found = [r for r in found if all(_identifier_matches(r, v) for v in values)]
        return found

    # -- storage ----------------------------------------------------------------------------------
    def _store(self, resource: dict[str, Any]) -> tuple[str, bool]:
        resource_type, resource_id = resource["resourceType"], resource["id"]
        created = resource_id not in self.store.setdefault(resource_type, {})
        version = self.versions.get((resource_type, resource_id), 0) + 1
        self.versions[(resource_type, resource_id)] = version
        resource["meta"] = {"versionId": str(version)}
        self.store[resource_type][resource_id] = resource
        return f"{resource_type}/{resource_id}/_history/{version}", created

    # -- transaction ------------------------------------------------------------------------------
    def _resolve_conditional(self, reference: str) -> str:
        resource_type, _, query = reference.partition("?")
        matches = self.search(resource_type, parse_qs(query, keep_blank_values=True))
        if not matches:
            raise TransactionFailed(404, "not-found", f"conditional reference {reference} matches nothing")
        if len(matches) > 1:
            raise TransactionFailed(
                412, "multiple-matches", f"conditional reference {reference} is ambiguous"
            )
        return f"{resource_type}/{matches[0]['id']}"

    def _rewrite(self, node: Any, mapping: dict[str, str]) -> Any:
        """Replace fullUrls in every uri/reference string, and resolve conditional references."""
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if (
                    key == "reference"
                    and isinstance(value, str)
                    and "?" in value
                    and not value.startswith("#")
                ):
                    out[key] = self._resolve_conditional(value)
                else:
                    out[key] = self._rewrite(value, mapping)
            return out
        if isinstance(node, list):
            return [self._rewrite(item, mapping) for item in node]
        if isinstance(node, str):
            return mapping.get(node, node)
        return node

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        entries = bundle.get("entry", [])
        mapping: dict[str, str] = {}
        plan: list[tuple[int, str, dict[str, Any], bool]] = []  # index, location, resource, is_new
        responses: list[dict[str, Any] | None] = [None] * len(entries)
        # Spec order: POST before PUT. Assign ids first, so references between entries can be rewritten.
        order = sorted(
            range(len(entries)), key=lambda i: {"POST": 0, "PUT": 1}.get(entries[i]["request"]["method"], 9)
        )
        for index in order:
            entry = entries[index]
            request, resource = entry["request"], entry.get("resource", {})
            method = request["method"]
            if method == "POST":
                existing = []
                if request.get("ifNoneExist"):
                    existing = self.search(request["url"], parse_qs(request["ifNoneExist"]))
                if len(existing) > 1:
                    raise TransactionFailed(412, "multiple-matches", "ifNoneExist matches several resources")
                if existing:
                    target = f"{request['url']}/{existing[0]['id']}"
                    responses[index] = {"status": "200 OK", "location": target}
                    mapping[entry["fullUrl"]] = target
                    continue
                new_id = uuid.uuid4().hex
                mapping[entry["fullUrl"]] = f"{request['url']}/{new_id}"
                plan.append((index, request["url"], {**resource, "id": new_id}, True))
            elif method == "PUT":
                resource_type, _, resource_id = request["url"].partition("/")
                if resource.get("id") != resource_id or resource.get("resourceType") != resource_type:
                    raise TransactionFailed(400, "invalid", "PUT url and resource id/type differ")
                mapping[entry["fullUrl"]] = request["url"]
                plan.append((index, resource_type, dict(resource), False))
            else:
                raise TransactionFailed(400, "not-supported", f"method {method} is not supported here")
        rewritten = [(index, self._rewrite(resource, mapping)) for index, _, resource, _ in plan]
        for index, resource in rewritten:  # nothing is stored until every reference resolved
            location, created = self._store(resource)
            responses[index] = {"status": "201 Created" if created else "200 OK", "location": location}
        return {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [{"response": response} for response in responses],
        }

    # -- HTTP -------------------------------------------------------------------------------------
    def _authorised(self, request: Request) -> bool:
        header = request.headers.get("Authorization", "")
        if self.token is not None:
            return header == f"Bearer {self.token}"
        if self.basic is not None:
            expected = base64.b64encode(":".join(self.basic).encode()).decode()
            return header == f"Basic {expected}"
        return True

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        self.requests.append(
            {"method": request.method, "path": request.full_path, "headers": dict(request.headers)}
        )
        return self.handle(request)(environ, start_response)

    def handle(self, request: Request) -> Response:
        if self.fail_with:
            return outcome(self.fail_with.pop(0), "exception", "injected failure")
        if self.raw_replies:
            status, content_type, body = self.raw_replies.pop(0)
            return Response(body, status=status, content_type=content_type)
        if not self._authorised(request):
            return outcome(401, "login", "authentication required")
        parts = [p for p in request.path.split("/") if p]
        try:
            with self.lock:
                if request.method == "POST" and not parts:
                    return self._post_transaction(request)
                if request.method == "GET" and parts == ["metadata"]:
                    return Response(json.dumps(self.capability_statement()), content_type=FHIR_JSON)
                if request.method == "GET" and len(parts) == 2:
                    resource = self.store.get(parts[0], {}).get(parts[1])
                    if resource is None:
                        return outcome(404, "not-found", f"{parts[0]}/{parts[1]} is not known")
                    return Response(json.dumps(resource), content_type=FHIR_JSON)
                if request.method == "GET" and len(parts) == 1:
                    found = self.search(parts[0], parse_qs(request.query_string.decode()))
                    body = {
                        "resourceType": "Bundle",
                        "type": "searchset",
                        "total": len(found),
                        "entry": [{"resource": r, "search": {"mode": "match"}} for r in found],
                    }
                    return Response(json.dumps(body), content_type=FHIR_JSON)
        except TransactionFailed as exc:
            return outcome(exc.status, exc.code, str(exc))
        return outcome(404, "not-supported", "no such interaction")

    def _post_transaction(self, request: Request) -> Response:
        if request.mimetype not in (FHIR_JSON, "application/json"):
            return outcome(415, "not-supported", f"unsupported content type {request.mimetype}")
        try:
            data = json.loads(request.get_data())
            Bundle.model_validate(data)
        except (ValueError, ValidationError) as exc:
            return outcome(400, "invalid", f"not a valid FHIR Bundle: {str(exc)[:2000]}")
        if data.get("type") != "transaction":
            return outcome(400, "invalid", "only transaction bundles are accepted at the base URL")
        return Response(json.dumps(self.transaction(data)), content_type=FHIR_JSON)


@contextmanager
def running(server: FhirServer, ssl_context: ssl.SSLContext | None = None) -> Iterator[FhirServer]:
    """Serve ``server`` on 127.0.0.1 on a free port (HTTPS with ``ssl_context``) until the block ends."""
    http = make_server("127.0.0.1", 0, server, threaded=True, ssl_context=ssl_context)
    scheme = "https" if ssl_context else "http"
    server.url = f"{scheme}://127.0.0.1:{http.server_port}"
    thread = threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        http.shutdown()
        thread.join(timeout=5)
        http.server_close()
