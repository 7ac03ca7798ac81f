"""deploy/kubernetes/, checked without a cluster: every manifest, alone and as kustomize
renders the folder, valid against the Kubernetes API's schemas (kubernetes-validate bundles
them: offline); and what the manifests promise for a streaming service: probes on /healthz, a
grace period that lets the longest reply finish after a preStop pause, non-root on a
read-only root with its writable folders as emptyDir, ingress-nginx's streaming annotations,
settings and secrets each in their place, metrics scraped, a disruption budget.

Run here once, not in CI: `podman kube play` of the same manifests (docs "Deploying")."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from dotenv import dotenv_values

from gpt_proxy.config import PARSERS

from .kustomize import render
from .test_compose import image_is_named_in_full

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "deploy" / "kubernetes"
KUBERNETES = "1.32.0"  # the oldest version still supported when this was written
MANIFESTS = sorted(p for p in FOLDER.glob("*.yaml") if p.name != "kustomization.yaml")
GUNICORN_SETTINGS = {"WEB_CONCURRENCY", "GRACEFUL_TIMEOUT", "LOG_LEVEL", "WORKER_CLASS",
                     "WORKER_CONNECTIONS", "WORKER_TIMEOUT", "MALLOC_TRIM_SECONDS", "BIND",
                     "METRICS_BIND", "TMPDIR"}


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in render(FOLDER)}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(path):
    for doc in documents(path):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises on any error


def test_the_kustomize_output_is_valid_and_holds_every_object(rendered):
    for doc in rendered.values():
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    assert set(rendered) == {"ConfigMap", "Deployment", "Service", "Ingress",
                             "PodDisruptionBudget"}


def test_the_validation_catches_a_wrong_manifest(rendered):
    """(The check can fail: a field of the wrong type, and one that does not exist.)"""
    wrong = yaml.safe_load(yaml.safe_dump(rendered["Deployment"]))
    wrong["spec"]["replicas"] = "two"
    with pytest.raises(Exception, match="not of type"):
        kubernetes_validate.validate(wrong, KUBERNETES, strict=True)
    wrong = yaml.safe_load(yaml.safe_dump(rendered["Deployment"]))
    wrong["spec"]["template"]["spec"]["containers"][0]["readinessProb"] = {}
    with pytest.raises(Exception, match="readinessProb"):
        kubernetes_validate.validate(wrong, KUBERNETES, strict=True)


def pod(rendered) -> dict:
    return rendered["Deployment"]["spec"]["template"]["spec"]


def container(rendered) -> dict:
    [only] = pod(rendered)["containers"]
    return only


def test_two_replicas_probed_on_healthz_and_a_rollout_that_keeps_them_serving(rendered):
    deployment = rendered["Deployment"]["spec"]
    assert deployment["replicas"] == 2
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container(rendered)[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = container(rendered)["startupProbe"]
    settings = rendered["ConfigMap"]["data"]
    # the start-up wait for PostgreSQL and Redis fits in the start-up probe's patience
    assert startup["periodSeconds"] * startup["failureThreshold"] > \
        float(settings["STARTUP_WAIT_SECONDS"]) + 20


def test_a_stopping_pod_stops_new_work_first_then_lets_the_longest_reply_finish(rendered):
    settings = rendered["ConfigMap"]["data"]
    command = container(rendered)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = float(command[1])
    graceful = float(settings["GRACEFUL_TIMEOUT"])
    assert pause >= 5  # the endpoints' removal reaches the ingress and kube-proxy meanwhile
    assert graceful >= float(settings["MAX_STREAM_SECONDS"])
    grace = pod(rendered)["terminationGracePeriodSeconds"]
    assert grace >= pause + graceful + 20  # a margin for the workers' exit
    assert f"terminationGracePeriodSeconds: {grace}" in (FOLDER / "deployment.yaml").read_text()


def test_non_root_on_a_read_only_root_with_its_writable_folders_as_empty_dirs(rendered):
    security = pod(rendered)["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
    assert "USER app" in (ROOT / "Dockerfile").read_text()
    own = container(rendered)["securityContext"]
    assert own["readOnlyRootFilesystem"] is True and own["allowPrivilegeEscalation"] is False
    assert own["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod(rendered)["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(rendered)["volumeMounts"]}
    assert set(mounts) == {"/tmp", "/app/data"}
    for name in mounts.values():
        assert "emptyDir" in volumes[name], name


def test_resources_are_requested_and_memory_is_limited(rendered):
    resources = container(rendered)["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"memory"}  # no CPU limit: throttling stalls streams
    mib = {k: int(re.fullmatch(r"(\d+)Mi", v)[1])
           for k, v in (("request", resources["requests"]["memory"]),
                        ("limit", resources["limits"]["memory"]))}
    measured_peak = 213  # MB, master + 2 workers with 1,000 open streams (the docs)
    assert mib["request"] >= measured_peak and mib["limit"] >= 2 * measured_peak


def test_settings_come_from_the_config_map_and_secrets_from_the_secret(rendered):
    sources = container(rendered)["envFrom"]
    assert sources == [{"configMapRef": {"name": "gpt-proxy-settings"}},
                       {"secretRef": {"name": "gpt-proxy-secrets"}}]
    assert rendered["ConfigMap"]["metadata"]["name"] == "gpt-proxy-settings"
    known = {name.upper() for name in PARSERS} | GUNICORN_SETTINGS
    settings = rendered["ConfigMap"]["data"]
    assert set(settings) <= known, set(settings) - known
    for name in settings:
        assert not re.search("KEY|TOKEN|PASSWORD|SECRET|_URL$|STORE|STORAGE", name) or \
            name == "OPENAI_BASE_URL", name
    secrets = dotenv_values(FOLDER / "secret.env.example")
    assert set(secrets) <= known
    assert {"OPENAI_API_KEY", "PROXY_TOKEN", "DATABASE_URL", "CONVERSATION_STORE",
            "RATE_LIMIT_STORAGE", "REPLY_STORE"} <= set(secrets)
    assert secrets["DATABASE_URL"].startswith("postgresql://")  # shared by the replicas
    for name in ("CONVERSATION_STORE", "RATE_LIMIT_STORAGE", "REPLY_STORE"):
        assert secrets[name].startswith("redis://"), name
    assert "deploy/kubernetes/secret.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_the_ingress_streams_with_timeouts_longer_than_a_reply(rendered):
    annotations = rendered["Ingress"]["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert annotations[prefix + "proxy-buffering"] == "off"
    longest = float(rendered["ConfigMap"]["data"]["MAX_STREAM_SECONDS"])
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert float(annotations[prefix + timeout]) > longest, timeout
    assert rendered["Ingress"]["spec"]["ingressClassName"] == "nginx"
    [rule] = rendered["Ingress"]["spec"]["rules"]
    [path] = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": "gpt-proxy", "port": {"name": "http"}}
    assert rendered["ConfigMap"]["data"]["TRUSTED_PROXIES"] == "1"


def test_the_service_the_metrics_and_the_disruption_budget_select_the_pods(rendered):
    labels = rendered["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert rendered["Service"]["spec"]["selector"].items() <= labels.items()
    assert rendered["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= \
        labels.items()
    assert rendered["PodDisruptionBudget"]["spec"]["minAvailable"] == 1
    ports = {p["name"]: p for p in rendered["Service"]["spec"]["ports"]}
    assert ports["http"]["targetPort"] == "http" and ports["metrics"]["targetPort"] == "metrics"
    named = {p["name"]: p["containerPort"] for p in container(rendered)["ports"]}
    assert named == {"http": 7345, "metrics": 7346}  # the image's BIND and METRICS_BIND
    annotations = rendered["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "7346",
                           "prometheus.io/path": "/metrics"}
    [monitor] = documents(FOLDER / "monitoring" / "servicemonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        rendered["Service"]["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics",
                                             "interval": "30s"}]


def test_the_image_is_named_in_full_and_can_be_replaced_by_kustomize(tmp_path, rendered):
    image = container(rendered)["image"]
    assert image_is_named_in_full(image), image
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    for path in FOLDER.glob("*.yaml"):
        (overlay / path.name).write_text(path.read_text())
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    kustomization["images"] = [{"name": "localhost/gpt_proxy",
                                "newName": "registry.example.com/team/gpt_proxy",
                                "newTag": "1.4.0"}]
    kustomization["namespace"] = "gpt-proxy"
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    docs = {doc["kind"]: doc for doc in render(overlay)}
    [changed] = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert changed["image"] == "registry.example.com/team/gpt_proxy:1.4.0"
    assert {doc["metadata"]["namespace"] for doc in docs.values()} == {"gpt-proxy"}
