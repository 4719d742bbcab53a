"""The generated CRDs: committed file current, schemas structural, Istio's samples accepted by them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from meshkit.config.loader import load_files
from meshkit.config.messages import ConfigError
from meshkit.k8s.crds import SchemaError, all_crds, render, structural

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "operator" / "deploy" / "base" / "crds.yaml"
SAMPLES = ROOT / "tests" / "config" / "istio_samples"
CRDS = all_crds()
TYPE_EXTENSIONS = ("x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string")


def test_committed_crds_match_the_generator() -> None:
    assert COMMITTED.read_text() == render(), (
        "operator/deploy/base/crds.yaml drifted from the models: "
        "run `python -m meshkit.k8s.crds > operator/deploy/base/crds.yaml` and commit it"
    )


def _structural_problems(node: dict[str, Any], where: str) -> list[str]:
    problems: list[str] = []
    if "$ref" in node or "$defs" in node or "definitions" in node:
        problems.append(f"{where}: uses $ref/definitions")
    for combinator in ("anyOf", "oneOf", "allOf", "not"):
        if combinator in node:
            problems.append(f"{where}: uses {combinator}")
    if "type" not in node and not any(node.get(ext) for ext in TYPE_EXTENSIONS):
        problems.append(f"{where}: no type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{where}: properties and additionalProperties together")
    if node.get("additionalProperties") is False:
        problems.append(f"{where}: additionalProperties false")
    if "default" in node and node["default"] is None:
        problems.append(f"{where}: null default")
    if node.get("x-kubernetes-preserve-unknown-fields") and node.get("type") not in (None, "object"):
        problems.append(f"{where}: preserve-unknown-fields on a non-object")
    for name, child in (node.get("properties") or {}).items():
        problems += _structural_problems(child, f"{where}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        problems += _structural_problems(node["additionalProperties"], f"{where}.*")
    if "items" in node:
        problems += _structural_problems(node["items"], f"{where}[]")
    if node.get("type") == "array" and "items" not in node:
        problems.append(f"{where}: array without items")
    return problems


@pytest.mark.parametrize("crd", CRDS, ids=lambda c: c["metadata"]["name"])
def test_schemas_are_structural(crd: dict[str, Any]) -> None:
    versions = crd["spec"]["versions"]
    storage = "v1alpha3" if crd["spec"]["names"]["kind"] == "EnvoyFilter" else "v1"  # as Istio's CRDs
    assert [v["name"] for v in versions if v["storage"]] == [storage]
    assert all(v["served"] for v in versions)
    for version in versions:
        schema = version["schema"]["openAPIV3Schema"]
        assert _structural_problems(schema, crd["spec"]["names"]["kind"]) == []


def test_versions_and_groups_as_istio() -> None:
    served = {c["spec"]["names"]["kind"]: (c["spec"]["group"], [v["name"] for v in c["spec"]["versions"]])
              for c in CRDS}
    assert served == {
        "VirtualService": ("networking.istio.io", ["v1", "v1beta1", "v1alpha3"]),
        "DestinationRule": ("networking.istio.io", ["v1", "v1beta1", "v1alpha3"]),
        "PeerAuthentication": ("security.istio.io", ["v1", "v1beta1"]),
        "AuthorizationPolicy": ("security.istio.io", ["v1", "v1beta1"]),
        "EnvoyFilter": ("networking.istio.io", ["v1alpha3"]),
        "Telemetry": ("telemetry.istio.io", ["v1", "v1alpha1"]),
        "Gateway": ("networking.istio.io", ["v1", "v1beta1", "v1alpha3"]),
        "RequestAuthentication": ("security.istio.io", ["v1", "v1beta1"]),
        "ServiceEntry": ("networking.istio.io", ["v1", "v1beta1", "v1alpha3"]),
    }
    names = {c["metadata"]["name"] for c in CRDS}
    assert "authorizationpolicies.security.istio.io" in names


def test_preserve_unknown_fields_only_where_meshkit_has_unsupported_fields() -> None:
    vs = next(c for c in CRDS if c["spec"]["names"]["kind"] == "VirtualService")
    spec = vs["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "x-kubernetes-preserve-unknown-fields" not in spec  # every VirtualService field is modelled
    http = spec["properties"]["http"]["items"]
    assert http.get("x-kubernetes-preserve-unknown-fields") is True  # corsPolicy, directResponse: not
    route = http["properties"]["route"]
    destination = route["items"]["properties"]["destination"]
    assert "x-kubernetes-preserve-unknown-fields" not in destination  # nothing unsupported: pruned


def test_istio_samples_validate_against_the_crd_schemas() -> None:
    """Every Istio sample the loader accepts is also accepted by the CRD schema (types agree)."""
    # by (group, kind): Gateway API's Gateway (no CRD of meshkit's) is not Istio's Gateway
    schemas = {(c["spec"]["group"], c["spec"]["names"]["kind"]): c["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"] for c in CRDS}
    files = sorted(SAMPLES.glob("*.yaml"))
    assert files, "no Istio samples found"
    checked = 0
    for path in files:
        try:
            load_files([path])
        except ConfigError:
            continue  # a sample meant to be rejected: not this test's business
        for document in yaml.safe_load_all(path.read_text()):
            if not isinstance(document, dict):
                continue
            key = (str(document.get("apiVersion", "")).partition("/")[0], document.get("kind"))
            if key in schemas:
                jsonschema.validate({"spec": document.get("spec", {})}, schemas[key])
                checked += 1
    assert checked >= 5


def test_wrong_type_is_rejected_by_the_crd_schema() -> None:
    schema = next(c for c in CRDS if c["spec"]["names"]["kind"] == "VirtualService")
    openapi = schema["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    route = [{"destination": {"host": "r"}, "weight": "all"}]
    bad = {"spec": {"hosts": ["reviews"], "http": [{"route": route}]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, openapi)


def test_unions_without_a_structural_form_are_reported() -> None:
    with pytest.raises(SchemaError, match=r"x\.y"):
        union = {"anyOf": [{"type": "integer"}, {"type": "array", "items": {"type": "string"}}]}
        structural(union, {}, "x.y")
