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
        "Ship records of one of the station's own audit chains (station; an empty list asks for the "
        "stored head of that chain)",
        ["station"],
        "StationAudit",
        "200",
    ),
    (
        "get",
        "/v1/stations/{station_id}/audit",
        "One of a station's shipped audit chains, ?chain=&after=&limit= (auditor, admin)",
        ["user", "session"],
        None,
        "200",
    ),
    (
        "get",
        "/v1/stations/{station_id}/audit/chains",
        "A station's shipped audit chains, one per installation (auditor, admin)",
        ["user", "session"],
        None,
        "200",
    ),
    (
        "get",
        "/v1/stations/{station_id}/audit/verify",
        "Verify every shipped audit chain of a station (auditor, admin)",
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

_HEX64 = "^[0-9a-f]{64}$"
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
        "required": ["chain", "records"],
        "additionalProperties": False,
        "properties": {
            "chain": {
                "type": "string",
                "pattern": _HEX64,
                "description": "the chain's id: the hash of its seq-1 record (one chain per installation; "
                "a chain the server does not hold starts with seq 1)",
            },
            "records": {
                "type": "array",
                "maxItems": 1000,
                "description": "consecutive records continuing the chain stored for this station",
                "items": {"$ref": "#/components/schemas/StationAuditRecord"},
            },
        },
    },
    "StationAuditRecord": {
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
            "prev_hash": {"type": "string", "pattern": _HEX64},
            "hash": {"type": "string", "pattern": _HEX64},
            "received_at": {"type": "string", "format": "date-time", "description": "in answers only"},
        },
    },
    "StationAuditHead": {
        "type": "object",
        "required": ["chain", "accepted", "last_seq", "last_hash"],
        "additionalProperties": False,
        "properties": {
            "chain": {"type": "string"},
            "accepted": {"type": "integer", "description": "records newly stored by this request"},
            "last_seq": {"type": "integer", "description": "0: the server holds none of this chain"},
            "last_hash": {"type": "string"},
        },
    },
    "StationAuditPage": {
        "type": "object",
        "required": ["station_id", "chain", "last_seq", "records"],
        "additionalProperties": False,
        "properties": {
            "station_id": {"type": "string"},
            "chain": {"type": ["string", "null"], "description": "null: the station has shipped nothing"},
            "last_seq": {"type": "integer"},
            "records": {"type": "array", "items": {"$ref": "#/components/schemas/StationAuditRecord"}},
        },
    },
    "StationAuditChains": {
        "type": "object",
        "required": ["station_id", "chains"],
        "additionalProperties": False,
        "properties": {
            "station_id": {"type": "string"},
            "chains": {
                "type": "array",
                "description": "oldest installation first",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [
                        "chain",
                        "first_seq",
                        "last_seq",
                        "records",
                        "first_at",
                        "last_at",
                        "first_received_at",
                        "last_received_at",
                    ],
                    "properties": {
                        "chain": {"type": "string"},
                        "first_seq": {"type": "integer"},
                        "last_seq": {"type": "integer"},
                        "records": {"type": "integer"},
                        "first_at": {"type": "number", "description": "station clock, Unix time"},
                        "last_at": {"type": "number"},
                        "first_received_at": {"type": "string", "format": "date-time"},
                        "last_received_at": {"type": "string", "format": "date-time"},
                    },
                },
            },
        },
    },
    "StationAuditVerify": {
        "type": "object",
        "required": ["station_id", "ok", "records", "chains", "problems"],
        "additionalProperties": False,
        "properties": {
            "station_id": {"type": "string"},
            "ok": {"type": "boolean"},
            "records": {"type": "integer"},
            "problems": {"type": "array", "items": {"type": "string"}},
            "chains": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [
                        "chain",
                        "ok",
                        "records",
                        "head_seq",
                        "head_hash",
                        "anchored_seq",
                        "problems",
                    ],
                    "properties": {
                        "chain": {"type": "string"},
                        "ok": {"type": "boolean"},
                        "records": {"type": "integer"},
                        "head_seq": {"type": "integer"},
                        "head_hash": {"type": "string"},
                        "anchored_seq": {
                            "type": "integer",
                            "description": "head named by the key server's newest station.audit record",
                        },
                        "problems": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
    },
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    },
}


def _json(schema: str, description: str = "success") -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def _query(name: str, description: str, kind: str = "integer") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": kind},
    }


# Responses beyond "success" and "4XX", and query parameters, per (method, path).
RESPONSES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/stations/enroll"): {
        "429": {
            "description": "throttled: too many failed enrollments from this address or overall "
            "(`error` is `throttled`, even for a right code); audited",
            "headers": {
                "Retry-After": {
                    "description": "seconds until the throttling window ends",
                    "schema": {"type": "integer"},
                }
            },
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    },
    ("post", "/v1/stations/audit"): {"200": _json("StationAuditHead")},
    ("get", "/v1/stations/{station_id}/audit"): {"200": _json("StationAuditPage")},
    ("get", "/v1/stations/{station_id}/audit/chains"): {"200": _json("StationAuditChains")},
    ("get", "/v1/stations/{station_id}/audit/verify"): {"200": _json("StationAuditVerify")},
}
QUERY: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("get", "/v1/stations/{station_id}/audit"): [
        _query("chain", "chain id (default: the station's newest installation)", "string"),
        _query("after", "only records after this seq (default 0)"),
        _query("limit", "at most this many records (default 200, at most 1000)"),
    ],
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
        op["responses"].update(RESPONSES.get((method, path), {}))
        params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
        parameters = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in params
        ] + QUERY.get((method, path), [])
        if parameters:
            op["parameters"] = parameters
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
