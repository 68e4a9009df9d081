"""Identity service and NodeGetInfo/NodeGetCapabilities over the real socket."""

from __future__ import annotations

import shutil

from support.driver import NodeDirs
from support.kubelet import Kubelet

from csi_wasm import __version__
from csi_wasm._proto import csi_pb2


def test_plugin_info(kubelet: Kubelet) -> None:
    info = kubelet.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
    assert (info.name, info.vendor_version) == ("wasm.csi.dev", __version__)


def test_no_controller_service(kubelet: Kubelet) -> None:
    capabilities = kubelet.identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest())
    services = [c.service.type for c in capabilities.capabilities if c.HasField("service")]
    assert csi_pb2.PluginCapability.Service.CONTROLLER_SERVICE not in services


def test_probe_is_ready_only_while_the_store_is_usable(
    kubelet: Kubelet, node_dirs: NodeDirs
) -> None:
    assert kubelet.identity.Probe(csi_pb2.ProbeRequest()).ready.value is True
    shutil.rmtree(node_dirs.root)
    assert kubelet.identity.Probe(csi_pb2.ProbeRequest()).ready.value is False


def test_node_info_and_capabilities(kubelet: Kubelet) -> None:
    assert kubelet.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest()).node_id == "node-1"
    capabilities = kubelet.node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest())
    types = [c.rpc.type for c in capabilities.capabilities]
    assert csi_pb2.NodeServiceCapability.RPC.STAGE_UNSTAGE_VOLUME not in types
