"""The CSI Identity service, answered on the event loop; Probe's readiness check (a
file made and removed under the root) runs on a thread of its own."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf import wrappers_pb2

from csi_wasm import __version__
from csi_wasm._proto import csi_pb2, csi_pb2_grpc
from csi_wasm.server.rpc import CallObserver, Context, ObservedServicer, handler
from csi_wasm.workers import Pool


class IdentityServicer(csi_pb2_grpc.IdentityServicer, ObservedServicer):
    def __init__(
        self,
        driver_name: str,
        ready: Callable[[], bool],
        checks: Pool,
        on_call: CallObserver | None = None,
    ) -> None:
        ObservedServicer.__init__(self, on_call)
        self._driver_name = driver_name
        self._ready = ready
        self._checks = checks  # ready() touches the root: off the loop, on its own thread

    @handler
    async def GetPluginInfo(
        self, request: csi_pb2.GetPluginInfoRequest, context: Context
    ) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(name=self._driver_name, vendor_version=__version__)

    @handler
    async def GetPluginCapabilities(
        self, request: csi_pb2.GetPluginCapabilitiesRequest, context: Context
    ) -> csi_pb2.GetPluginCapabilitiesResponse:
        # A node-only plugin: no CONTROLLER_SERVICE, no topology constraints.
        return csi_pb2.GetPluginCapabilitiesResponse()

    @handler
    async def Probe(self, request: csi_pb2.ProbeRequest, context: Context) -> csi_pb2.ProbeResponse:
        ready = await self._checks.run(self._ready)
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=ready))
