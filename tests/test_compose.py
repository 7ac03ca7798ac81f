"""compose.yaml and the files it mounts, checked without a container engine: every service,
port, volume, health check and start-up order the docs promise, parsed from the YAML; every
image named in full; each service handed only its own secrets; the Prometheus and Grafana
files valid and pointing at each other; and the stack's nginx configuration run for real
(Debian's nginx) in front of the service: streaming, and following the instances' names
through a DNS server the test runs while one instance is restarted onto a new address under
traffic.

The stack itself was brought up with podman once (README, Docker); CI has no engine."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from .browser_helpers import missing
from .conftest import TEST_KEY, until
from .dns_server import DNSServer
from .fake_upstream import Scenario, cut, openai_stream
from .processes import Nginx, free_port, nginx_binary, stop_process
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
        assert service["image"] == "localhost/gpt_proxy:latest" and service["build"] == "."
        assert service["networks"]["default"]["aliases"] == ["gpt-proxy"]  # nginx's name
        env = service["environment"]
        assert env["DATABASE_URL"].startswith("postgresql://gpt_proxy:${POSTGRES_PASSWORD")
        assert env["DATABASE_URL"].endswith("@postgres:5432/gpt_proxy")
        assert env["CONVERSATION_STORE"] == "redis://redis:6379/0"
        assert env["RATE_LIMIT_STORAGE"] == "redis://redis:6379/1"
        assert env["REPLY_STORE"] == "redis://redis:6379/2"
        assert env["TRUSTED_PROXIES"] == "1"
        assert env["BIND"] == "0.0.0.0:7345" and env["METRICS_BIND"] == "0.0.0.0:7346"
        assert "AUTH" not in env  # the operator's choice, from .env
        assert service["env_file"] == "gpt_proxy.env"  # the service's settings, not .env
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
    stack_example = (ROOT / "deploy/compose.env.example").read_text()
    service_example = (ROOT / ".env.example").read_text()
    for name in ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "PUBLISH_ADDRESS"):
        assert re.search(rf"^{name}=", stack_example, re.MULTILINE), name
        # the instances' file (a copy of .env.example) carries none of the stack's secrets
        assert not re.search(rf"^#? *{name}=", service_example, re.MULTILINE), name


REFERENCE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?[-?+]([^}]*))?\}")


def handed(service: dict) -> set[str]:
    """Every variable a service is handed: its `environment` names and the ${...} of compose's
    own .env written into their values, and every line of the env files it reads."""
    names = set()
    for key, value in (service.get("environment") or {}).items():
        names.add(key)
        names.update(found[0] for found in REFERENCE.findall(str(value)))
    env_files = service.get("env_file") or []
    for file in [env_files] if isinstance(env_files, str) else env_files:
        names.add(f"env_file:{file}")
    return names


def test_each_service_is_handed_only_its_own_secrets(compose):
    """No service reads compose's .env whole; the stack's passwords reach only the services
    that use them: PostgreSQL's its server and (in DATABASE_URL) the instances, Grafana's
    only Grafana; the upstream key and the token only the instances (their env file)."""
    given = {name: handed(service) for name, service in services(compose).items()}
    for name, names in given.items():
        assert "env_file:.env" not in names, name
        if "GRAFANA_ADMIN_PASSWORD" in names:
            assert name == "grafana", name
        if "POSTGRES_PASSWORD" in names:
            assert name in {"postgres", *INSTANCES}, name
        if any(n.startswith("env_file:") for n in names):
            assert name in INSTANCES, name
    assert "GRAFANA_ADMIN_PASSWORD" in given["grafana"]
    for name in ("nginx", "redis", "prometheus"):
        assert not {n for n in given[name] if re.search("PASSWORD|KEY|TOKEN|env_file", n)}, name
    for instance in INSTANCES:
        assert given[instance] >= {"env_file:gpt_proxy.env", "POSTGRES_PASSWORD"}
    ignored = {line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()}
    assert {".env", "gpt_proxy.env"} <= ignored
    assert "*.env" in (ROOT / ".dockerignore").read_text().splitlines()


def test_an_empty_password_stops_the_stack_with_a_sentence_saying_what_to_set():
    """compose's `${VAR:?message}`: an empty or missing password stops `up` before anything
    starts, with `required variable VAR is missing a value: <message>`; each message says
    which variable to set, where, and how to make one."""
    text = (ROOT / "compose.yaml").read_text()
    required = {}
    for name, message in re.findall(r"\$\{([A-Z_]+):\?([^}]*)\}", text):
        required.setdefault(name, set()).add(message)
    assert set(required) == {"POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
    for name, messages in required.items():
        [message] = messages  # the same sentence wherever the variable is used
        assert message.startswith(f"set {name} in .env"), message
        assert "openssl rand -hex 24" in message and "deploy/compose.env.example" in message


def image_is_named_in_full(image: str) -> bool:
    """registry/path:tag, the registry a host name (a dot, a port, or localhost): what podman
    needs without a short-name alias list, and what Docker reads the same way."""
    registry, _, rest = image.partition("/")
    return bool(rest) and ("." in registry or ":" in registry or registry == "localhost") \
        and ":" in rest.rpartition("/")[2]


def test_every_image_is_named_in_full_with_a_tag(compose):
    images = {name: service["image"] for name, service in services(compose).items()}
    assert set(images) == SERVICES
    for name, image in images.items():
        assert image_is_named_in_full(image), (name, image)
    [base] = re.findall(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert image_is_named_in_full(base), base
    for short in ("nginx:1.27", "postgres:16", "grafana/grafana:11.4.0", "gpt_proxy"):
        assert not image_is_named_in_full(short), short


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


def test_the_nginx_configuration_looks_the_instances_up_and_keeps_the_recipe(compose):
    nginx = services(compose)["nginx"]
    assert mounts(nginx)["/etc/nginx/templates/default.conf.template"] == "./deploy/nginx.conf"
    assert nginx["environment"]["NGINX_ENTRYPOINT_LOCAL_RESOLVERS"] == "1"
    version = re.fullmatch(r"docker\.io/library/nginx:(\d+)\.(\d+)\.(\d+)-bookworm",
                           nginx["image"])
    assert version and tuple(map(int, version.groups())) >= (1, 27, 3)  # `resolve` there too
    conf = (ROOT / "deploy/nginx.conf").read_text()
    directives = re.sub(r"#.*", "", conf)
    assert "resolver ${NGINX_LOCAL_RESOLVERS} valid=1s ipv6=off;" in directives
    assert not re.search(r"^\s*upstream ", directives, re.MULTILINE)  # names looked up once
    assert "set $instances gpt-proxy;" in directives
    assert "proxy_pass http://$instances:7345;" in directives
    assert "proxy_connect_timeout 250ms;" in directives
    for line in ("proxy_http_version 1.1;", "proxy_set_header Host $http_host;",
                 "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
                 "proxy_set_header X-Forwarded-Proto $scheme;", "proxy_read_timeout 1h;"):
        assert line in conf, line
    assert "proxy_buffering" not in directives  # the replies' X-Accel-Buffering: no does it


def stack_nginx_conf(resolver: str, port: int, extra: str = "") -> str:
    """deploy/nginx.conf as the nginx image renders it, for Debian's nginx here: the resolver
    the test's DNS server, the instances' port `port`, listening on a free loopback port, and
    `extra` directives in its location."""
    conf = (ROOT / "deploy/nginx.conf").read_text()
    conf = conf.replace("${NGINX_LOCAL_RESOLVERS}", resolver).replace(":7345;", f":{port};")
    conf = conf.replace("{", "{{").replace("}", "}}")
    conf = conf.replace("listen 80;", "listen 127.0.0.1:{port};")
    return conf.replace("proxy_pass ", f"{extra}\n        proxy_pass ", 1)


@pytest.fixture()
def stack_nginx(live):
    """Debian's nginx with deploy/nginx.conf, the alias of the instances naming the test's
    gunicorn."""
    if not nginx_binary():
        missing("nginx is not installed (apt-get install nginx)")
    dns = DNSServer({"gpt-proxy": ["127.0.0.1"]})
    nginx = Nginx(stack_nginx_conf(dns.address, live.port))
    try:
        yield f"http://127.0.0.1:{nginx.port}"
    finally:
        nginx.stop()
        dns.stop()


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


# --- an instance restarted under traffic -----------------------------------------------------

class Instance:
    """One instance of the stack: the service under gunicorn listening on `address` (a
    loopback address of its own, as a container has its own address) and the stack's port."""

    def __init__(self, address: str, port: int, upstream, folder: Path) -> None:
        self.address, self.port = address, port
        folder.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GPT_"))}
        env.update(OPENAI_API_KEY=TEST_KEY, OPENAI_BASE_URL=upstream.url,
                   OPENAI_MODEL="fake-model", WEB_CONCURRENCY="1", BIND=f"{address}:{port}",
                   METRICS_BIND="", DOTENV_FILE=os.devnull, NO_PROXY="127.0.0.1,localhost",
                   DATABASE_URL=f"sqlite:///{folder}/gpt_proxy.db",
                   CONVERSATION_STORE=f"sqlite:///{folder}/conversations.db")
        self.log = open(folder / "gunicorn.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        until(self._listening, f"gunicorn on {address}:{port} never listened", 30)

    def warm(self) -> float:
        """Wait for its first answer (its worker has booted); the seconds that took."""
        url = f"http://{self.address}:{self.port}/healthz"
        started = time.monotonic()
        until(lambda: requests.get(url, timeout=30).status_code == 200,
              f"{url} never answered", 30)
        return time.monotonic() - started

    def _listening(self) -> bool:
        assert self.proc.poll() is None, f"gunicorn on {self.address} exited"
        try:
            with socket.create_connection((self.address, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


class BlackHole:
    """What an address whose container is gone does to a connection: nothing (no refusal, no
    answer) until the connecting side gives up. A listener whose one-place queue is kept
    full: the kernel drops every further SYN."""

    def __init__(self, address: str, port: int) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((address, port))
        self.listener.listen(0)
        self.filling = [socket.create_connection((address, port), timeout=2)]

    def close(self) -> None:
        for sock in (*self.filling, self.listener):
            sock.close()


class Traffic:
    """Clients sending requests through nginx one after another, alternately a health check
    and a streamed reply, each timed from sending to its last byte; at most `limit` requests
    or `seconds` seconds each."""

    def __init__(self, url: str, clients: int = 2, limit: int = 3000, seconds: float = 90):
        self.url, self.limit, self.seconds = url, limit, seconds
        self.done = threading.Event()
        self.running = threading.Event()  # cleared: the clients pause between requests
        self.running.set()
        self.busy = 0  # requests on their way now
        self.lock = threading.Lock()
        self.results: list[tuple[float, int, str]] = []  # (seconds, status, upstream addresses)
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        session = requests.Session()
        session.trust_env = False
        end = time.monotonic() + self.seconds
        for count in range(self.limit):
            if not self.running.wait(max(0.0, end - time.monotonic())):
                return
            if self.done.is_set() or time.monotonic() > end:
                return
            with self.lock:
                self.busy += 1
            started = time.monotonic()
            try:
                if count % 2:
                    response = session.post(f"{self.url}/api/gpt/get", json={"message": "hi"},
                                            timeout=30)
                else:
                    response = session.get(f"{self.url}/healthz", timeout=30)
                _ = response.content  # the whole body
                status, upstream = response.status_code, response.headers.get("X-Upstream", "")
            except requests.RequestException as exc:
                status, upstream = 0, repr(exc)
            self.results.append((time.monotonic() - started, status, upstream))
            with self.lock:
                self.busy -= 1

    def pause(self) -> None:
        """Return once no request is on its way."""
        self.running.clear()
        until(lambda: self.busy == 0, "a request never ended", 30)

    def answered_by(self, address: str, since: int = 0) -> int:
        """Requests answered by the instance at `address` (the last upstream nginx tried)."""
        return sum(1 for _, _, upstream in self.results[since:]
                   if upstream.rpartition(", ")[2].startswith(f"{address}:"))

    def stop(self) -> None:
        self.done.set()
        self.running.set()
        for thread in self.threads:
            thread.join(40)


def test_restarting_an_instance_under_traffic_makes_no_request_wait(upstream, tmp_path):
    """The trap: nginx resolved the instances' names once, at start; an instance restarted
    onto a new address left nginx sending requests to the old one, which waited 3 to 30 s
    each. deploy/nginx.conf (Debian's nginx, the compose file's names served by a DNS server
    the test runs and re-points): instance 2 stops, its old address swallowing connections
    as a vanished container's does while nginx still holds it, then comes back on a new
    address. No request fails or waits a second; both instances answer before and after.

    Not covered, and said in the docs: an engine names a container as soon as it runs, and
    gunicorn opens its port before its worker has loaded the app, so the very first requests
    a restarted instance gets wait for that boot (printed here: 0.5 to 2 s on this shared
    machine). The instances here enter the name once they answer, as nginx starts only once
    both are healthy in compose.yaml, and as Kubernetes' readiness probe does it. And the
    clients pause while instance 2 stops: a POST that sits in its listen queue at the instant
    gunicorn closes it is reset, and nginx answers 502 rather than send a request that may
    have been received to the other instance (seen once in ~1,500 requests here)."""
    if not nginx_binary():
        missing("nginx is not installed (apt-get install nginx)")
    port = free_port()
    one, two, two_again = "127.0.0.2", "127.0.0.3", "127.0.0.4"
    dns = DNSServer({"gpt-proxy": [one, two], "gpt-proxy-1": [one], "gpt-proxy-2": [two]})
    started = [Instance(one, port, upstream, tmp_path / "1"),
               Instance(two, port, upstream, tmp_path / "2")]
    hole = nginx = traffic = None
    try:
        for instance in started:
            instance.warm()
        nginx = Nginx(stack_nginx_conf(dns.address, port,
                                       "add_header X-Upstream $upstream_addr always;"))
        traffic = Traffic(f"http://127.0.0.1:{nginx.port}")
        until(lambda: traffic.answered_by(one) >= 5 and traffic.answered_by(two) >= 5,
              "both instances never answered", 30)

        traffic.pause()  # (a request in its listen queue as it stops: see the docstring)
        started[1].stop()  # the restart: instance 2 is gone...
        hole = BlackHole(two, port)  # ...its old address swallowing connections
        traffic.running.set()
        stale = len(traffic.results)
        until(lambda: any(upstream.startswith(f"{two}:") and ", " in upstream
                          for _, _, upstream in traffic.results[stale:]),
              "no request was sent to the old address (nginx's answer of the name ran out "
              "before the test could see it)", 30)
        dns.set("gpt-proxy", [one])  # the engine drops a stopped container from the name
        dns.set("gpt-proxy-2", [])
        # back, on a new address, once its worker answers (see the docstring)
        started.append(Instance(two_again, port, upstream, tmp_path / "2-again"))
        boot = started[-1].warm()
        dns.set("gpt-proxy", [one, two_again])
        dns.set("gpt-proxy-2", [two_again])
        after = len(traffic.results)
        until(lambda: traffic.answered_by(two_again, after) >= 10
              and traffic.answered_by(one, after) >= 10,
              "the restarted instance never got its share of requests", 30)
    finally:
        if traffic:
            traffic.stop()
        for item in (nginx, hole, dns):
            if item:
                item.stop() if hasattr(item, "stop") else item.close()
        for instance in started:
            instance.stop()
    failed = [result for result in traffic.results if result[1] != 200]
    assert not failed, failed[:5]
    slowest = max(seconds for seconds, _, _ in traffic.results)
    assert slowest < 1.0, (f"a request waited {slowest:.2f} s",
                           sorted(traffic.results, reverse=True)[:5])
    retried = [upstream for _, _, upstream in traffic.results if ", " in upstream]
    assert retried and all(u.startswith(f"{two}:") for u in retried), retried[:5]
    times = sorted(seconds for seconds, _, _ in traffic.results)
    print(f"{len(times)} requests, median {times[len(times) // 2] * 1000:.0f} ms, "
          f"slowest {slowest * 1000:.0f} ms, the restarted worker's boot {boot:.2f} s, "
          f"{len(retried)} tried the old address first, then the other instance")
