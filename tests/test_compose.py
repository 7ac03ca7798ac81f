"""compose.yaml and the files it mounts, checked without a container engine: every service,
port, volume, health check and start-up order the README's Docker section promises, parsed
from the YAML; the Prometheus and Grafana files valid and pointing at each other; and the
stack's nginx configuration run for real (Debian's nginx) in front of the service, streaming.

The stack itself was brought up with podman once (README, Docker); CI has no engine."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests
import yaml

from .browser_helpers import missing
from .fake_upstream import Scenario, cut, openai_stream
from .processes import Nginx, nginx_binary
from .test_integration import TEXT, TOKENS

ROOT = Path(__file__).resolve().parent.parent
INSTANCES = ("gpt-proxy-1", "gpt-proxy-2")
SERVICES = {*INSTANCES, "nginx", "postgres", "redis", "prometheus", "grafana"}
VOLUMES = {"postgres_data", "redis_data", "prometheus_data", "grafana_data"}
SECRETS = ("OPENAI_API_KEY", "PROXY_TOKEN", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def services(compose: dict) -> dict:
    return compose["services"]


def mounts(service: dict) -> dict[str, str]:
    """container path -> host path (./...) or volume name, of a service's volumes."""
    found = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        found[target] = source
    return found


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "m" else 1)


def test_the_stack_has_every_service_and_named_volume_the_readme_names(compose):
    assert set(services(compose)) == SERVICES
    assert set(compose["volumes"]) == VOLUMES
    readme = (ROOT / "README.md").read_text()
    for name in (*SERVICES, *VOLUMES, "docker compose up", "podman-compose"):
        assert f"`{name}" in readme or name in readme, name


def test_every_service_has_a_health_check_and_starts_after_what_it_needs(compose):
    for name, service in services(compose).items():
        test = service.get("healthcheck", {}).get("test")
        assert isinstance(test, list) and test[0] == "CMD" and len(test) > 1, name
    order = {name: service.get("depends_on", {}) for name, service in services(compose).items()}
    for instance in INSTANCES:
        assert order[instance] == {"postgres": {"condition": "service_healthy"},
                                   "redis": {"condition": "service_healthy"}}
    assert order["nginx"] == {name: {"condition": "service_healthy"} for name in INSTANCES}
    assert order["grafana"] == {"prometheus": {"condition": "service_healthy"}}


def test_the_instances_share_postgres_and_redis_and_trust_one_proxy(compose):
    for name in INSTANCES:
        service = services(compose)[name]
        assert service["image"] == "gpt_proxy:latest" and service["build"] == "."
        env = service["environment"]
        assert env["DATABASE_URL"].startswith("postgresql://gpt_proxy:${POSTGRES_PASSWORD")
        assert env["DATABASE_URL"].endswith("@postgres:5432/gpt_proxy")
        assert env["CONVERSATION_STORE"] == "redis://redis:6379/0"
        assert env["RATE_LIMIT_STORAGE"] == "redis://redis:6379/1"
        assert env["REPLY_STORE"] == "redis://redis:6379/2"
        assert env["TRUSTED_PROXIES"] == "1"
        assert env["BIND"] == "0.0.0.0:7345" and env["METRICS_BIND"] == "0.0.0.0:7346"
        assert "AUTH" not in env  # the operator's choice, from .env
        assert service["env_file"] == ".env"
        assert "ports" not in service and set(service["expose"]) == {"7345", "7346"}
        assert service["healthcheck"]["test"] == ["CMD", "python", "healthcheck.py"]
        assert service["read_only"] is True and "/tmp" in service["tmpfs"]
        graceful = 120  # GRACEFUL_TIMEOUT's default: running replies get to finish
        assert seconds(service["stop_grace_period"]) > graceful


def test_no_secret_is_written_in_the_file(compose):
    text = (ROOT / "compose.yaml").read_text()
    for name in SECRETS:
        for value in re.findall(rf"^ *{name}: *(\S+)", text, re.MULTILINE):
            assert value.startswith("${" + name + ":?"), (name, value)  # from .env, required
    for name, service in services(compose).items():
        for key, value in (service.get("environment") or {}).items():
            if re.search("PASSWORD|KEY|TOKEN|SECRET", key):
                assert str(value).startswith("${"), (name, key)
    env_example = (ROOT / ".env.example").read_text()
    for name in ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "PUBLISH_ADDRESS"):
        assert re.search(rf"^{name}=", env_example, re.MULTILINE), name


def test_only_nginx_grafana_and_prometheus_publish_ports_and_on_loopback_by_default(compose):
    published = {name: service["ports"] for name, service in services(compose).items()
                 if "ports" in service}
    assert published == {"nginx": ["${PUBLISH_ADDRESS:-127.0.0.1:8080}:80"],
                         "prometheus": ["127.0.0.1:9090:9090"],
                         "grafana": ["127.0.0.1:3000:3000"]}


def test_the_data_lives_on_the_named_volumes(compose):
    assert mounts(services(compose)["postgres"])["/var/lib/postgresql/data"] == "postgres_data"
    assert mounts(services(compose)["redis"])["/data"] == "redis_data"
    assert "--appendonly" in services(compose)["redis"]["command"]
    assert mounts(services(compose)["prometheus"])["/prometheus"] == "prometheus_data"
    assert mounts(services(compose)["grafana"])["/var/lib/grafana"] == "grafana_data"


def test_every_file_the_stack_mounts_is_in_the_repository(compose):
    for name, service in services(compose).items():
        for source in mounts(service).values():
            if source.startswith("./"):
                assert (ROOT / source).is_file(), (name, source)
            else:
                assert source in compose["volumes"], (name, source)


def test_prometheus_scrapes_both_instances_metrics_ports_with_the_alert_rules(compose):
    volumes = mounts(services(compose)["prometheus"])
    config = yaml.safe_load((ROOT / volumes["/etc/prometheus/prometheus.yml"][2:]).read_text())
    [job] = config["scrape_configs"]
    assert job["job_name"] == "gpt_proxy"  # monitoring/alerts.yml asks for up{job="gpt_proxy"}
    assert 'up{job="gpt_proxy"}' in (ROOT / "monitoring/alerts.yml").read_text()
    [targets] = job["static_configs"]
    assert targets["targets"] == [f"{name}:7346" for name in INSTANCES]
    assert config["rule_files"] == ["/etc/prometheus/rules/gpt_proxy.yml"]
    assert volumes["/etc/prometheus/rules/gpt_proxy.yml"] == "./monitoring/alerts.yml"
    rules = yaml.safe_load((ROOT / "monitoring/alerts.yml").read_text())
    assert all(rule["alert"] and rule["expr"] for group in rules["groups"]
               for rule in group["rules"])


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(compose):
    volumes = mounts(services(compose)["grafana"])
    sources = yaml.safe_load((ROOT / volumes[
        "/etc/grafana/provisioning/datasources/gpt_proxy.yml"][2:]).read_text())
    [source] = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True
    providers = yaml.safe_load((ROOT / volumes[
        "/etc/grafana/provisioning/dashboards/gpt_proxy.yml"][2:]).read_text())
    [provider] = providers["providers"]
    folder = provider["options"]["path"]
    dashboards = [target for target in volumes if target.startswith(folder + "/")]
    assert dashboards == [f"{folder}/gpt_proxy.json"]
    assert volumes[dashboards[0]] == "./monitoring/grafana-dashboard.json"
    dashboard = json.loads((ROOT / "monitoring/grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["panels"]
    assert {"name": "datasource", "type": "datasource", "query": "prometheus",
            "label": "Prometheus"} in dashboard["templating"]["list"]  # picks the default


def test_the_nginx_configuration_names_both_instances_and_the_readme_recipe(compose):
    assert mounts(services(compose)["nginx"])["/etc/nginx/conf.d/default.conf"] == \
        "./deploy/nginx.conf"
    conf = (ROOT / "deploy/nginx.conf").read_text()
    assert re.findall(r"server (\S+) ", conf) == [f"{name}:7345" for name in INSTANCES]
    for line in ("proxy_http_version 1.1;", "proxy_set_header Host $http_host;",
                 "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
                 "proxy_set_header X-Forwarded-Proto $scheme;", "proxy_read_timeout 1h;"):
        assert line in conf, line
    directives = re.sub(r"#.*", "", conf)
    assert "proxy_buffering" not in directives  # the replies' X-Accel-Buffering: no does it


@pytest.fixture()
def stack_nginx(live):
    """Debian's nginx with deploy/nginx.conf, both instances being the test's gunicorn."""
    if not nginx_binary():
        missing("nginx is not installed (apt-get install nginx)")
    conf = (ROOT / "deploy/nginx.conf").read_text().replace("{", "{{").replace("}", "}}")
    for name in INSTANCES:
        conf = conf.replace(f"{name}:7345", f"127.0.0.1:{live.port}")
    conf = conf.replace("listen 80;", "listen 127.0.0.1:{port};")
    nginx = Nginx(conf)
    try:
        yield f"http://127.0.0.1:{nginx.port}"
    finally:
        nginx.stop()


def test_the_stack_nginx_streams_a_reply_before_it_ends(stack_nginx, upstream):
    """The upstream sends every token, then holds the reply open: the client has the whole
    text through nginx while the reply is still running, so nothing waits in a buffer."""
    upstream.push(Scenario(parts=cut(openai_stream(TOKENS, done=False, finish=None,
                                                   usage=False)), hold_open=True))
    assert requests.get(f"{stack_nginx}/healthz", timeout=10).json()["status"] == "ok"
    with requests.post(f"{stack_nginx}/api/gpt/get", json={"message": "hi"}, stream=True,
                       timeout=10) as response:
        assert response.status_code == 200
        received = b""
        for piece in response.iter_content(chunk_size=None):
            received += piece
            if received.decode("utf-8", "ignore") == TEXT:
                break
        assert received.decode() == TEXT
        assert not upstream.wait_for_request().completed.is_set()  # still open upstream


def test_the_stack_nginx_passes_the_host_with_its_port(stack_nginx):
    """The service sees the address the client used, port included ($http_host, not $host):
    it names it in its messages, and a browser's Origin with that port is its own origin."""
    answer = requests.post(f"{stack_nginx}/chat/completions", json={}, timeout=10)
    assert answer.status_code == 404
    assert f"the base URL to give a client is {stack_nginx}/v1" in answer.json()["error"]["message"]
