"""Play kubelet against a csi-wasm driver: pod directories, volume ids, real gRPC calls.

Paths and keys are laid out as kubelet does for an inline CSI volume:
``<kubelet-dir>/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount`` as the target,
``csi-<sha256(pod uid + volume name)>`` as the volume id, and the pod keys that
``podInfoOnMount: true`` adds to the volume context.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from csi_wasm._proto import csi_pb2, csi_pb2_grpc


@dataclass(frozen=True)
class PodVolume:
    pod_name: str
    namespace: str
    pod_uid: str
    volume_name: str
    target: Path

    @property
    def volume_id(self) -> str:
        return "csi-" + hashlib.sha256((self.pod_uid + self.volume_name).encode()).hexdigest()

    def context(self, attributes: Mapping[str, str]) -> dict[str, str]:
        return {
            **attributes,
            "csi.storage.k8s.io/pod.name": self.pod_name,
            "csi.storage.k8s.io/pod.namespace": self.namespace,
            "csi.storage.k8s.io/pod.uid": self.pod_uid,
            "csi.storage.k8s.io/serviceAccount.name": "default",
            "csi.storage.k8s.io/ephemeral": "true",
        }


def dockerconfigjson(host: str, username: str, password: str) -> dict[str, str]:
    """NodePublishVolume secrets as kubelet passes a kubernetes.io/dockerconfigjson Secret."""
    config = {"auths": {host: {"username": username, "password": password}}}
    return {".dockerconfigjson": json.dumps(config)}


@dataclass
class Kubelet:
    kubelet_dir: Path
    channel: grpc.Channel
    node: csi_pb2_grpc.NodeStub = field(init=False)
    identity: csi_pb2_grpc.IdentityStub = field(init=False)

    def __post_init__(self) -> None:
        self.node = csi_pb2_grpc.NodeStub(self.channel)
        self.identity = csi_pb2_grpc.IdentityStub(self.channel)

    def new_pod(
        self, name: str = "app", namespace: str = "default", volume: str = "wasm"
    ) -> PodVolume:
        uid = str(uuid.uuid4())
        parent = self.kubelet_dir / "pods" / uid / "volumes" / "kubernetes.io~csi" / volume
        parent.mkdir(parents=True)  # kubelet creates the parent; the driver creates mount/
        return PodVolume(name, namespace, uid, volume, parent / "mount")

    def publish(
        self,
        pod: PodVolume,
        attributes: Mapping[str, str],
        *,
        secrets: Mapping[str, str] | None = None,
        timeout: float = 120.0,
        block: bool = False,
    ) -> csi_pb2.NodePublishVolumeResponse:
        return self.node.NodePublishVolume(
            self.publish_request(pod, attributes, secrets=secrets, block=block), timeout=timeout
        )

    def publish_request(
        self,
        pod: PodVolume,
        attributes: Mapping[str, str],
        *,
        secrets: Mapping[str, str] | None = None,
        block: bool = False,
    ) -> csi_pb2.NodePublishVolumeRequest:
        capability = csi_pb2.VolumeCapability(
            access_mode=csi_pb2.VolumeCapability.AccessMode(
                mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_READER_ONLY
            )
        )
        if block:
            capability.block.SetInParent()
        else:
            capability.mount.SetInParent()
        return csi_pb2.NodePublishVolumeRequest(
            volume_id=pod.volume_id,
            target_path=str(pod.target),
            volume_capability=capability,
            readonly=True,
            secrets=dict(secrets or {}),
            volume_context=pod.context(attributes),
        )

    def unpublish(self, pod: PodVolume, timeout: float = 30.0) -> None:
        self.node.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(
                volume_id=pod.volume_id, target_path=str(pod.target)
            ),
            timeout=timeout,
        )


def rpc_error(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The code and message of a call that must fail; the message must be one line."""
    try:
        call()
    except grpc.RpcError as error:
        assert isinstance(error, grpc.Call)
        message = error.details() or ""
        assert "\n" not in message
        return error.code(), message
    raise AssertionError("the call succeeded")
