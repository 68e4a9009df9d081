"""The Helm chart deploy/charts/csi-wasm: lint, Kubernetes validity, and what it renders."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helm import (
    CHART,
    DRIVER,
    KUBERNETES_VERSIONS,
    REPO,
    HelmError,
    Manifest,
    container,
    daemonset_pod,
    find,
    flags,
    helm_binary,
    helm_notes,
    helm_template,
    host_paths,
    kubernetes_validate,
    mount,
    only,
    run,
    volume,
)

CHART_META: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
VALUES: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))

DIGEST = "sha256:" + "ab" * 32
# Every optional feature switched on, to render and validate every template branch.
FULL: dict[str, Any] = {
    "image": {"digest": DIGEST},
    "imagePullSecrets": [{"name": "ghcr-pull"}],
    "insecureRegistries": ["registry.test:5000", "localhost:5001"],
    "registryCA": {"configMap": "corp-ca", "key": "bundle.pem"},
    "registryMirrors": [
        {"source": "docker.io", "mirror": "mirror.corp.test"},
        {"source": "ghcr.io", "mirror": "ghcr-mirror.corp.test:8443"},
    ],
    "nodeDockerConfig": "node-pull-secret",
    "logLevel": "debug",
    "defaultAbi": "any",
    "extraArgs": ["--pull-timeout=5m", "--max-module-bytes=1048576"],
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "prefetch": [
        {"url": "oci://ghcr.io/acme/filters/add-header:v1.2.0"},
        {"name": "rate-limit", "url": "oci://ghcr.io/acme/filters/local-rate-limit:stable"},
        {"url": "https://wasm.example.com/authz.wasm", "sha256": "cd" * 32},
    ],
    "verify": {
        "keys": {"release": (REPO / "tests/data/cosign/cosign.pub").read_text()},
        "rules": [{"match": "ghcr.io/acme/**", "keys": ["release"], "mode": "warn"}],
        "unmatched": "deny",
    },
    "catalog": {"refresh": "15m", "grace": "48h"},
    "serviceAccount": {"annotations": {"example.com/owner": "platform"}},
    "updateStrategy": {"maxUnavailable": "10%"},
    "podAnnotations": {"example.com/team": "platform"},
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "mesh", "operator": "In", "values": ["yes"]}]}
                ]
            }
        }
    },
}


@pytest.fixture(params=[3, 4], ids=["helm3", "helm4"])
def helm(request: pytest.FixtureRequest) -> Path:
    return helm_binary(int(request.param))


# --------------------------------------------------------------------------- lint & validity


def test_chart_metadata() -> None:
    assert CHART_META["apiVersion"] == "v2"
    assert CHART_META["name"] == "csi-wasm"
    assert CHART_META["version"] == "0.1.0"
    assert str(CHART_META["appVersion"]) == "0.1.0"


@pytest.mark.parametrize("values", [None, FULL], ids=["defaults", "full"])
def test_helm_lint(helm: Path, values: dict[str, Any] | None, tmp_path: Path) -> None:
    cmd: list[str | Path] = [helm, "lint", "--strict", CHART]
    if values is not None:
        values_file = tmp_path / "values.yaml"
        values_file.write_text(yaml.safe_dump(values), encoding="utf-8")
        cmd += ["--values", values_file]
    result = run(cmd)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values", [None, FULL], ids=["defaults", "full"])
def test_render_is_valid_kubernetes(
    helm: Path, values: dict[str, Any] | None, kube_version: str
) -> None:
    objs = helm_template(helm, values, kube_version=kube_version)
    kubernetes_validate(objs, [kube_version])


def test_validator_rejects_unknown_fields(helm: Path) -> None:
    """kubernetes-validate --strict must catch a misplaced field, or the test above is void."""
    objs = helm_template(helm)
    daemonset_pod(objs)["containers"][0]["mountPropagation"] = "Bidirectional"
    with pytest.raises(AssertionError, match="did not validate"):
        kubernetes_validate(objs, KUBERNETES_VERSIONS[:1])


def test_default_objects(helm: Path) -> None:
    objs = helm_template(helm)
    assert sorted(o["kind"] for o in objs) == sorted(
        [
            "CSIDriver",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ]
    )
    for obj in objs:
        if obj["kind"] not in ("CSIDriver", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "csi-wasm", obj["kind"]


# --------------------------------------------------------------------------- CSIDriver


def test_csidriver(helm: Path) -> None:
    driver = only(helm_template(helm), "CSIDriver")
    assert driver["apiVersion"] == "storage.k8s.io/v1"
    assert driver["metadata"]["name"] == DRIVER
    assert driver["spec"] == {
        "attachRequired": False,
        "podInfoOnMount": True,
        "fsGroupPolicy": "None",
        "volumeLifecycleModes": ["Ephemeral"],
    }


def test_driver_name_value(helm: Path) -> None:
    objs = helm_template(helm, {"driverName": "wasm.example.org"})
    assert only(objs, "CSIDriver")["metadata"]["name"] == "wasm.example.org"
    pod = daemonset_pod(objs)
    assert flags(container(pod, "csi-wasm")["args"])["--driver-name"] == ["wasm.example.org"]
    assert host_paths(pod)["plugin-dir"] == "/var/lib/kubelet/plugins/wasm.example.org"
    registrar = flags(container(pod, "csi-node-driver-registrar")["args"])
    assert registrar["--kubelet-registration-path"] == [
        "/var/lib/kubelet/plugins/wasm.example.org/csi.sock"
    ]


# --------------------------------------------------------------------------- DaemonSet


def test_three_containers(helm: Path) -> None:
    pod = daemonset_pod(helm_template(helm))
    assert [c["name"] for c in pod["containers"]] == [
        "csi-wasm",
        "csi-node-driver-registrar",
        "livenessprobe",
    ]
    assert all("resources" in c for c in pod["containers"])


def test_driver_container(helm: Path) -> None:
    pod = daemonset_pod(helm_template(helm))
    driver = container(pod, "csi-wasm")
    assert driver["image"] == f"ghcr.io/csi-wasm/csi-wasm:{CHART_META['appVersion']}"
    assert driver["securityContext"]["privileged"] is True
    assert driver["args"][0] == "serve"
    assert flags(driver["args"]) == {
        "--endpoint": ["unix:///csi/csi.sock"],
        "--node-id": ["$(NODE_NAME)"],
        "--root": ["/var/lib/csi-wasm"],
        "--kubelet-dir": ["/var/lib/kubelet"],
        "--driver-name": [DRIVER],
        "--metrics-address": [":9090"],
        "--prefetch-configmap": ["csi-wasm/csi-wasm-prefetch"],
        "--prefetch-refresh": ["1h"],
        "--catalog-grace": ["24h"],
        "--log-level": ["info"],
    }
    assert driver["env"] == [
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    ]
    ports = {p["name"]: p["containerPort"] for p in driver["ports"]}
    assert ports == {"healthz": 9808, "metrics": 9090}


def test_pods_dir_is_bidirectional_at_the_same_path(helm: Path) -> None:
    pod = daemonset_pod(helm_template(helm))
    driver = container(pod, "csi-wasm")
    pods_mount = mount(driver, "pods-dir")
    assert pods_mount["mountPath"] == "/var/lib/kubelet/pods"
    assert pods_mount["mountPropagation"] == "Bidirectional"
    assert volume(pod, "pods-dir")["hostPath"] == {
        "path": "/var/lib/kubelet/pods",
        "type": "Directory",
    }
    bidirectional = [
        (c["name"], m["name"])
        for c in pod["containers"]
        for m in c.get("volumeMounts", [])
        if m.get("mountPropagation") == "Bidirectional"
    ]
    assert bidirectional == [("csi-wasm", "pods-dir")]


def test_cache_dir(helm: Path) -> None:
    pod = daemonset_pod(helm_template(helm, {"cacheDir": "/data/csi-wasm/"}))
    driver = container(pod, "csi-wasm")
    assert volume(pod, "cache-dir")["hostPath"] == {
        "path": "/data/csi-wasm",
        "type": "DirectoryOrCreate",
    }
    assert mount(driver, "cache-dir")["mountPath"] == "/data/csi-wasm"
    assert flags(driver["args"])["--root"] == ["/data/csi-wasm"]


@pytest.mark.parametrize("cache_dir", ["/var/lib/kubelet", "/var/lib/kubelet/pods/cache"])
def test_cache_dir_outside_kubelet_pods(helm: Path, cache_dir: str) -> None:
    with pytest.raises(HelmError, match="cacheDir"):
        helm_template(helm, {"cacheDir": cache_dir})


def test_socket_and_registration(helm: Path) -> None:
    pod = daemonset_pod(helm_template(helm))
    paths = host_paths(pod)
    assert paths["plugin-dir"] == f"/var/lib/kubelet/plugins/{DRIVER}"
    assert paths["registration-dir"] == "/var/lib/kubelet/plugins_registry"
    registrar = container(pod, "csi-node-driver-registrar")
    assert registrar["image"].startswith(
        "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2."
    )
    assert flags(registrar["args"]) == {
        "--csi-address": ["/csi/csi.sock"],
        "--kubelet-registration-path": [f"/var/lib/kubelet/plugins/{DRIVER}/csi.sock"],
    }
    assert mount(registrar, "plugin-dir")["mountPath"] == "/csi"
    assert mount(registrar, "registration-dir")["mountPath"] == "/registration"
    for name in ("csi-wasm", "livenessprobe"):
        assert mount(container(pod, name), "plugin-dir")["mountPath"] == "/csi"


@pytest.mark.parametrize("port", [None, 9811])
def test_liveness_through_the_livenessprobe_sidecar(helm: Path, port: int | None) -> None:
    values = None if port is None else {"livenessProbe": {"port": port}}
    pod = daemonset_pod(helm_template(helm, values))
    expected = port or 9808
    driver = container(pod, "csi-wasm")
    assert {"name": "healthz", "containerPort": expected, "protocol": "TCP"} in driver["ports"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert driver[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    sidecar = container(pod, "livenessprobe")
    assert sidecar["image"].startswith("registry.k8s.io/sig-storage/livenessprobe:v2.")
    assert flags(sidecar["args"])["--csi-address"] == ["/csi/csi.sock"]
    assert flags(sidecar["args"])["--health-port"] == [str(expected)]


def test_kubelet_root_dir_moves_every_host_path_and_arg(helm: Path) -> None:
    root = "/var/lib/k0s/kubelet"
    objs = helm_template(helm, {"kubeletRootDir": root + "/"})
    pod = daemonset_pod(objs)
    paths = host_paths(pod)
    assert paths == {
        "plugin-dir": f"{root}/plugins/{DRIVER}",
        "registration-dir": f"{root}/plugins_registry",
        "pods-dir": f"{root}/pods",
        "cache-dir": "/var/lib/csi-wasm",
    }
    driver = container(pod, "csi-wasm")
    assert flags(driver["args"])["--kubelet-dir"] == [root]
    assert mount(driver, "pods-dir")["mountPath"] == f"{root}/pods"
    registrar = container(pod, "csi-node-driver-registrar")
    assert flags(registrar["args"])["--kubelet-registration-path"] == [
        f"{root}/plugins/{DRIVER}/csi.sock"
    ]
    rendered = json.dumps(objs)
    assert "/var/lib/kubelet" not in rendered
    assert "//" not in rendered.replace("unix:///", "").replace("://", "")


# --------------------------------------------------------------------------- images


def test_image_digest_overrides_tag(helm: Path) -> None:
    values = {
        "image": {"tag": "9.9.9", "digest": DIGEST},
        "registrar": {"image": {"digest": DIGEST}},
        "livenessProbe": {"image": {"digest": DIGEST}},
    }
    pod = daemonset_pod(helm_template(helm, values))
    assert container(pod, "csi-wasm")["image"] == f"ghcr.io/csi-wasm/csi-wasm@{DIGEST}"
    assert container(pod, "csi-node-driver-registrar")["image"] == (
        f"registry.k8s.io/sig-storage/csi-node-driver-registrar@{DIGEST}"
    )
    assert container(pod, "livenessprobe")["image"] == (
        f"registry.k8s.io/sig-storage/livenessprobe@{DIGEST}"
    )


def test_image_tag_and_pull_policy(helm: Path) -> None:
    values = {
        "image": {
            "repository": "registry.corp.test/csi-wasm",
            "tag": "0.2.0-rc.1",
            "pullPolicy": "Always",
        }
    }
    driver = container(daemonset_pod(helm_template(helm, values)), "csi-wasm")
    assert driver["image"] == "registry.corp.test/csi-wasm:0.2.0-rc.1"
    assert driver["imagePullPolicy"] == "Always"


# --------------------------------------------------------------------------- registries


def test_registry_options_become_args_and_mounts(helm: Path) -> None:
    objs = helm_template(helm, FULL)
    pod = daemonset_pod(objs)
    driver = container(pod, "csi-wasm")
    args = flags(driver["args"])
    assert args["--insecure-registry"] == ["registry.test:5000", "localhost:5001"]
    assert args["--registry-mirror"] == [
        "docker.io=mirror.corp.test",
        "ghcr.io=ghcr-mirror.corp.test:8443",
    ]
    assert args["--log-level"] == ["debug"]
    assert args["--default-abi"] == ["any"]
    assert (args["--prefetch-refresh"], args["--catalog-grace"]) == (["15m"], ["48h"])
    assert driver["args"][-2:] == ["--pull-timeout=5m", "--max-module-bytes=1048576"]

    # CA bundle: ConfigMap key -> file in a read-only mount -> --registry-ca.
    (ca_file,) = args["--registry-ca"]
    ca_mount = mount(driver, "registry-ca")
    assert ca_mount["readOnly"] is True
    ca_volume = volume(pod, "registry-ca")
    assert ca_volume["configMap"]["name"] == "corp-ca"
    (item,) = ca_volume["configMap"]["items"]
    assert item["key"] == "bundle.pem"
    assert ca_file == f"{ca_mount['mountPath']}/{item['path']}"
    assert ca_file == "/etc/csi-wasm/ca/bundle.pem"

    # Node-wide credentials: Secret's .dockerconfigjson -> config.json -> --docker-config.
    (docker_file,) = args["--docker-config"]
    docker_mount = mount(driver, "docker-config")
    assert docker_mount["readOnly"] is True
    secret = volume(pod, "docker-config")["secret"]
    assert secret["secretName"] == "node-pull-secret"
    assert secret["items"] == [{"key": ".dockerconfigjson", "path": "config.json"}]
    assert docker_file == f"{docker_mount['mountPath']}/config.json"

    assert pod["imagePullSecrets"] == [{"name": "ghcr-pull"}]


def test_registry_ca_from_a_secret(helm: Path) -> None:
    pod = daemonset_pod(helm_template(helm, {"registryCA": {"secret": "corp-ca"}}))
    ca_volume = volume(pod, "registry-ca")
    assert ca_volume["secret"] == {
        "secretName": "corp-ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    driver = container(pod, "csi-wasm")
    assert flags(driver["args"])["--registry-ca"] == ["/etc/csi-wasm/ca/ca.crt"]


def test_no_registry_options_by_default(helm: Path) -> None:
    pod = daemonset_pod(helm_template(helm))
    args = flags(container(pod, "csi-wasm")["args"])
    for flag in ("--insecure-registry", "--registry-ca", "--registry-mirror", "--docker-config"):
        assert flag not in args
    assert set(host_paths(pod)) == {v["name"] for v in pod["volumes"]}


def test_registry_ca_needs_one_source(helm: Path) -> None:
    with pytest.raises(HelmError, match="either configMap or secret"):
        helm_template(helm, {"registryCA": {"configMap": "a", "secret": "b"}})


# --------------------------------------------------------------------------- metrics


def test_metrics_service(helm: Path) -> None:
    objs = helm_template(helm)
    service = only(objs, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = only(objs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert not find(objs, "ServiceMonitor")


def test_metrics_disabled(helm: Path) -> None:
    objs = helm_template(helm, {"metrics": {"enabled": False}})
    assert not find(objs, "Service")
    driver = container(daemonset_pod(objs), "csi-wasm")
    assert flags(driver["args"])["--metrics-address"] == [""]
    assert [p["name"] for p in driver["ports"]] == ["healthz"]


def test_service_monitor(helm: Path) -> None:
    objs = helm_template(helm, FULL)
    monitor = only(objs, "ServiceMonitor")
    service = only(objs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["csi-wasm"]}
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s"}
    ]


def test_service_monitor_needs_metrics(helm: Path) -> None:
    values = {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}}
    with pytest.raises(HelmError, match=r"metrics\.enabled"):
        helm_template(helm, values)


# --------------------------------------------------------------------------- RBAC


def rules(obj: Manifest) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    return sorted(
        (group, resource, tuple(r.get("resourceNames", ())), tuple(sorted(r["verbs"])))
        for r in obj["rules"]
        for group in r["apiGroups"]
        for resource in r["resources"]
    )


def test_rbac_is_minimal(helm: Path) -> None:
    objs = helm_template(helm)
    assert rules(only(objs, "ClusterRole")) == [
        ("", "events", (), ("create", "patch")),
        ("", "pods", (), ("get",)),
        ("events.k8s.io", "events", (), ("create", "patch")),
    ]
    prefetch = only(objs, "ConfigMap")["metadata"]["name"]
    role = only(objs, "Role")
    assert role["metadata"]["namespace"] == "csi-wasm"
    assert rules(role) == [("", "configmaps", (prefetch,), ("get", "list", "watch"))]

    account = only(objs, "ServiceAccount")["metadata"]["name"]
    assert daemonset_pod(objs)["serviceAccountName"] == account
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = only(objs, kind)
        assert binding["roleRef"]["kind"] == role_kind
        assert binding["roleRef"]["name"] == only(objs, role_kind)["metadata"]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": "csi-wasm"}
        ]


def test_rbac_and_service_account_can_be_external(helm: Path) -> None:
    values = {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "csi"}}
    objs = helm_template(helm, values)
    for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        assert not find(objs, kind), kind
    assert daemonset_pod(objs)["serviceAccountName"] == "csi"
    with pytest.raises(HelmError, match=r"serviceAccount\.name"):
        helm_template(helm, {"serviceAccount": {"create": False}})


# --------------------------------------------------------------------------- the rest


def test_prefetch_configmap(helm: Path) -> None:
    default = only(helm_template(helm), "ConfigMap")
    assert default["metadata"]["name"] == "csi-wasm-prefetch"
    assert json.loads(default["data"]["prefetch.json"]) == []
    full = only(helm_template(helm, FULL), "ConfigMap", "csi-wasm-prefetch")
    assert json.loads(full["data"]["prefetch.json"]) == FULL["prefetch"]


def test_verify_keys_and_policy_are_mounted_and_passed(helm: Path) -> None:
    objs = helm_template(helm, FULL)
    data = only(objs, "ConfigMap", "csi-wasm-verify")["data"]
    assert data["key-release.pub"] == FULL["verify"]["keys"]["release"]
    assert yaml.safe_load(data["policy.yaml"]) == {"rules": FULL["verify"]["rules"]}
    pod = daemonset_pod(objs)
    driver = container(pod, "csi-wasm")
    args = flags(driver["args"])
    assert args["--verify-key"] == ["release=/etc/csi-wasm/verify/key-release.pub"]
    assert args["--verify-policy"] == ["/etc/csi-wasm/verify/policy.yaml"]
    assert args["--verify-unmatched"] == ["deny"]
    assert mount(driver, "verify") == {
        "name": "verify",
        "mountPath": "/etc/csi-wasm/verify",
        "readOnly": True,
    }
    assert volume(pod, "verify")["configMap"]["name"] == "csi-wasm-verify"
    template = only(objs, "DaemonSet")["spec"]["template"]
    assert "checksum/verify" in template["metadata"]["annotations"]

    default = helm_template(helm)
    assert find(default, "ConfigMap", "csi-wasm-verify") == []
    plain = flags(container(daemonset_pod(default), "csi-wasm")["args"])
    assert not {"--verify-key", "--verify-policy", "--verify-unmatched"} & plain.keys()


def test_a_rule_naming_an_unknown_key_fails_rendering(helm: Path) -> None:
    values = {"verify": {"rules": [{"match": "ghcr.io/**", "keys": ["ghost"]}]}}
    with pytest.raises(HelmError, match=r'names key "ghost", which verify\.keys does not define'):
        helm_template(helm, values)


def test_scheduling_defaults(helm: Path) -> None:
    objs = helm_template(helm)
    daemonset = only(objs, "DaemonSet")
    pod = daemonset_pod(objs)
    assert daemonset["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert "affinity" not in pod
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= (
        daemonset["spec"]["template"]["metadata"]["labels"].items()
    )


def test_scheduling_values(helm: Path) -> None:
    objs = helm_template(helm, FULL)
    daemonset = only(objs, "DaemonSet")
    pod = daemonset_pod(objs)
    assert daemonset["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": "10%"}
    assert pod["affinity"] == FULL["affinity"]
    annotations = daemonset["spec"]["template"]["metadata"]["annotations"]
    assert annotations["example.com/team"] == "platform"
    assert annotations["kubectl.kubernetes.io/default-container"] == "csi-wasm"


@pytest.mark.parametrize(
    "values",
    [
        {"kubeletDir": "/var/lib/kubelet"},  # misspelt key
        {"image": {"digest": "latest"}},
        {"logLevel": "verbose"},
        {"defaultAbi": "wasi"},
        {"driverName": "Wasm_Driver"},
        {"kubeletRootDir": "relative/path"},
        {"registryMirrors": [{"source": "docker.io"}]},
        {"prefetch": [{"url": "oci://x/y:1", "sha256": "nothex"}]},
        {"prefetch": [{"name": "../x", "url": "oci://x/y:1"}]},
        {"catalog": {"refresh": "soon"}},
        {"catalog": {"grace": "24"}},
        {"prefetch": [{"name": "Add-Header", "url": "oci://x/y:1"}]},
        {"prefetch": [{"name": "x" * 64, "url": "oci://x/y:1"}]},
    ],
    ids=lambda v: next(iter(v)),
)
def test_schema_rejects_bad_values(helm: Path, values: dict[str, Any]) -> None:
    with pytest.raises(HelmError, match="schema"):
        helm_template(helm, values)


def test_notes_show_the_first_wasmplugin() -> None:
    # Helm 4 only: Helm 3's `install --dry-run=client` still asks a cluster for its version.
    helm = helm_binary(4)
    notes = helm_notes(helm)
    assert f'"driver":"{DRIVER}"' in notes
    volume_mounts = re.search(r"sidecar.istio.io/userVolumeMount: '(.+)'", notes)
    assert volume_mounts, notes
    ((name, volume_mount),) = json.loads(volume_mounts.group(1)).items()
    user_volumes = re.search(r"sidecar.istio.io/userVolume: '(.+)'", notes)
    assert user_volumes, notes
    assert set(json.loads(user_volumes.group(1))) == {name}
    assert f"url: file://{volume_mount['mountPath']}/plugin.wasm" in notes

    assert "volumeAttributes: {catalog: node}" in notes  # the node catalog
    assert "csi-wasm catalog" in notes and "istio-catalog.yaml" in notes

    custom = helm_notes(helm, {"driverName": "wasm.example.org"})
    assert '"driver":"wasm.example.org"' in custom
    assert "driver: wasm.example.org" in custom


# --------------------------------------------------------------------------- docs & schema


def value_keys(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted keys of values.yaml, down to where the schema stops declaring properties.

    Objects whose schema is a ``$ref`` (Kubernetes resources) are documented as one value.
    """
    for key, value in values.items():
        sub = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and "properties" in sub:
            yield from value_keys(value, sub, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def schema_keys(schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, sub in schema.get("properties", {}).items():
        if key == "global":
            continue
        if "properties" in sub:
            yield from schema_keys(sub, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_values_and_schema_agree() -> None:
    assert sorted(value_keys(VALUES, SCHEMA)) == sorted(schema_keys(SCHEMA))


def test_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    documented = re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", readme, flags=re.MULTILINE)
    keys = sorted(value_keys(VALUES, SCHEMA))
    assert sorted(documented) == keys
    assert "<fullname>-prefetch" in readme and "--prefetch-configmap" in readme


@pytest.mark.parametrize("values", [None, FULL], ids=["defaults", "full"])
def test_args_are_known_to_the_cli(helm: Path, values: dict[str, Any] | None) -> None:
    """Every flag the chart passes to `csi-wasm serve` exists in the CLI (once it is written)."""
    if not (REPO / "csi_wasm" / "cli.py").exists() and not (REPO / "csi_wasm" / "cli").is_dir():
        pytest.skip("csi_wasm.cli is not written yet")
    result = run(
        [
            sys.executable,
            "-c",
            "import sys; from csi_wasm.cli import main; sys.exit(main())",
            "serve",
            "--help",
        ],
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    known = set(re.findall(r"--[a-z][a-z0-9-]*", result.stdout))
    driver = container(daemonset_pod(helm_template(helm, values)), "csi-wasm")
    chart_flags = set(flags(driver["args"]))
    assert chart_flags <= known, f"flags the CLI does not know: {sorted(chart_flags - known)}"
