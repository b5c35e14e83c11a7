"""deploy/kserve/inferenceservice.yaml: valid against KServe's InferenceService schema, and its
container, port, probes and settings match the real server and image.

The schema is the openAPIV3Schema of serving.kserve.io/v1beta1 InferenceService from KServe's CRD
(kserve/kserve config/crd/full/serving.kserve.io_inferenceservices.yaml, commit aaac4e294dae,
Apache-2.0), status removed, stored as tests/data/kserve-inferenceservice-v1beta1.schema.json.gz.
No Kubernetes cluster runs here: nothing was applied.
"""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import pytest
import yaml
from fixtures_deploy import DEPLOY_DIR, dockerfile_stages, elunet_command, serve_default

MANIFEST = DEPLOY_DIR / "kserve" / "inferenceservice.yaml"
SCHEMA = Path(__file__).parent / "data" / "kserve-inferenceservice-v1beta1.schema.json.gz"
# KServe's conventions for a custom predictor (pkg/constants/constants.go).
KSERVE_CONTAINER = "kserve-container"
KSERVE_MODEL_DIR = "/mnt/models"
KSERVE_ENV = {"STORAGE_URI", "PROTOCOL"}


def strict(schema):
    """Like the API server's strict field validation: an object with declared properties accepts
    no others (unless it preserves unknown fields)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def validate():
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    validator = jsonschema_rs.Draft7Validator(strict(json.loads(gzip.decompress(SCHEMA.read_bytes()))))
    return lambda doc: [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def container(manifest: dict) -> dict:
    (only,) = manifest["spec"]["predictor"]["containers"]
    return only


def test_manifest_matches_the_kserve_schema(manifest, validate):
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService"
    assert validate(manifest) == []


def test_schema_check_catches_a_misspelt_field(manifest, validate):
    broken = copy.deepcopy(manifest)
    container(broken)["readinesProbe"] = container(broken).pop("readinessProbe")
    assert any("readinesProbe" in e for e in validate(broken))


def test_predictor_runs_the_serve_image_on_the_v2_protocol(manifest):
    c = container(manifest)
    assert c["name"] == KSERVE_CONTAINER
    # The image is the Dockerfile's serve target, whose ENTRYPOINT is elunet.
    assert c["image"].rsplit(":", 1)[1] in dockerfile_stages()
    assert c["args"][0] == "serve" and elunet_command("serve") is not None
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["PROTOCOL"] == "v2"
    assert env["ELUNET_REPOSITORY"] == KSERVE_MODEL_DIR, "where KServe's storage initializer puts STORAGE_URI"
    from elunet.serve.settings import env_names, load_settings

    assert set(env) - KSERVE_ENV <= set(env_names().values())
    settings = load_settings(environ={k: v for k, v in env.items() if k not in KSERVE_ENV})
    assert settings.device and settings.device.startswith("cuda")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert c["securityContext"]["runAsNonRoot"] is True
    # The image's user: runtime-setup.sh creates it with this uid.
    setup = (DEPLOY_DIR / "runtime-setup.sh").read_text()
    assert f"--uid {c['securityContext']['runAsUser']} " in setup


def test_port_and_probes_are_the_servers(manifest, serve_routes):
    c = container(manifest)
    env = {e["name"]: e["value"] for e in c["env"]}
    port = int(env.get("ELUNET_PORT", serve_default("port")))
    assert [p["containerPort"] for p in c["ports"]] == [port]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}
    assert {"/v2/health/ready", "/v2/health/live"} <= serve_routes
