"""Schema-driven fuzzing: request bodies generated from the app's own OpenAPI schema, often broken
on purpose, must never get a 5xx; every error keeps the OpenAI shape; the server keeps serving."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.serve import ServeSettings, create_app

LOCAL = "http://127.0.0.1"  # the Host a loopback-bound server answers (its DNS-rebinding guard refuses others)

ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/classify"]

junk_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


def strategy_for(schema: dict, components: dict, model_names: list[str], name: str = "") -> st.SearchStrategy:
    """Values that follow ``schema``, mixed at every level with arbitrary JSON of any type."""
    return st.one_of(_conforming(schema, components, model_names, name), junk_json) if name != "model" else st.one_of(
        st.sampled_from(model_names), st.text(max_size=8), junk_json
    )


def _conforming(schema: dict, components: dict, model_names: list[str], name: str) -> st.SearchStrategy:
    if "$ref" in schema:
        return _conforming(components[schema["$ref"].rsplit("/", 1)[-1]], components, model_names, name)
    if "anyOf" in schema:
        return st.one_of([_conforming(option, components, model_names, name) for option in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        fields = {key: strategy_for(value, components, model_names, key) for key, value in properties.items()}
        return st.fixed_dictionaries(
            {key: fields[key] for key in properties if key in required},
            optional={key: fields[key] for key in properties if key not in required},
        )
    if kind == "array":
        item = schema.get("items", {})
        return st.lists(strategy_for(item, components, model_names, name), min_size=schema.get("minItems", 0), max_size=3)
    if kind == "string":
        return st.text(max_size=40)
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum", -(2**70)), max_value=schema.get("maximum", 2**70))
    if kind == "number":
        return st.floats(min_value=schema.get("minimum"), max_value=schema.get("maximum"), allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return junk_json


@pytest.fixture(scope="module")
def fuzz_client(registry):
    app = create_app(registry, ServeSettings(max_tokens_limit=3, max_body_bytes=50_000, batch_window_ms=0))
    with TestClient(app, base_url=LOCAL, raise_server_exceptions=False) as client:
        yield client


def _body_schema(openapi: dict, path: str) -> dict:
    content = openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    return content["schema"]


def _check(response) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("path", ENDPOINTS)
def test_schema_fuzz_never_5xx(fuzz_client, registry, path):
    openapi = fuzz_client.app.openapi()
    components = openapi["components"]["schemas"]
    body_strategy = strategy_for(_body_schema(openapi, path), components, registry.names())

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(body=body_strategy)
    def run(body):
        response = fuzz_client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
        _check(response)
        statuses.add(response.status_code)

    statuses: set[int] = set()
    run()
    assert 200 in statuses, "the fuzzer never reached a valid request: the schema strategy is broken"
    ok = fuzz_client.post("/v1/chat/completions", json={"model": registry.base_name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert ok.status_code == 200


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(raw=st.binary(max_size=200), path=st.sampled_from(ENDPOINTS), content_type=st.sampled_from(["application/json", "text/plain", ""]))
def test_raw_bytes_never_5xx(fuzz_client, raw, path, content_type):
    headers = {"content-type": content_type} if content_type else {}
    _check(fuzz_client.post(path, content=raw, headers=headers))
