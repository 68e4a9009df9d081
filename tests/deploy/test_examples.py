"""The manifests in deploy/examples/: valid objects, and wired to each other correctly.

The checks follow the path a module takes: CSI volume (in the pod, or in Istio's
userVolume annotation) -> mount path -> the WasmPlugin url or Envoy filename that reads
``<mountPath>/plugin.wasm``.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helm import (
    DRIVER,
    EXAMPLES,
    KUBERNETES_VERSIONS,
    VOLUME_ATTRIBUTES,
    Manifest,
    PodView,
    container,
    docker_config,
    find,
    kubernetes_validate,
    load_file,
    only,
    pods,
    selected_pods,
    wasmplugin_errors,
)

# Manifests; *-values.yaml files are Helm values (checked below, with what uses them).
EXAMPLE_FILES = sorted(p for p in EXAMPLES.glob("*.yaml") if not p.name.endswith("-values.yaml"))
ISTIO_EXAMPLES = ["sidecar-wasmplugin.yaml", "gateway-wasmplugin.yaml", "private-registry.yaml"]
CATALOG_EXAMPLE = "istio-catalog.yaml"
ISTIOD_VALUES = "istio-catalog-istiod-values.yaml"
USER_VOLUME = "sidecar.istio.io/userVolume"
USER_VOLUME_MOUNT = "sidecar.istio.io/userVolumeMount"


def example(name: str) -> list[Manifest]:
    return load_file(EXAMPLES / name)


def test_the_examples_are_there() -> None:
    assert sorted(p.name for p in EXAMPLE_FILES) == sorted(
        [*ISTIO_EXAMPLES, CATALOG_EXAMPLE, "envoy-standalone.yaml"]
    )
    assert (EXAMPLES / ISTIOD_VALUES).is_file()


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_kubernetes_objects_are_valid(path: Path) -> None:
    kubernetes_validate(load_file(path), KUBERNETES_VERSIONS)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_csi_volumes_follow_the_contract(path: Path) -> None:
    objs = load_file(path)
    volumes = [(p, name, csi) for p in pods(objs) for name, csi in p.csi_volumes().items()]
    assert volumes, f"{path.name} has no {DRIVER} volume"
    for pod, name, csi in volumes:
        where = f"{path.name}: {pod.owner} volume {name}"
        assert csi["readOnly"] is True, where
        attributes = csi["volumeAttributes"]
        assert set(attributes) <= VOLUME_ATTRIBUTES, where
        if "catalog" in attributes:
            assert attributes == {"catalog": "node"}, where
            continue
        assert attributes["url"].startswith(("oci://", "https://")), where
        assert "<" not in json.dumps(attributes), f"{where}: placeholder in {attributes}"
        assert pod.mount_paths(name), f"{where} is never mounted"


@pytest.mark.parametrize("name", ISTIO_EXAMPLES)
def test_wasmplugins_match_the_crd(name: str) -> None:
    plugins = find(example(name), "WasmPlugin")
    assert plugins
    for plugin in plugins:
        assert plugin["apiVersion"] == "extensions.istio.io/v1alpha1"
        assert wasmplugin_errors(plugin) == [], plugin["metadata"]["name"]


def test_wasmplugin_checker_rejects_mistakes() -> None:
    """The CRD check must catch typos and the CEL rules, or the test above is void."""
    good = only(example("sidecar-wasmplugin.yaml"), "WasmPlugin")
    assert wasmplugin_errors(good) == []
    mistakes: list[tuple[str, Any]] = [
        ("pluginconfig", {"x": 1}),  # wrong case: the API server would drop it
        ("url", "ftp://host/plugin.wasm"),
        ("sha256", "not-a-digest"),
        ("phase", "BEFORE_AUTHN"),
        ("targetRefs", [{"kind": "Gateway", "name": "gw"}]),  # with selector
    ]
    for key, value in mistakes:
        bad = copy.deepcopy(good)
        bad["spec"][key] = value
        assert wasmplugin_errors(bad), f"spec.{key}={value!r} was accepted"
    bad = copy.deepcopy(good)
    del bad["spec"]["url"]
    assert wasmplugin_errors(bad)


@pytest.mark.parametrize("name", ISTIO_EXAMPLES)
def test_wasmplugin_url_is_the_mounted_module(name: str) -> None:
    objs = example(name)
    for plugin in find(objs, "WasmPlugin"):
        targets = selected_pods(plugin, pods(objs))
        assert targets, f"WasmPlugin {plugin['metadata']['name']} selects no pod in {name}"
        for pod in targets:
            urls = {
                f"file://{path}/plugin.wasm"
                for volume_name in pod.csi_volumes()
                for path in pod.mount_paths(volume_name)
            }
            assert plugin["spec"]["url"] in urls, (pod.owner, urls)


@pytest.mark.parametrize("name", ["sidecar-wasmplugin.yaml", "private-registry.yaml"])
def test_sidecar_user_volume_annotations(name: str) -> None:
    objs = example(name)
    annotated = [p for p in pods(objs) if USER_VOLUME in p.annotations]
    assert annotated
    for pod in annotated:
        volumes = json.loads(pod.annotations[USER_VOLUME])
        volume_mounts = json.loads(pod.annotations[USER_VOLUME_MOUNT])
        assert isinstance(volumes, dict) and isinstance(volume_mounts, dict)
        assert set(volumes) == set(volume_mounts), "annotations name different volumes"
        for volume_name, source in volumes.items():
            assert source["csi"]["driver"] == DRIVER
            assert volume_mounts[volume_name]["readOnly"] is True
            # The volume is not in the pod spec as well: the injector adds it.
            assert volume_name not in {v["name"] for v in pod.spec.get("volumes", [])}


@pytest.mark.parametrize("name", ["sidecar-wasmplugin.yaml", "private-registry.yaml"])
def test_annotation_volumes_are_valid_kubernetes(name: str) -> None:
    """What the sidecar injector will add, checked as a real pod would be."""
    objs = example(name)
    for pod in pods(objs):
        if USER_VOLUME not in pod.annotations:
            continue
        volumes = json.loads(pod.annotations[USER_VOLUME])
        volume_mounts = json.loads(pod.annotations[USER_VOLUME_MOUNT])
        injected: Manifest = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "injected"},
            "spec": {
                "containers": [
                    {
                        "name": "istio-proxy",
                        "image": "docker.io/istio/proxyv2:1.26.0",
                        "volumeMounts": [{"name": n, **m} for n, m in volume_mounts.items()],
                    }
                ],
                "volumes": [{"name": n, **v} for n, v in volumes.items()],
            },
        }
        kubernetes_validate([injected], KUBERNETES_VERSIONS)


def test_gateway_declares_the_volume_on_istio_proxy() -> None:
    objs = example("gateway-wasmplugin.yaml")
    (pod,) = list(pods(objs))
    assert pod.annotations.get("inject.istio.io/templates") == "gateway"
    assert USER_VOLUME not in pod.annotations and USER_VOLUME_MOUNT not in pod.annotations
    proxy = container(pod.spec, "istio-proxy")
    (volume_name,) = pod.csi_volumes()
    mounts = [m for m in proxy["volumeMounts"] if m["name"] == volume_name]
    assert len(mounts) == 1 and mounts[0]["readOnly"] is True
    plugin = only(objs, "WasmPlugin")
    assert plugin["spec"]["url"] == f"file://{mounts[0]['mountPath']}/plugin.wasm"
    assert plugin["spec"]["selector"]["matchLabels"] == {"istio": "ingressgateway"}
    text = (EXAMPLES / "gateway-wasmplugin.yaml").read_text(encoding="utf-8")
    assert "ignores the sidecar.istio.io/userVolume" in text


def wasm_filters(node: Any) -> list[dict[str, Any]]:
    """Every envoy.filters.http.wasm filter in an Envoy config."""
    found = []
    if isinstance(node, dict):
        if node.get("name") == "envoy.filters.http.wasm":
            found.append(node)
        for value in node.values():
            found += wasm_filters(value)
    elif isinstance(node, list):
        for value in node:
            found += wasm_filters(value)
    return found


def test_envoy_loads_the_module_from_the_csi_volume() -> None:
    objs = example("envoy-standalone.yaml")
    (pod,) = list(pods(objs))
    envoy = container(pod.spec, "envoy")
    assert envoy["image"].startswith("envoyproxy/envoy:v")
    (volume_name,) = pod.csi_volumes()
    (mount_path,) = pod.mount_paths(volume_name)

    config_map = only(objs, "ConfigMap")
    bootstrap = yaml.safe_load(config_map["data"]["envoy.yaml"])
    (wasm,) = wasm_filters(bootstrap)
    config = wasm["typed_config"]
    assert config["@type"] == "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
    code = config["config"]["vm_config"]["code"]
    assert code == {"local": {"filename": f"{mount_path}/plugin.wasm"}}

    # The bootstrap Envoy is told to read is the one in the ConfigMap.
    config_path = envoy["args"][envoy["args"].index("--config-path") + 1]
    config_mount = next(m for m in envoy["volumeMounts"] if m["mountPath"] == config_path)
    config_volume = next(v for v in pod.spec["volumes"] if v["name"] == config_mount["name"])
    assert config_volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert config_mount["subPath"] == "envoy.yaml"


def test_private_registry_credentials() -> None:
    objs = example("private-registry.yaml")
    secret = only(objs, "Secret")
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    auths = docker_config(secret)["auths"]
    (pod,) = list(pods(objs))
    ((volume_name, csi),) = pod.csi_volumes().items()
    assert csi["nodePublishSecretRef"] == {"name": secret["metadata"]["name"]}
    host = csi["volumeAttributes"]["url"].removeprefix("oci://").split("/", 1)[0]
    assert set(auths) == {host}, "the Secret must hold credentials for the module's registry"
    # An obvious placeholder, never something that looks like a real credential.
    user_token = base64.b64decode(auths[host]["auth"]).decode()
    assert user_token == "REPLACE-WITH-USER:REPLACE-WITH-TOKEN"
    assert pod.mount_paths(volume_name)


def test_pod_view_reads_both_volume_sources() -> None:
    """PodView merges spec volumes and annotation volumes (used by the tests above)."""
    view = PodView(
        owner="Pod/x",
        labels={},
        annotations={
            USER_VOLUME: json.dumps({"a": {"csi": {"driver": DRIVER}}}),
            USER_VOLUME_MOUNT: json.dumps({"a": {"mountPath": "/m/a"}}),
        },
        spec={
            "containers": [{"name": "c", "volumeMounts": [{"name": "b", "mountPath": "/m/b"}]}],
            "volumes": [{"name": "b", "csi": {"driver": DRIVER}}, {"name": "c", "emptyDir": {}}],
        },
    )
    assert set(view.csi_volumes()) == {"a", "b"}
    assert view.mount_paths("a") == {"/m/a"}
    assert view.mount_paths("b") == {"/m/b"}


# --- the node catalog with Istio --------------------------------------------------------

CATALOG_URL = re.compile(r"file://(?P<mount>/.+)/sha256/[0-9a-f]{64}\.wasm")


def injection_template() -> Manifest:
    """The ``csi-wasm`` injection template of the istiod values, as the patch it is."""
    values = yaml.safe_load((EXAMPLES / ISTIOD_VALUES).read_text(encoding="utf-8"))
    webhook = values["sidecarInjectorWebhook"]
    assert set(values) == {"sidecarInjectorWebhook"}
    assert webhook["defaultTemplates"] == ["sidecar", "csi-wasm"]
    template: Manifest = yaml.safe_load(webhook["templates"]["csi-wasm"])
    return template


def injected(pod: PodView) -> PodView:
    """``pod`` after istiod applied the csi-wasm template (volume + istio-proxy mount)."""
    patch = injection_template()["spec"]
    spec = copy.deepcopy(dict(pod.spec))
    spec["volumes"] = [*spec.get("volumes", []), *patch["volumes"]]
    spec["containers"] = [*spec["containers"], *patch["containers"]]
    return PodView(pod.owner, pod.labels, pod.annotations, spec)


def test_the_injection_template_is_a_valid_catalog_volume_on_istio_proxy() -> None:
    patch = injection_template()
    assert set(patch) == {"spec"} and set(patch["spec"]) == {"containers", "volumes"}
    ((volume),) = patch["spec"]["volumes"]
    assert volume["csi"] == {
        "driver": DRIVER,
        "readOnly": True,
        "volumeAttributes": {"catalog": "node"},
    }
    ((proxy),) = patch["spec"]["containers"]
    assert proxy["name"] == "istio-proxy"
    ((mount),) = proxy["volumeMounts"]
    assert (mount["name"], mount["readOnly"]) == (volume["name"], True)
    # What the injector produces, checked as a real pod would be.
    pod: Manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "injected"},
        "spec": {
            "containers": [{**proxy, "image": "docker.io/istio/proxyv2:1.26.0"}],
            "volumes": patch["spec"]["volumes"],
        },
    }
    kubernetes_validate([pod], KUBERNETES_VERSIONS)


def test_catalog_wasmplugins_are_pinned_by_digest_under_the_catalog_mount() -> None:
    objs = example(CATALOG_EXAMPLE)
    plugins = find(objs, "WasmPlugin")
    assert len(plugins) == 2
    for plugin in plugins:
        name = plugin["metadata"]["name"]
        assert wasmplugin_errors(plugin) == [], name
        match = CATALOG_URL.fullmatch(plugin["spec"]["url"])
        assert match, f"{name}: {plugin['spec']['url']} is not a catalog file by digest"
        targets = selected_pods(plugin, pods(objs))
        assert targets, f"WasmPlugin {name} selects no pod"
        for target in targets:
            templates = target.annotations.get("inject.istio.io/templates", "")
            pod = target
            if "csi-wasm" in templates.split(","):
                assert templates == "sidecar,csi-wasm"
                pod = injected(target)
            catalogs = [
                volume_name
                for volume_name, csi in pod.csi_volumes().items()
                if csi.get("volumeAttributes") == {"catalog": "node"}
            ]
            assert catalogs, f"{pod.owner} has no catalog volume"
            proxy = container(pod.spec, "istio-proxy")
            mounted = {m["mountPath"] for m in proxy["volumeMounts"] if m["name"] in catalogs}
            assert match["mount"] in mounted, (pod.owner, mounted)


def test_the_gateway_declares_the_catalog_itself() -> None:
    objs = example(CATALOG_EXAMPLE)
    gateway = next(p for p in pods(objs) if p.labels.get("istio") == "ingressgateway")
    assert gateway.annotations["inject.istio.io/templates"] == "gateway"
    ((csi),) = gateway.csi_volumes().values()
    assert csi["volumeAttributes"] == {"catalog": "node"}
