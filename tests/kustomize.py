"""A small Kustomize renderer for the features infra/k8s uses, so the tests render the overlays with no
kubectl, no network and no binary download: `resources` (files and directories), `namespace`, `labels`
(`pairs`, metadata only), `images` (`newName`, `newTag`) and `patches` (`path`: a strategic merge patch,
matched by kind and name; lists of named items merge by `name`, other lists are replaced).

tests/test_k8s.py checks that it renders exactly what `kubectl kustomize` rendered into infra/k8s/rendered/
(committed), so a feature used here that this renderer gets wrong fails the test."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]
CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                            "PersistentVolume", "StorageClass", "PriorityClass"})


def load_docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render(directory: Path) -> list[Doc]:
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[Doc] = []
    for res in k.get("resources", []):
        path = (directory / res).resolve()
        docs += render(path) if path.is_dir() else load_docs(path)
    for patch in k.get("patches", []):
        for p in load_docs(directory / patch["path"]):
            targets = [d for d in docs if d["kind"] == p["kind"] and d["metadata"]["name"] == p["metadata"]["name"]]
            assert targets, f"patch {patch['path']}: no {p['kind']}/{p['metadata']['name']}"
            for t in targets:
                merged = merge(t, p)
                t.clear()
                t.update(merged)
    for group in k.get("labels", []):
        for d in docs:
            d["metadata"].setdefault("labels", {}).update(group["pairs"])
    for image in k.get("images", []):
        for d in docs:
            for c in _containers(d):
                name, _, _tag = c.get("image", "").partition(":")
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image['newTag']}" if "newTag" in image else \
                        image.get("newName", name)
    if "namespace" in k:
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = k["namespace"]
    return docs


def _containers(doc: Doc) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("containers", []), *spec.get("initContainers", [])]


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge, the part of it these manifests need."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(
            isinstance(x, dict) and "name" in x for x in base + patch):
        out = copy.deepcopy(base)
        for item in patch:
            same = [i for i, x in enumerate(out) if x["name"] == item["name"]]
            if same:
                out[same[0]] = merge(out[same[0]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def key(doc: Doc) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]
