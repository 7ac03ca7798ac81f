"""`Vary: Origin` on every response whose CORS headers depend on the request's Origin: with
CORS_ORIGINS set, an answer to one origin (or to none) must not be handed by a shared cache to
another. Every kind of answer: a plain one, a stream, a preflight, and the 401, 403 and 429
refusals, on the API and OpenAI doors, with a listed origin, another one and none."""

from __future__ import annotations

import pytest

from .conftest import ANN
from .fake_upstream import stream_scenario

LISTED, OTHER = "https://app.example", "https://evil.example"


def answers(client, upstream, origin: str | None) -> dict[str, object]:
    """One response of each kind, from `origin` (None: no Origin header)."""
    headers = {"Origin": origin} if origin else {}
    cross = {**headers, "Sec-Fetch-Site": "cross-site"} if origin == OTHER else headers
    upstream.scenario = stream_scenario(["Hel", "lo"])
    out = {
        "roles": client.get("/api/roles", headers=headers),
        "models": client.get("/v1/models", headers=headers),
        "stream": client.post("/api/gpt/get", json={"message": "hi"},
                              headers={**cross, "Accept": "text/event-stream"}),
        "preflight": client.options("/v1/chat/completions", headers={
            **headers, "Access-Control-Request-Method": "POST"}),
        "unauthorized": client.get("/api/keys", headers=headers),
        "forbidden": client.post("/api/keys", json={"name": "k"},
                                 headers={**headers, "Sec-Fetch-Site": "cross-site"}),
    }
    for _ in range(3):
        out["throttled"] = client.post("/api/user/login",
                                       headers={**headers, "Sec-Fetch-Site": "same-origin"},
                                       json={"username": "zed", "password": "wrong password"})
    return out


@pytest.mark.parametrize("origins", [(LISTED,), ("*",), (LISTED, "https://two.example")],
                         ids=["one", "star", "two"])
def test_every_answer_of_a_cors_route_varies_by_origin(users_app, upstream, origins):
    app = users_app(cors_origins=origins, login_limit="2/minute")
    client = app.test_client()
    client.post("/api/user/register", json={"username": ANN[0], "password": ANN[1]})
    for origin in (LISTED, OTHER, None):
        for kind, response in answers(client, upstream, origin).items():
            response.get_data()
            assert "origin" in {v.lower() for v in response.vary}, (origin, kind,
                                                                    response.headers)
    listed = answers(client, upstream, LISTED)
    assert listed["roles"].headers["Access-Control-Allow-Origin"] in (LISTED, "*")
    assert listed["throttled"].headers.get("Retry-After")  # the 429 really was one


def test_without_cors_origins_nothing_varies(users_app, upstream):
    """No CORS_ORIGINS: no Access-Control header is ever sent, so nothing to vary."""
    client = users_app().test_client()
    response = client.get("/api/roles", headers={"Origin": LISTED})
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "origin" not in {v.lower() for v in response.vary}


def test_the_page_keeps_its_own_caching(users_app):
    """Static files are not CORS routes: no Vary added (they are cached as they were)."""
    client = users_app(cors_origins=(LISTED,)).test_client()
    assert "origin" not in {v.lower() for v in client.get("/", headers={"Origin": LISTED}).vary}
