"""The CSI Node service: translates protobuf to :mod:`csi_wasm.node` calls and back."""

from __future__ import annotations

import grpc

from csi_wasm._proto import csi_pb2, csi_pb2_grpc
from csi_wasm.errors import InvalidArgument, Unimplemented
from csi_wasm.node import NodeService, PublishRequest
from csi_wasm.server.rpc import CallObserver, ObservedServicer, handler, note

# Answer a little before kubelet's deadline, so it sees our message, not its own timeout.
_DEADLINE_MARGIN = 1.0


class NodeServicer(csi_pb2_grpc.NodeServicer, ObservedServicer):
    def __init__(
        self,
        service: NodeService,
        node_id: str,
        pull_timeout: float,
        on_call: CallObserver | None = None,
    ) -> None:
        ObservedServicer.__init__(self, on_call)
        self._service = service
        self._node_id = node_id
        self._pull_timeout = pull_timeout

    @handler
    def NodePublishVolume(
        self, request: csi_pb2.NodePublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodePublishVolumeResponse:
        if not request.HasField("volume_capability"):
            raise InvalidArgument("volume_capability is required")
        result = self._service.publish(
            PublishRequest(
                volume_id=request.volume_id,
                target_path=request.target_path,
                block=request.volume_capability.HasField("block"),
                volume_context=dict(request.volume_context),
                secrets=dict(request.secrets),
            ),
            wait=self._wait(context),
        )
        note(digest=f"sha256:{result.module_digest}", cached=result.from_cache)
        return csi_pb2.NodePublishVolumeResponse()

    @handler
    def NodeUnpublishVolume(
        self, request: csi_pb2.NodeUnpublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeUnpublishVolumeResponse:
        self._service.unpublish(request.volume_id, request.target_path)
        return csi_pb2.NodeUnpublishVolumeResponse()

    @handler
    def NodeGetCapabilities(
        self, request: csi_pb2.NodeGetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetCapabilitiesResponse:
        # No staging, no stats, no expansion: ephemeral read-only volumes need none.
        return csi_pb2.NodeGetCapabilitiesResponse()

    @handler
    def NodeGetInfo(
        self, request: csi_pb2.NodeGetInfoRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetInfoResponse:
        return csi_pb2.NodeGetInfoResponse(node_id=self._node_id)

    # Ephemeral read-only volumes need no staging, stats or expansion; the capabilities
    # above say so, and these answer UNIMPLEMENTED for a caller that asks anyway.

    @handler
    def NodeStageVolume(
        self, request: csi_pb2.NodeStageVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeStageVolumeResponse:
        raise _unimplemented("NodeStageVolume")

    @handler
    def NodeUnstageVolume(
        self, request: csi_pb2.NodeUnstageVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeUnstageVolumeResponse:
        raise _unimplemented("NodeUnstageVolume")

    @handler
    def NodeGetVolumeStats(
        self, request: csi_pb2.NodeGetVolumeStatsRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetVolumeStatsResponse:
        raise _unimplemented("NodeGetVolumeStats")

    @handler
    def NodeExpandVolume(
        self, request: csi_pb2.NodeExpandVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeExpandVolumeResponse:
        raise _unimplemented("NodeExpandVolume")

    def _wait(self, context: grpc.ServicerContext) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            return self._pull_timeout
        return max(0.0, remaining - _DEADLINE_MARGIN)


def _unimplemented(method: str) -> Unimplemented:
    return Unimplemented(
        f"csi-wasm does not implement {method}: its volumes are ephemeral and read-only"
    )
