"""deploy/kubernetes: every manifest against the Kubernetes schemas (offline), and against the server it runs.

No cluster here: this proves the manifests are well-formed for the API server and agree with the
image, the CLI and the app. It does not prove that a cluster schedules them, pulls the image, or
that a KServe controller renders the InferenceService as intended.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import httpx
import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml
from packaging.version import Version
from _serving import running, shared_model

from conftest import REPO
from ganops.cli import build_parser
from ganops.params import ServeParams
from ganops.serving.app import create_app
from ganops.serving.inference import OnnxGenerator

K8S = REPO / "deploy" / "kubernetes"
DOCKERFILE = (REPO / "deploy" / "Dockerfile").read_text()
# Every Kubernetes release kubernetes-validate knows, from 1.27: the first where the
# PodDisruptionBudget's unhealthyPodEvictionPolicy is on by default (beta).
VERSIONS = sorted({v for v in kubernetes_validate.utils.all_versions() if Version(v) >= Version("1.27")}, key=Version)
SCHEMAS = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
# The Open Inference Protocol names the model in its URLs; KServe's convention is the service's name.
OIP_MODEL_NAME = "ganops-generator"


def load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def plain_manifests() -> dict[str, dict]:
    return {name: load(name) for name in load("kustomization.yaml")["resources"]}


DEPLOYMENT, SERVICE, HPA, PDB = (load(f) for f in ("deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"))
ISVC = load("kserve/inferenceservice.yaml")
POD = DEPLOYMENT["spec"]["template"]["spec"]
PODS = {"deployment": POD, "inferenceservice": ISVC["spec"]["predictor"]}


def only_container(pod: dict) -> dict:
    assert len(pod["containers"]) == 1, "one container: the server"
    return pod["containers"][0]


def server_args(container: dict):
    """The container's command line as the real CLI parses it (an unknown flag exits here)."""
    argv = container["command"] + container["args"]
    assert argv[0] == "ganops"
    return build_parser().parse_args(argv[1:])


def container_port(container: dict, port: int | str) -> int:
    """A probe's or Service's port (a number, or a name of the container's) as the number it means."""
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in container["ports"]], f"{port} is not a port of the container"
        return port
    by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port in by_name, f"no container port named {port!r}: {by_name}"
    return by_name[port]


# --- the Kubernetes schemas -----------------------------------------------------------------------


def test_kustomization_lists_every_manifest():
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(load("kustomization.yaml")["resources"]) == on_disk
    kinds = sorted(m["kind"] for m in plain_manifests().values())
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
    assert (HPA["apiVersion"], PDB["apiVersion"]) == ("autoscaling/v2", "policy/v1")


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version):
    for name, manifest in plain_manifests().items():
        # strict: an unknown or misspelt field is an error, as `kubectl apply` (strict field validation) makes it
        assert kubernetes_validate.validate(manifest, version, strict=True), name


def test_a_misspelt_or_mistyped_field_fails_validation():
    """The validator is not vacuous: the mistakes a hand-edited manifest makes are caught."""
    misspelt = copy.deepcopy(DEPLOYMENT)
    container = only_container(misspelt["spec"]["template"]["spec"])
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(misspelt, VERSIONS[-1], strict=True)
    mistyped = copy.deepcopy(HPA)
    mistyped["spec"]["minReplicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError, match="two"):
        kubernetes_validate.validate(mistyped, VERSIONS[-1], strict=True)


# --- KServe's InferenceService --------------------------------------------------------------------

# KServe's ComponentExtensionSpec (serving.kserve.io/v1beta1, pkg/apis/serving/v1beta1/component.go):
# the fields a predictor adds to a PodSpec, typed as there. Only those this repository may use: any
# other key (a framework spec such as `model`, a typo) fails, which is stricter than KServe.
COMPONENT_EXTENSION = {
    "minReplicas": {"type": "integer", "minimum": 0},
    "maxReplicas": {"type": "integer", "minimum": 0},
    "scaleTarget": {"type": "integer", "minimum": 1},
    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
    "containerConcurrency": {"type": "integer", "minimum": 0},
    "timeout": {"type": "integer", "minimum": 1},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    "deploymentStrategy": {"$ref": "/api/_definitions.json#/$defs/io.k8s.api.apps.v1.DeploymentStrategy"},
}


def inference_service_validator(version: str) -> jsonschema.Draft202012Validator:
    """The InferenceService checked with Kubernetes' own PodSpec and ObjectMeta schemas (strict) plus
    KServe's extension fields above.

    No PyPI package ships KServe's CRD schema without pinning versions this environment cannot take
    (the `kserve` SDK downgrades pandas, protobuf and psutil), so this proves: the top level is an
    InferenceService with a predictor only; the predictor is a valid strict PodSpec (containers,
    probes, security context, volumes, as for the Deployment) plus correctly typed KServe fields. It
    does not prove that the CRD installed in a cluster has every field, nor what its webhook adds
    (test_inference_service_follows_kserve_rules checks the rules of it that KServe documents).
    """
    directory = SCHEMAS / f"v{kubernetes_validate.utils.major_minor(version)}.0-local-strict"
    podspec = json.loads((directory / "podspec-v1.json").read_text())
    predictor = {**podspec, "properties": {**podspec["properties"], **COMPONENT_EXTENSION}}
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://kubernetes.io/api/inferenceservice-serving-v1beta1",  # so "/api/..." refs resolve
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "serving.kserve.io/v1beta1"},
            "kind": {"const": "InferenceService"},
            "metadata": {"$ref": "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
            "spec": {"type": "object", "additionalProperties": False, "required": ["predictor"],
                     "properties": {"predictor": predictor}},
        },
    }
    definitions = referencing.Resource.from_contents(json.loads((directory / "_definitions.json").read_text()))
    return jsonschema.Draft202012Validator(schema, registry=definitions @ referencing.Registry())


@pytest.mark.parametrize("version", VERSIONS)
def test_inference_service_matches_the_podspec_and_kserve_schemas(version):
    validator = inference_service_validator(version)
    validator.validate(ISVC)
    broken = copy.deepcopy(ISVC)
    only_container(broken["spec"]["predictor"])["securityContext"]["readOnlyRootFileSystem"] = True
    broken["spec"]["predictor"]["scaleMetric"] = "gpu"
    errors = {e.message for e in validator.iter_errors(broken)}
    assert any("readOnlyRootFileSystem" in m for m in errors) and any("'gpu'" in m for m in errors), errors


def test_inference_service_follows_kserve_rules():
    """What KServe's webhook checks of a custom predictor, and what this recipe relies on."""
    name, annotations = ISVC["metadata"]["name"], ISVC["metadata"]["annotations"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63  # KServe's name rule
    assert name == OIP_MODEL_NAME
    predictor = ISVC["spec"]["predictor"]
    container = only_container(predictor)
    assert container["name"] == "kserve-container"
    assert {e["name"]: e.get("value") for e in container["env"]}["PROTOCOL"] == "v2"  # KServe accepts v1 | v2
    # RawDeployment (Standard in KServe >= 0.15) with the HPA autoscaler: cpu or memory only.
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert annotations["serving.kserve.io/autoscalerClass"] == "hpa" and predictor["scaleMetric"] in ("cpu", "memory")
    assert 0 < predictor["minReplicas"] <= predictor["maxReplicas"]
    # The same scaling as the plain recipe.
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (HPA["spec"]["minReplicas"], HPA["spec"]["maxReplicas"])
    assert predictor["scaleTarget"] == HPA["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"]


# --- agreement with the image, the CLI and each other ---------------------------------------------


def dockerfile_user() -> tuple[int, int]:
    match = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE, re.M)
    assert match, "deploy/Dockerfile's USER must be numeric uid:gid (runAsNonRoot cannot check a name)"
    return int(match[1]), int(match[2])


def dockerfile_cmd() -> list[str]:
    return json.loads(re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M)[1])


@pytest.mark.parametrize("kind", PODS)
def test_container_runs_the_images_server_on_its_declared_port(kind):
    container = only_container(PODS[kind])
    assert container["command"] + container["args"] == dockerfile_cmd(), "the manifest's command is not the image's CMD"
    args = server_args(container)
    assert args.command == "serve" and args.host == "0.0.0.0"
    assert [p["containerPort"] for p in container["ports"]] == [args.port]
    model_dir = re.search(r"^COPY models/generator\.onnx models/generator\.onnx\.sha256 (\S+)$", DOCKERFILE, re.M)[1]
    assert args.model == model_dir.rstrip("/") + "/generator.onnx"
    assert container["image"] == only_container(POD)["image"], "Deployment and InferenceService run different images"


def test_service_autoscaler_and_budget_select_the_deployment():
    labels = DEPLOYMENT["spec"]["selector"]["matchLabels"]
    assert labels.items() <= DEPLOYMENT["spec"]["template"]["metadata"]["labels"].items()
    assert SERVICE["spec"]["selector"] == labels and PDB["spec"]["selector"]["matchLabels"] == labels
    container = only_container(POD)
    (port,) = SERVICE["spec"]["ports"]
    assert container_port(container, port["targetPort"]) == server_args(container).port
    annotations = DEPLOYMENT["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == container_port(container, "http")
    target = HPA["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", DEPLOYMENT["metadata"]["name"])
    assert "replicas" not in DEPLOYMENT["spec"], "the autoscaler owns the replica count"
    # A drain may take maxUnavailable pods; at least one must be left serving.
    assert HPA["spec"]["minReplicas"] > PDB["spec"]["maxUnavailable"]
    # The kustomization's image override, as shipped, names the image the InferenceService runs too.
    (image,) = load("kustomization.yaml")["images"]
    assert f"{image['newName']}:{image['newTag']}" == container["image"] and image["name"] == container["image"].split(":")[0]


@pytest.mark.parametrize("kind", PODS)
def test_pod_runs_as_the_images_user_read_only_without_privileges(kind):
    pod = PODS[kind]
    container = only_container(pod)
    uid, gid = dockerfile_user()
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": gid,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert pod["automountServiceAccountToken"] is False
    # The only writable path: /tmp, from an emptyDir.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert list(mounts) == ["/tmp"] and "emptyDir" in volumes[mounts["/tmp"]]
    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


# --- the probes against the real app --------------------------------------------------------------


@pytest.fixture(scope="module")
def generator() -> OnnxGenerator:
    return OnnxGenerator.from_onnx(shared_model(conditional=False), providers="cpu")


def probes(kind: str) -> dict[str, tuple[str, int]]:
    container = only_container(PODS[kind])
    return {name: (container[name]["httpGet"]["path"], container_port(container, container[name]["httpGet"]["port"]))
            for name in ("startupProbe", "livenessProbe", "readinessProbe")}


@pytest.mark.parametrize("kind", PODS)
def test_probes_are_routes_of_the_app(kind, generator):
    app = create_app(generator=generator, config=ServeParams(providers="cpu"), api_key=None)
    routes = {getattr(r, "path", None) for r in app.routes}
    for name, (path, port) in probes(kind).items():
        assert path in routes, f"{kind} {name} probes {path}, which the server does not serve"
        assert port == server_args(only_container(PODS[kind])).port


@pytest.mark.parametrize("kind", PODS)
def test_probes_answer_as_kubernetes_needs(kind, generator):
    """Liveness and start-up pass as soon as the server answers; readiness only once warmed up, and
    with an API key set (the manifests pass GANOPS_API_KEY from a Secret) no probe needs the key."""
    paths = {name: path for name, (path, _) in probes(kind).items()}
    config = ServeParams(providers="cpu")
    with running(create_app(generator=generator, config=config, api_key=None), lifespan="off") as url:
        # lifespan off: the warm-up never runs, as in the first moments of a pod
        assert httpx.get(url + paths["startupProbe"]).status_code == 200
        assert httpx.get(url + paths["livenessProbe"]).status_code == 200
        assert httpx.get(url + paths["readinessProbe"]).status_code == 503
    with running(create_app(generator=generator, config=config, api_key="secret")) as url:
        assert all(httpx.get(url + path).status_code == 200 for path in paths.values())
        assert httpx.get(url + "/v1/model").status_code == 401  # the key is in force
