"""The OpenAPI document (`gpt_proxy/doors/openapi.py`): valid OpenAPI 3.1, served at
/api/openapi.json, and in step with the app: every route of the url_map outside /v1, /static,
/metrics and / is described with each of its methods, and nothing is described that the app
does not serve."""

from __future__ import annotations

import pytest
import schemathesis

from gpt_proxy import create_app
from gpt_proxy.doors.openapi import document, flask_path, registered

from .conftest import make_config

UNDESCRIBED = ("/v1/", "/static/")  # OpenAI's API (the SDKs check it), the page's files
UNDESCRIBED_EXACT = ("/", "/metrics")


def _app(tmp_path, **overrides):
    settings = dict(database_url=f"sqlite:///{tmp_path}/gpt_proxy.db",
                    conversation_store=f"sqlite:///{tmp_path}/conversations.db")
    settings.update(overrides)
    return create_app(make_config(**settings))


def _served(app) -> dict[str, set[str]]:
    return {path: methods for path, methods in registered(app).items()
            if not path.startswith(UNDESCRIBED) and path not in UNDESCRIBED_EXACT}


def _described(doc: dict) -> dict[str, set[str]]:
    methods = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
    return {flask_path(path): {name for name in item if name in methods}
            for path, item in doc["paths"].items()}


AUTH_MODES = [dict(auth="users", registration="open"),
              dict(auth="users", proxy_token="t" * 24),
              dict(auth="token", proxy_token="t" * 24),
              dict(auth="open")]


@pytest.mark.parametrize("settings", AUTH_MODES, ids=lambda s: "-".join(map(str, s.values())))
def test_every_route_is_described_with_each_method(tmp_path, settings):
    app = _app(tmp_path, **settings)
    described = _described(document(app))
    missing = {path: sorted(methods - described.get(path, set()))
               for path, methods in _served(app).items() if methods - described.get(path, set())}
    assert not missing, f"routes the document does not describe: {missing}"
    assert "/api/openapi.json" in described and "/healthz" in described


@pytest.mark.parametrize("settings", AUTH_MODES, ids=lambda s: "-".join(map(str, s.values())))
def test_nothing_is_described_that_the_app_does_not_serve(tmp_path, settings):
    app = _app(tmp_path, **settings)
    served = registered(app)
    extra = {path: sorted(methods - served.get(path, set()))
             for path, methods in _described(document(app)).items()
             if methods - served.get(path, set())}
    assert not extra, f"described but not served: {extra}"


@pytest.mark.parametrize("settings", AUTH_MODES, ids=lambda s: "-".join(map(str, s.values())))
def test_the_document_is_valid_openapi_3_1(tmp_path, settings):
    doc = document(_app(tmp_path, **settings))
    assert doc["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(doc).validate()  # the OpenAPI 3.1 meta-schema


def test_the_validator_refuses_a_broken_document():
    """The check above can fail: a response without its description is refused."""
    broken = {"openapi": "3.1.0", "info": {"title": "x", "version": "1"},
              "paths": {"/a": {"get": {"responses": {"200": {"content": {}}}}}}}
    with pytest.raises(Exception, match="description"):
        schemathesis.openapi.from_dict(broken).validate()


def test_every_operation_has_a_unique_id_and_its_door_error_shape(tmp_path):
    doc = document(_app(tmp_path, auth="users", proxy_token="t" * 24))
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    for path, item in doc["paths"].items():
        for op in item.values():
            statuses = set(op["responses"])
            if path.startswith(("/api/user/", "/api/role/", "/api/gpt/getImage", "/api/session",
                                "/api/verify", "/api/config", "/api/chat-process")):
                assert statuses == {"200"}, (path, statuses)  # those doors answer 200 always
            elif path.startswith("/api/"):
                assert {"429", "500"} <= statuses, (path, statuses)
                error = op["responses"]["429"]["content"]["application/json"]["schema"]
                assert error == {"$ref": "#/components/schemas/Error"}


def test_security_follows_auth(tmp_path):
    users = document(_app(tmp_path, auth="users", proxy_token="t" * 24))
    assert set(users["components"]["securitySchemes"]) == {"session", "apiKey", "proxyToken"}
    assert users["paths"]["/api/admin/users"]["get"]["security"] == [{"session": []},
                                                                     {"proxyToken": []}]
    assert users["paths"]["/api/gpt/get"]["post"]["security"] == [{"session": []},
                                                                  {"apiKey": []}]
    assert "401" in users["paths"]["/api/gpt/get"]["post"]["responses"]
    assert {} in users["paths"]["/api/roles"]["get"]["security"]  # public with accounts
    token = document(_app(tmp_path, auth="token", proxy_token="t" * 24))
    assert token["paths"]["/api/roles"]["get"]["security"] == [{"proxyToken": []}]
    opened = document(_app(tmp_path, auth="open"))
    assert "securitySchemes" not in opened["components"]
    assert "401" not in opened["paths"]["/api/gpt/get"]["post"]["responses"]


def test_served_at_api_openapi_json_without_a_credential(tmp_path):
    app = _app(tmp_path, auth="token", proxy_token="t" * 24)
    response = app.test_client().get("/api/openapi.json")
    assert response.status_code == 200
    assert response.get_json()["paths"].keys() == document(app)["paths"].keys()


def test_a_module_adds_its_routes_only_when_they_are_registered(tmp_path, monkeypatch):
    """OPENAPI_PATHS of a registered blueprint's module are merged, filtered by the url_map."""
    from gpt_proxy.doors import account_api

    extra = {"/api/keys/{key_id}": {"get": {"summary": "not served", "operationId": "x",
                                            "responses": {"200": {"description": "x"}}}},
             "/api/usage": {"get": {"summary": "merged", "operationId": "myUsage",
                                    "responses": {"200": {"description": "merged"}}}}}
    monkeypatch.setattr(account_api, "OPENAPI_PATHS", extra, raising=False)
    monkeypatch.setattr(account_api, "OPENAPI_SCHEMAS", {"Extra": {"type": "string"}},
                        raising=False)
    doc = document(_app(tmp_path, auth="users"))
    assert doc["paths"]["/api/usage"]["get"]["summary"] == "merged"
    assert "get" not in doc["paths"]["/api/keys/{key_id}"]
    assert doc["components"]["schemas"]["Extra"] == {"type": "string"}


# --- defects Schemathesis found in the doors' parsing ------------------------------------------

SUPERSCRIPT_TWO = "%C2%B2"  # '²': str.isdigit() holds, int() refuses it


@pytest.mark.parametrize("query", [f"/api/admin/keys?user={SUPERSCRIPT_TWO}",
                                   f"/api/admin/usage?user={SUPERSCRIPT_TWO}",
                                   f"/api/admin/usage?key={SUPERSCRIPT_TWO}",
                                   f"/api/admin/usage?limit={SUPERSCRIPT_TWO}"])
def test_a_digit_that_is_not_ascii_is_bad_input_on_the_admin_routes(tmp_path, query):
    token = "t" * 24
    client = _app(tmp_path, auth="users", proxy_token=token).test_client()
    response = client.get(query, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code in (400, 404), response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] != "internal_error"


def test_a_digit_that_is_not_ascii_is_bad_input_for_usage_days(tmp_path):
    from .conftest import ANN, sign_up

    client = _app(tmp_path, auth="users", registration="open",
                  login_limit="1000/minute").test_client()
    sign_up(client, *ANN)
    response = client.get(f"/api/usage?days={SUPERSCRIPT_TWO}")
    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "days"


def test_a_digit_that_is_not_ascii_is_a_bad_image_number(tmp_path):
    from .conftest import ANN, sign_up

    client = _app(tmp_path, auth="users", registration="open",
                  login_limit="1000/minute").test_client()
    sign_up(client, *ANN)
    answer = client.post("/api/gpt/getImage", json={"prompt": "a cat", "number": "²"}).get_json()
    assert answer["code"] == 40000, answer  # bad parameters, not 50000 (an internal error)
