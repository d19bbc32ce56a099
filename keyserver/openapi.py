"""The OpenAPI 3.1 description of /v1, built from a compact table so it stays next to the truth."""

from __future__ import annotations

from typing import Any

# (method, path, summary, security, request schema name or None, success status)
ENDPOINTS: list[tuple[str, str, str, list[str], str | None, str]] = [
    ("get", "/v1/keys", "Current and retired public KEKs (stations seal to the first)", [], None, "200"),
    ("get", "/v1/me", "Who the credentials belong to", ["user", "station", "session"], None, "200"),
    ("post", "/v1/stations/enroll", "Enroll a station with a one-time code", [], "Enroll", "201"),
    ("post", "/v1/reports", "Register a sealed report's header (station)", ["station"], "Register", "201"),
    ("get", "/v1/reports/{report_id}", "Report metadata (admin, auditor)", ["user", "session"], None, "200"),
    (
        "post",
        "/v1/reports/{report_id}/revoke",
        "Revoke a report (admin)",
        ["user", "session"],
        "Reason",
        "200",
    ),
    (
        "post",
        "/v1/reports/{report_id}/restore",
        "Restore a revoked report (admin)",
        ["user", "session"],
        None,
        "200",
    ),
    (
        "post",
        "/v1/unwrap",
        "Release a data key to a recipient (audited)",
        ["user", "session"],
        "Unwrap",
        "200",
    ),
    (
        "post",
        "/v1/delivery/unwrap",
        "Release a data key to the sealing station (audited)",
        ["station"],
        "Unwrap",
        "200",
    ),
    ("post", "/v1/inbox", "Upload a sealed .cpseal file (station)", ["station"], "SealedFile", "201"),
    ("get", "/v1/inbox", "Inbox reports the caller may open", ["user", "session"], None, "200"),
    (
        "get",
        "/v1/inbox/{report_id}/file",
        "Download a sealed file (recipient)",
        ["user", "session"],
        None,
        "200",
    ),
    ("get", "/v1/audit", "Query the audit log (auditor, admin)", ["user", "session"], None, "200"),
    ("get", "/v1/audit/export", "Export the audit log as CSV or JSON", ["user", "session"], None, "200"),
    ("get", "/v1/audit/verify", "Verify the audit hash chain", ["user", "session"], None, "200"),
    ("get", "/v1/stations", "List stations (admin)", ["user", "session"], None, "200"),
    (
        "post",
        "/v1/stations/{station_id}/disable",
        "Disable a station (admin)",
        ["user", "session"],
        None,
        "200",
    ),
    (
        "post",
        "/v1/stations/audit",
        "Ship the station's own audit records (station; an empty list asks for the stored head)",
        ["station"],
        "StationAudit",
        "200",
    ),
    (
        "get",
        "/v1/stations/{station_id}/audit",
        "A station's shipped audit records, ?after=&limit= (auditor, admin)",
        ["user", "session"],
        None,
        "200",
    ),
    (
        "get",
        "/v1/stations/{station_id}/audit/verify",
        "Verify a station's shipped audit chain (auditor, admin)",
        ["user", "session"],
        None,
        "200",
    ),
    (
        "post",
        "/v1/enrollment-codes",
        "Create a one-time enrollment code (admin)",
        ["user", "session"],
        "Code",
        "201",
    ),
]

_HEADER = {"type": "object", "description": "The SealedHeader of the .cpseal file (package.json header)"}
SCHEMAS: dict[str, Any] = {
    "Enroll": {
        "type": "object",
        "required": ["code", "station_id"],
        "properties": {
            "code": {"type": "string"},
            "station_id": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
        },
    },
    "Register": {"type": "object", "required": ["header"], "properties": {"header": _HEADER}},
    "Unwrap": {
        "type": "object",
        "required": ["header", "wrapped_key"],
        "properties": {"header": _HEADER, "wrapped_key": {"type": "string", "description": "base64url"}},
    },
    "Reason": {"type": "object", "properties": {"reason": {"type": "string", "maxLength": 256}}},
    "Code": {
        "type": "object",
        "properties": {"station_id": {"type": "string", "description": "bind (re-enroll)"}},
    },
    "StationAudit": {
        "type": "object",
        "required": ["records"],
        "additionalProperties": False,
        "properties": {
            "records": {
                "type": "array",
                "maxItems": 1000,
                "description": "consecutive records continuing the chain stored for this station",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["seq", "at", "event", "report_id", "actor", "details", "prev_hash", "hash"],
                    "properties": {
                        "seq": {"type": "integer", "minimum": 1},
                        "at": {"type": "number", "description": "Unix time (the station's clock)"},
                        "event": {"type": "string", "maxLength": 64},
                        "report_id": {"type": ["string", "null"], "maxLength": 64},
                        "actor": {"type": "string", "maxLength": 128},
                        "details": {"type": "string", "description": "JSON text exactly as hashed"},
                        "prev_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                        "hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    },
                },
            }
        },
    },
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    },
}


def openapi_document(base_url: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method, path, summary, security, schema, status in ENDPOINTS:
        op: dict[str, Any] = {
            "summary": summary,
            "security": [{name: []} for name in security],
            "responses": {
                status: {"description": "success"},
                "4XX": {
                    "description": "refused (reason in `error`; key requests are audited)",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            },
        }
        params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
        if params:
            op["parameters"] = [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in params
            ]
        if schema == "SealedFile":
            op["requestBody"] = {"required": True, "content": {"application/octet-stream": {}}}
        elif schema:
            ref = {"$ref": f"#/components/schemas/{schema}"}
            op["requestBody"] = {
                "required": schema != "Reason",
                "content": {"application/json": {"schema": ref}},
            }
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Clinical Photo Kiosk key server", "version": "1"},
        "servers": [{"url": base_url}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "user": {"type": "http", "scheme": "bearer", "description": "user API token (ksu_...)"},
                "station": {"type": "http", "scheme": "bearer", "description": "station token (kss_...)"},
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "ks_session",
                    "description": "browser session; unsafe methods need the X-CSRF-Token header",
                },
            },
        },
    }
