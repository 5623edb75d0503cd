"""docs/asyncapi.yaml is a valid AsyncAPI 3 document and says what wire/envelope.py does.

The AsyncAPI 3.0.0 JSON Schema is vendored from the npm package @asyncapi/specs 6.11.1
(Apache-2.0) in tests/schemas/.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

from wire import envelope

ROOT = Path(__file__).resolve().parents[2]
DOC = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())


def resolve(ref: str) -> dict:
    node = DOC
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_document_is_valid_asyncapi_3() -> None:
    schema = json.loads((ROOT / "tests" / "schemas" / "asyncapi-3.0.0.json").read_text())
    jsonschema.validate(DOC, schema)


def message_types(action: str) -> set[str]:
    names = set()
    for op in DOC["operations"].values():
        if op["action"] != action:
            continue
        for ref in op["messages"]:
            message = resolve(resolve(ref["$ref"])["$ref"])
            payload = resolve(message["payload"]["$ref"])
            parts = payload.get("allOf", [payload])
            const = {
                p["properties"]["type"]["const"] for p in parts if "type" in p.get("properties", {})
            }
            assert const == {message["name"]}, message
            names.add(message["name"])
    return names


def test_client_frames_match_the_code() -> None:
    assert message_types("receive") == set(envelope.CLIENT_TYPES)


def test_server_frames_match_the_code() -> None:
    assert message_types("send") == set(envelope.SERVER_TYPES)


def test_error_codes_match_the_code() -> None:
    from wire.errors import ErrorCode

    codes = resolve("#/components/schemas/Error")["properties"]["payload"]["properties"]["code"][
        "enum"
    ]
    assert set(codes) == {str(c) for c in ErrorCode}
