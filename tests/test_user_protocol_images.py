"""POST /api/gpt/getImage, the GPT Terminal user protocol's image route: in-process with the
upstream (and the image URLs it answers with) mocked by `responses`, then under gunicorn
against the fake upstream. Every answer is HTTP 200 with the envelope; every bad request is
refused before the upstream is asked; a page only ever gets `data:` images."""

from __future__ import annotations

import base64
import json

import pytest
import requests
import responses

from gpt_proxy import create_app
from gpt_proxy.upstream.demo import DemoUpstream, placeholder_png
from gpt_proxy.upstream.images import MAX_FETCH_BYTES

from .conftest import TEST_KEY, make_config
from .fake_upstream import Scenario, image_answer, json_scenario

BASE = "http://upstream.test/v1"
IMAGES = f"{BASE}/images/generations"
ROUTE = "/api/gpt/getImage"
PNG = placeholder_png(16, 16, "one")
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 40
GIF = b"GIF89a" + b"\x00" * 20
WEBP = b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 20


@pytest.fixture()
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def make_api(**overrides):
    return create_app(make_config(openai_base_url=BASE, **overrides)).test_client()


@pytest.fixture()
def api(mocked):
    return make_api()


def data_url(image: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(image).decode()}"


def failure(response, code: int) -> str:
    """The failure envelope's message (HTTP 200, `message` and `msg` the same, no data)."""
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"code", "message", "msg", "data"}, body
    assert body["code"] == code and body["data"] is None and body["message"] == body["msg"]
    assert body["message"]
    return body["message"]


def access_line(caplog) -> str:
    return [r.getMessage() for r in caplog.records if r.name == "gpt_proxy.access"][-1]


# --- success --------------------------------------------------------------------------------

def test_images_come_back_as_data_urls_in_the_envelope(api, mocked):
    mocked.post(IMAGES, json=image_answer([PNG, JPEG]))
    response = api.post(ROUTE, json={"prompt": "a lighthouse", "number": 2, "size": "512x512"})
    assert response.status_code == 200
    assert response.get_json() == {"code": 0, "data": [{"url": data_url(PNG)},
                                                       {"url": data_url(JPEG, "image/jpeg")}]}
    sent = json.loads(mocked.calls[0].request.body)
    assert sent == {"prompt": "a lighthouse", "n": 2, "size": "512x512",
                    "response_format": "b64_json", "model": "dall-e-2"}
    assert mocked.calls[0].request.url == IMAGES


@pytest.mark.parametrize("body,n,size", [
    ({"prompt": "x"}, 1, "256x256"), ({"prompt": "x", "number": None}, 1, "256x256"),
    ({"prompt": "x", "number": 5, "size": "1024x1024"}, 5, "1024x1024"),
    ({"prompt": "x", "number": "3", "size": None}, 3, "256x256"),
])
def test_number_and_size_default_as_the_original_backend_did(api, mocked, body, n, size):
    mocked.post(IMAGES, json=image_answer([PNG] * n))
    assert api.post(ROUTE, json=body).get_json()["code"] == 0
    sent = json.loads(mocked.calls[0].request.body)
    assert (sent["n"], sent["size"]) == (n, size)


def test_gpt_image_without_n_from_the_july_2023_page_makes_one_image(api, mocked):
    """That page sends `number: Number(option)`, and its option parser gives "" for an option
    not typed: `gpt image a cat` arrives as number 0 (its own backend read 0 as "one")."""
    mocked.post(IMAGES, json=image_answer([PNG]))
    body = api.post(ROUTE, json={"prompt": "a cat", "number": 0}).get_json()
    assert body == {"code": 0, "data": [{"url": data_url(PNG)}]}
    assert json.loads(mocked.calls[0].request.body)["n"] == 1


def test_a_gpt_image_model_is_not_asked_for_a_format_it_does_not_take(mocked):
    mocked.post(IMAGES, json=image_answer([PNG]))
    make_api(openai_image_model="gpt-image-1").post(ROUTE, json={"prompt": "x"})
    sent = json.loads(mocked.calls[0].request.body)
    assert sent["model"] == "gpt-image-1" and "response_format" not in sent


@pytest.mark.parametrize("image,kind", [(PNG, "image/png"), (JPEG, "image/jpeg"),
                                        (GIF, "image/gif"), (WEBP, "image/webp")])
def test_an_upstream_image_url_is_fetched_into_a_data_url(api, mocked, image, kind, caplog):
    mocked.post(IMAGES, json=image_answer(urls=["https://files.example/img?sig=abc"]))
    mocked.get("https://files.example/img?sig=abc", body=image,
               content_type="application/octet-stream")
    with caplog.at_level("INFO", logger="gpt_proxy.access"):
        response = api.post(ROUTE, json={"prompt": "x"})
    assert response.get_json() == {"code": 0, "data": [{"url": data_url(image, kind)}]}
    fetch = mocked.calls[1].request
    assert "Authorization" not in fetch.headers and "api-key" not in fetch.headers
    assert "Cookie" not in fetch.headers
    assert "images=1 size=256x256" in access_line(caplog) and "result=ok" in access_line(caplog)


def test_a_data_image_url_from_the_upstream_is_kept_as_a_data_url(api, mocked):
    mocked.post(IMAGES, json=image_answer(urls=[data_url(PNG)]))
    assert api.post(ROUTE, json={"prompt": "x"}).get_json()["data"] == [{"url": data_url(PNG)}]


def test_the_demo_makes_images_with_no_key():
    app = create_app(make_config(openai_api_key=""), upstream=DemoUpstream(delay=0))
    body = app.test_client().post(ROUTE, json={"prompt": "x", "number": 2}).get_json()
    assert body["code"] == 0 and len(body["data"]) == 2
    image = base64.b64decode(body["data"][0]["url"].split(",", 1)[1])
    assert image[:8] == b"\x89PNG\r\n\x1a\n" and image[16:24] == (256).to_bytes(4, "big") * 2


# --- bad requests: refused before the upstream ----------------------------------------------

@pytest.mark.parametrize("body,words", [
    ({}, "'prompt' is required"), ({"prompt": ""}, "'prompt' is required"),
    ({"prompt": "   "}, "'prompt' is required"), ({"prompt": 7}, "'prompt' is required"),
    ({"prompt": "x" * 32001}, "at most 32000"),
    ({"prompt": "x", "number": -1}, "'number'"), ({"prompt": "x", "number": 6}, "'number'"),
    ({"prompt": "x", "number": 0.0001}, "'number'"), ({"prompt": "x", "number": False}, "'number'"),
    ({"prompt": "x", "number": 2.5}, "'number'"), ({"prompt": "x", "number": True}, "'number'"),
    ({"prompt": "x", "number": "two"}, "'number'"), ({"prompt": "x", "number": "-1"}, "'number'"),
    ({"prompt": "x", "size": "100x100"}, "'size'"), ({"prompt": "x", "size": "1792x1024"}, "'size'"),
    ({"prompt": "x", "size": 256}, "'size'"), ({"prompt": "x", "model": "dall-e-3"}, "'model'"),
])
def test_each_bad_parameter_is_a_40000_envelope_naming_it(api, mocked, body, words):
    assert words in failure(api.post(ROUTE, json=body), 40000)
    assert not mocked.calls


@pytest.mark.parametrize("data", [b"", b"{", b"[1, 2]", b"\xff\xfe", b'{"prompt": "\\ud800"}'])
def test_a_body_that_is_not_a_json_object_is_a_40000_envelope(api, mocked, data):
    failure(api.post(ROUTE, data=data), 40000)
    assert not mocked.calls


def test_a_body_over_the_limit_is_a_40000_envelope(mocked):
    message = failure(make_api(max_body_bytes=2048).post(ROUTE, json={"prompt": "x" * 5000}),
                      40000)
    assert "MAX_BODY_BYTES" in message and not mocked.calls


def test_an_image_model_outside_the_allow_list_is_refused(mocked):
    message = failure(make_api(allowed_models=("fake-model",)).post(ROUTE, json={"prompt": "x"}),
                      40000)
    assert "OPENAI_IMAGE_MODEL" in message and not mocked.calls


def test_the_proxy_token_is_asked_for_in_the_envelope(mocked):
    api = make_api(proxy_token="a-long-proxy-token-123")
    failure(api.post(ROUTE, json={"prompt": "x"}), 40100)
    mocked.post(IMAGES, json=image_answer([PNG]))
    assert api.post(ROUTE, json={"prompt": "x"}, headers={
        "Authorization": "Bearer a-long-proxy-token-123"}).get_json()["code"] == 0


def test_get_is_not_allowed_and_says_so_in_the_envelope(api):
    failure(api.get(ROUTE), 40000)


# --- upstream failures ----------------------------------------------------------------------

@pytest.mark.parametrize("status,code,words", [
    (400, 40000, "the upstream rejected the request"), (401, 50000, "refused the proxy's API key"),
    (404, 50000, "does not know model"), (429, 40000, "rate limiting"),
    (500, 50000, "the upstream failed"),
])
def test_upstream_failures_are_envelopes_with_their_message_and_never_the_key(
        api, mocked, status, code, words, caplog):
    mocked.post(IMAGES, status=status, headers={"Retry-After": "3"},
                json={"error": {"message": f"size not supported; key {TEST_KEY}"}})
    with caplog.at_level("INFO", logger="gpt_proxy.access"):
        response = api.post(ROUTE, json={"prompt": "x"})
    message = failure(response, code)
    assert words in message and TEST_KEY[:12] not in response.get_data(as_text=True)
    assert f"status={status if status in (400, 429) else 502}" in access_line(caplog)


def test_unreachable_and_slow_upstreams_are_50000_envelopes(api, mocked):
    mocked.post(IMAGES, body=requests.exceptions.ConnectionError("refused"))
    assert "unreachable" in failure(api.post(ROUTE, json={"prompt": "x"}), 50000)
    mocked.replace(responses.POST, IMAGES, body=requests.exceptions.ReadTimeout("slow"))
    assert "timed out" in failure(api.post(ROUTE, json={"prompt": "x"}), 50000)


@pytest.mark.parametrize("answer,words", [
    (image_answer(urls=["javascript:alert(document.cookie)"]), "neither http(s) nor a data"),
    (image_answer(urls=["file:///etc/passwd"]), "neither http(s) nor a data"),
    (image_answer(urls=["data:text/html;base64,PHNjcmlwdD4="]), "neither http(s) nor a data"),
    ({"created": 1, "data": [{"b64_json": base64.b64encode(b"<svg onload=x>").decode()}]},
     "not a PNG, JPEG, GIF or WebP"),
    ({"created": 1, "data": [{"b64_json": "not base64!"}]}, "not base64"),
    ({"created": 1, "data": [{"revised_prompt": "no image"}]}, "no image"),
    ({"created": 1, "data": "nope"}, "no list of images"),
    (image_answer(urls=[data_url(b"<html>", "image/png")]), "not a PNG, JPEG, GIF or WebP"),
])
def test_an_answer_that_is_not_images_to_show_is_refused(api, mocked, answer, words, caplog):
    mocked.post(IMAGES, json=answer)
    with caplog.at_level("INFO", logger="gpt_proxy.access"):
        response = api.post(ROUTE, json={"prompt": "x"})
    assert words in failure(response, 50000)
    assert "javascript" not in response.get_data(as_text=True)
    assert "result=error:upstream_error" in access_line(caplog)


@pytest.mark.parametrize("reply,words", [
    (dict(status=404, body=b"gone"), "HTTP 404"),
    (dict(body=b"<html>not an image</html>", content_type="text/html"),
     "did not give a PNG, JPEG, GIF or WebP"),
    (dict(body=b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_FETCH_BYTES, content_type="image/png"),
     "larger than"),
    (dict(body=requests.exceptions.ConnectionError("down")), "could not be downloaded"),
    (dict(body=requests.exceptions.ReadTimeout("slow")), "did not download in time"),
])
def test_an_image_url_that_does_not_download_an_image_is_refused(api, mocked, reply, words,
                                                                  caplog):
    mocked.post(IMAGES, json=image_answer(urls=["https://files.example/a.png"]))
    mocked.get("https://files.example/a.png", **reply)
    with caplog.at_level("INFO", logger="gpt_proxy.access"):
        message = failure(api.post(ROUTE, json={"prompt": "x"}), 50000)
    assert words in message
    assert "result=error:" in access_line(caplog)


# --- under gunicorn -------------------------------------------------------------------------

def test_under_gunicorn_an_image_url_is_fetched_over_http_into_a_data_url(live, upstream):
    image_url = f"{upstream.url}/files/1.png"
    upstream.push(json_scenario(200, image_answer(urls=[image_url])),
                  Scenario(headers={"Content-Type": "image/png"}, parts=[PNG[:10], PNG[10:]]))
    body = requests.post(f"{live.url}{ROUTE}", json={"prompt": "a cat", "number": 1},
                         timeout=20).json()
    assert body == {"code": 0, "data": [{"url": data_url(PNG)}]}
    assert upstream.records[1].path == "/v1/files/1.png" and upstream.records[1].method == "GET"
    assert "authorization" not in upstream.records[1].headers


def test_under_gunicorn_a_client_that_leaves_closes_the_upstream(live, upstream):
    import socket
    import time

    upstream.push(Scenario(head_delay=30))
    body = b'{"prompt": "slow"}'
    with socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.sendall(b"POST " + ROUTE.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        record = upstream.wait_for_request()
        left = time.monotonic()
    assert record.seconds_to_close(left) < 1.5
