"""report.json and report.xml, both generated from ``Report.public_dict()`` so that they always agree.

XML mapping, mechanical so that ``xml_to_dict`` can invert it with the JSON Schema's help:

* root ``<report xmlns="urn:clinical-photo-kiosk:report:1" schemaVersion="1.1">`` (1.0 is still read);
* a dict key becomes a child element of that name;
* a list named ``<things>`` holds one ``<thing>`` element per item (the key minus its final "s");
* ``None`` omits the element; booleans are ``true``/``false``; integers and strings are their text, with
  an empty string as an empty element.
"""

from __future__ import annotations

import functools
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from kiosk.report.model import SCHEMA_VERSION, Report

NAMESPACE = "urn:clinical-photo-kiosk:report:1"
SCHEMA_ID = f"urn:clinical-photo-kiosk:report:{SCHEMA_VERSION}"
SCHEMA_PATH = Path(__file__).parent / "schema" / f"report-{SCHEMA_VERSION}.schema.json"
# Versions this code reads: a minor version only adds optional fields, so older documents stay valid.
READABLE_VERSIONS = ("1.0", "1.1")

_NS = "{" + NAMESPACE + "}"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")
_INTEGER = re.compile(r"-?[0-9]+\Z")


def report_json(report: Report) -> bytes:
    # Key order is the model's field order, which is stable; JSON escapes whatever it must.
    return (json.dumps(report.public_dict(), ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def report_xml(report: Report) -> bytes:
    # The namespace is declared as a plain attribute with unqualified tags: ElementTree's default_namespace
    # option refuses the unqualified schemaVersion attribute, though XML namespaces allow it.
    root = ET.Element("report", {"xmlns": NAMESPACE, "schemaVersion": SCHEMA_VERSION})
    for key, value in report.public_dict().items():
        _append(root, key, value)
    ET.indent(root)
    xml = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    # ElementTree writes a carriage return in text literally and every parser then normalises it to a line
    # feed, so a note typed with CRLF would not round-trip. In UTF-8 output the byte 0x0D is only ever that
    # character, and the serializer never emits one of its own, so a character reference is exact.
    return xml.replace(b"\r", b"&#13;")


def _append(parent: ET.Element, name: str, value: Any) -> None:
    if value is None:
        return
    if not _NAME.match(name):
        raise ValueError(f"{name!r} cannot be an XML element name")
    element = ET.SubElement(parent, name)
    if isinstance(value, dict):
        for key, item in value.items():
            _append(element, key, item)
    elif isinstance(value, list):
        if any(item is None for item in value):
            raise ValueError(f"{name}: a null list item has no XML form")
        for item in value:
            _append(element, _item_name(name), item)
    elif isinstance(value, bool):
        element.text = "true" if value else "false"
    elif isinstance(value, (int, str)):
        element.text = str(value)
    else:
        raise TypeError(f"{name}: cannot represent {type(value).__name__} in XML")


def _item_name(list_name: str) -> str:
    return list_name[:-1] if list_name.endswith("s") else "item"


class _NoDoctype(ET.TreeBuilder):
    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise ValueError("report.xml must not contain a DOCTYPE")


def xml_to_dict(xml: bytes) -> dict[str, Any]:
    """The dict ``report_xml`` was made from, typed by the JSON Schema: ``xml_to_dict(report_xml(r))``
    equals ``json.loads(report_json(r))``. Raises ValueError on anything the mapping cannot produce."""
    # The stdlib parser (expat) never fetches external entities or DTDs; refusing any DOCTYPE also rules
    # out internal entity expansion ("billion laughs"), so defusedxml is not needed.
    root = ET.fromstring(xml, parser=ET.XMLParser(target=_NoDoctype()))  # noqa: S314 (see above)
    if root.tag != _NS + "report" or root.get("schemaVersion") not in READABLE_VERSIONS:
        raise ValueError(f"not a report of version {'/'.join(READABLE_VERSIONS)}: {root.tag} {root.attrib}")
    document_schema = schema()
    return _read(root, document_schema, document_schema)


def _read(element: ET.Element, node: dict[str, Any], document_schema: dict[str, Any]) -> Any:
    node = _resolve(node, document_schema)
    kind = node.get("type")
    if kind not in ("object", "array"):
        return _read_scalar(element, kind)
    if (element.text or "").strip():
        raise ValueError(f"{_local(element)}: unexpected text")
    children = [(_local(child), child) for child in element]
    if kind == "array":
        if any(name != _item_name(_local(element)) for name, _ in children):
            raise ValueError(f"{_local(element)}: unexpected elements {[name for name, _ in children]}")
        return [_read(child, node["items"], document_schema) for _, child in children]
    by_name = dict(children)
    if len(by_name) != len(children):
        raise ValueError(f"{_local(element)}: repeated elements")
    if "properties" not in node:  # a map such as consent.purposes
        item_schema = node["additionalProperties"]
        return {name: _read(child, item_schema, document_schema) for name, child in by_name.items()}
    unexpected = by_name.keys() - node["properties"].keys()
    if unexpected:
        raise ValueError(f"{_local(element)}: unexpected elements {sorted(unexpected)}")
    result = {}
    for name, child_schema in node["properties"].items():
        if name in by_name:
            result[name] = _read(by_name[name], child_schema, document_schema)
        elif _nullable(child_schema):
            result[name] = None
        else:
            raise ValueError(f"{_local(element)}: missing {name}")
    return result


def _read_scalar(element: ET.Element, kind: str | None) -> str | bool | int:
    if len(element):
        raise ValueError(f"{_local(element)}: unexpected child elements")
    text = element.text or ""
    if kind == "string":
        return text
    if kind == "boolean" and text in ("true", "false"):
        return text == "true"
    if kind == "integer" and _INTEGER.match(text):
        return int(text)
    raise ValueError(f"{_local(element)}: {text!r} is not a valid {kind}")


def _resolve(node: dict[str, Any], document_schema: dict[str, Any]) -> dict[str, Any]:
    """Follow $ref and pick the non-null branch of an optional field's anyOf."""
    while True:
        if "$ref" in node:
            node = document_schema["$defs"][node["$ref"].removeprefix("#/$defs/")]
        elif "anyOf" in node:
            (node,) = [branch for branch in node["anyOf"] if branch.get("type") != "null"]
        else:
            return node


def _nullable(node: dict[str, Any]) -> bool:
    return any(branch.get("type") == "null" for branch in node.get("anyOf", ()))


def _local(element: ET.Element) -> str:
    if not element.tag.startswith(_NS):
        raise ValueError(f"element {element.tag} is outside the {NAMESPACE} namespace")
    return element.tag.removeprefix(_NS)


def build_schema() -> dict[str, Any]:
    """The JSON Schema of report.json, generated from the model; the shipped file must equal it."""
    generated = Report.model_json_schema(mode="serialization")
    generated.pop("title", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Clinical Photo Kiosk report",
        "description": "report.json of a Clinical Photo Kiosk bundle; report.xml carries the same data.",
        **generated,
    }


@functools.cache
def _schema_text() -> str:
    return SCHEMA_PATH.read_text(encoding="utf-8")


def schema() -> dict[str, Any]:
    """The shipped schema (a fresh copy, so callers may modify it)."""
    return json.loads(_schema_text())


def validate(document: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError unless ``document`` is a valid report.json. Needs the dev extra."""
    import jsonschema  # a dev dependency: the station itself never validates its own output

    jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker()).validate(document)


def write_schema() -> None:
    """Regenerate the shipped schema after a model change: ``python -m kiosk.report.document``."""
    SCHEMA_PATH.write_text(json.dumps(build_schema(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_schema()
