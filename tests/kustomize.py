"""`kubectl kustomize` for the subset deploy/kubernetes/kustomization.yaml uses, in Python:
the listed `resources` (files, each one or more YAML documents), an optional `namespace`, and
`images` (a container image's name replaced by `newName`, its tag by `newTag`). Any other key
is an error, so the renderer never silently ignores what kustomize would do.

Why not kustomize itself: Debian's kubectl (kubernetes-client, bookworm) is 1.20 with
kustomize 2.0, and its package conflicts with a newer kubectl installed otherwise; this
renders the same documents with nothing to install. The developers' `kubectl kustomize`
(kubectl 1.32 here) was compared with it once (docs "Deploying")."""

from __future__ import annotations

from pathlib import Path

import yaml

KNOWN = {"apiVersion", "kind", "resources", "namespace", "images"}


class KustomizeError(ValueError):
    pass


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", {}) if "template" in spec else spec
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _retag(image: str, rule: dict) -> str:
    name, tag = image, ""
    if ":" in image.rpartition("/")[2]:
        name, _, tag = image.rpartition(":")
    if name != rule["name"]:
        return image
    name = rule.get("newName", name)
    tag = rule.get("newTag", tag)
    return f"{name}:{tag}" if tag else name


def render(folder: Path) -> list[dict]:
    """The documents `kubectl kustomize folder` prints, in the order of `resources`."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN
    if unknown:
        raise KustomizeError(f"kustomization.yaml: {sorted(unknown)} not rendered here")
    if kustomization.get("kind") != "Kustomization":
        raise KustomizeError("kustomization.yaml is not a Kustomization")
    documents = []
    for resource in kustomization.get("resources", []):
        path = folder / resource
        if not path.is_file():
            raise KustomizeError(f"resource {resource} is not a file in {folder}")
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for doc in documents:
        if "namespace" in kustomization:
            doc.setdefault("metadata", {})["namespace"] = kustomization["namespace"]
        for container in _containers(doc):
            for rule in kustomization.get("images", []):
                container["image"] = _retag(container["image"], rule)
    return documents
