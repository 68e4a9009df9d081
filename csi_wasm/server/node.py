"""The CSI Node service: translates protobuf to :mod:`csi_wasm.node` calls and back.

Answered on the event loop; publish and unpublish do their blocking work on the
workers' threads (see :mod:`csi_wasm.workers`).
"""

from __future__ import annotations

import asyncio

from csi_wasm._proto import csi_pb2, csi_pb2_grpc
from csi_wasm.errors import InvalidArgument, Unimplemented
from csi_wasm.node import NodeService, PublishRequest
from csi_wasm.server.rpc import CallObserver, Context, ObservedServicer, handler, note
from csi_wasm.workers import Workers

# Answer a little before kubelet's deadline, so it sees our message, not its own timeout.
_DEADLINE_MARGIN = 1.0


class NodeServicer(csi_pb2_grpc.NodeServicer, ObservedServicer):
    def __init__(
        self,
        service: NodeService,
        work: Workers,
        node_id: str,
        pull_timeout: float,
        on_call: CallObserver | None = None,
    ) -> None:
        ObservedServicer.__init__(self, on_call)
        self._service = service
        self._work = work
        self._node_id = node_id
        self._pull_timeout = pull_timeout

    @handler
    async def NodePublishVolume(
        self, request: csi_pb2.NodePublishVolumeRequest, context: Context
    ) -> csi_pb2.NodePublishVolumeResponse:
        if not request.HasField("volume_capability"):
            raise InvalidArgument("volume_capability is required")
        publish = self._service.publish_async(
            PublishRequest(
                volume_id=request.volume_id,
                target_path=request.target_path,
                block=request.volume_capability.HasField("block"),
                volume_context=dict(request.volume_context),
                secrets=dict(request.secrets),
            ),
            self._wait(context),
            self._work,
        )
        # A publish runs to its end even if kubelet gives up on the call: its steps hand
        # pins and mounts to each other, and its wait is already bounded by the deadline.
        result = await asyncio.shield(publish)
        note(digest=f"sha256:{result.module_digest}", cached=result.from_cache)
        return csi_pb2.NodePublishVolumeResponse()

    @handler
    async def NodeUnpublishVolume(
        self, request: csi_pb2.NodeUnpublishVolumeRequest, context: Context
    ) -> csi_pb2.NodeUnpublishVolumeResponse:
        await self._work.local.run(self._service.unpublish, request.volume_id, request.target_path)
        return csi_pb2.NodeUnpublishVolumeResponse()

    @handler
    async def NodeGetCapabilities(
        self, request: csi_pb2.NodeGetCapabilitiesRequest, context: Context
    ) -> csi_pb2.NodeGetCapabilitiesResponse:
        # No staging, no stats, no expansion: ephemeral read-only volumes need none.
        return csi_pb2.NodeGetCapabilitiesResponse()

    @handler
    async def NodeGetInfo(
        self, request: csi_pb2.NodeGetInfoRequest, context: Context
    ) -> csi_pb2.NodeGetInfoResponse:
        return csi_pb2.NodeGetInfoResponse(node_id=self._node_id)

    # Ephemeral read-only volumes need no staging, stats or expansion; the capabilities
    # above say so, and these answer UNIMPLEMENTED for a caller that asks anyway.

    @handler
    async def NodeStageVolume(
        self, request: csi_pb2.NodeStageVolumeRequest, context: Context
    ) -> csi_pb2.NodeStageVolumeResponse:
        raise _unimplemented("NodeStageVolume")

    @handler
    async def NodeUnstageVolume(
        self, request: csi_pb2.NodeUnstageVolumeRequest, context: Context
    ) -> csi_pb2.NodeUnstageVolumeResponse:
        raise _unimplemented("NodeUnstageVolume")

    @handler
    async def NodeGetVolumeStats(
        self, request: csi_pb2.NodeGetVolumeStatsRequest, context: Context
    ) -> csi_pb2.NodeGetVolumeStatsResponse:
        raise _unimplemented("NodeGetVolumeStats")

    @handler
    async def NodeExpandVolume(
        self, request: csi_pb2.NodeExpandVolumeRequest, context: Context
    ) -> csi_pb2.NodeExpandVolumeResponse:
        raise _unimplemented("NodeExpandVolume")

    def _wait(self, context: Context) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            return self._pull_timeout
        return max(0.0, remaining - _DEADLINE_MARGIN)


def _unimplemented(method: str) -> Unimplemented:
    return Unimplemented(
        f"csi-wasm does not implement {method}: its volumes are ephemeral and read-only"
    )
