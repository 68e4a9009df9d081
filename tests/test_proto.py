"""Checks for proto/csi.proto and the generated stubs in csi_wasm/_proto.

* The checked-in stubs must match what scripts/gen-proto produces.
* The messages must be wire-compatible with CSI v1.12: the serialized bytes
  are decoded by a tiny hand-written protobuf decoder (independent of the
  protobuf library) and the field numbers are compared with the spec.
* The gRPC module must expose the servicers, stubs and registration helpers
  under the CSI service names.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import wrappers_pb2

from csi_wasm._proto import csi_pb2, csi_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
GEN_SCRIPT = REPO / "scripts" / "gen-proto"
PROTO_PKG = REPO / "csi_wasm" / "_proto"
GENERATED = ("csi_pb2.py", "csi_pb2.pyi", "csi_pb2_grpc.py", "csi_pb2_grpc.pyi")

# Protobuf wire types.
VARINT = 0
I64 = 1
LEN = 2
I32 = 5

Field = tuple[int, int, int | bytes]


# ---------------------------------------------------------------------------
# A minimal protobuf wire-format decoder (independent of the protobuf runtime)
# ---------------------------------------------------------------------------


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; return (value, new position)."""
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise ValueError("varint too long")


def decode(buf: bytes) -> list[Field]:
    """Split a serialized message into (field number, wire type, value) triples.

    Varints are returned as ints; length-delimited and fixed-width fields as
    their raw bytes.
    """
    fields: list[Field] = []
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire_type = key >> 3, key & 0x7
        value: int | bytes
        if wire_type == VARINT:
            value, pos = read_varint(buf, pos)
        elif wire_type == LEN:
            length, pos = read_varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated length-delimited field")
            value, pos = buf[pos : pos + length], pos + length
        elif wire_type == I64:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire_type == I32:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        fields.append((number, wire_type, value))
    return fields


def by_number(buf: bytes) -> dict[int, list[tuple[int, int | bytes]]]:
    """Group decoded fields by field number: {number: [(wire type, value), ...]}."""
    out: dict[int, list[tuple[int, int | bytes]]] = {}
    for number, wire_type, value in decode(buf):
        out.setdefault(number, []).append((wire_type, value))
    return out


def single(buf: bytes, number: int, wire_type: int) -> int | bytes:
    """The one occurrence of field ``number``, which must have ``wire_type``."""
    fields = by_number(buf)
    assert number in fields, f"field {number} missing; got {sorted(fields)}"
    assert len(fields[number]) == 1, f"field {number} repeated: {fields[number]}"
    got_type, value = fields[number][0]
    assert got_type == wire_type, f"field {number}: wire type {got_type} != {wire_type}"
    return value


def single_bytes(buf: bytes, number: int) -> bytes:
    value = single(buf, number, LEN)
    assert isinstance(value, bytes)
    return value


def single_varint(buf: bytes, number: int) -> int:
    value = single(buf, number, VARINT)
    assert isinstance(value, int)
    return value


def decode_map(buf: bytes, number: int) -> dict[str, str]:
    """Decode a map<string, string> field: repeated entries with key=1, value=2."""
    out: dict[str, str] = {}
    for wire_type, entry in by_number(buf).get(number, []):
        assert wire_type == LEN
        assert isinstance(entry, bytes)
        out[single_bytes(entry, 1).decode()] = single_bytes(entry, 2).decode()
    return out


def test_decoder_self_check() -> None:
    # Field 1 varint 150 (the protobuf docs' example) and field 2 string "testing".
    raw = bytes.fromhex("089601") + bytes.fromhex("120774657374696e67")
    assert decode(raw) == [(1, VARINT, 150), (2, LEN, b"testing")]
    with pytest.raises(ValueError, match="truncated"):
        decode(bytes.fromhex("0896"))


# ---------------------------------------------------------------------------
# (a) the checked-in stubs are up to date
# ---------------------------------------------------------------------------


def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(GEN_SCRIPT), str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"scripts/gen-proto failed:\n{result.stdout}{result.stderr}"
    stale = [
        name
        for name in GENERATED
        if (tmp_path / name).read_bytes() != (PROTO_PKG / name).read_bytes()
    ]
    assert not stale, (
        f"checked-in stubs {stale} in csi_wasm/_proto differ from proto/csi.proto; "
        "run scripts/gen-proto (with the grpcio-tools and mypy-protobuf versions "
        "pinned in pyproject.toml's dev extra) and commit the result"
    )


# ---------------------------------------------------------------------------
# (b) wire compatibility with CSI v1.12
# ---------------------------------------------------------------------------


def test_node_publish_volume_request_field_numbers() -> None:
    req = csi_pb2.NodePublishVolumeRequest(
        volume_id="vol-1",
        publish_context={"pc": "1"},
        staging_target_path="/staging",
        target_path="/var/lib/kubelet/pods/p/volumes/v/mount",
        volume_capability=csi_pb2.VolumeCapability(
            mount=csi_pb2.VolumeCapability.MountVolume(
                fs_type="ext4", mount_flags=["ro", "noexec"], volume_mount_group="1000"
            ),
            access_mode=csi_pb2.VolumeCapability.AccessMode(
                mode=csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY
            ),
        ),
        readonly=True,
        secrets={"token": "s3cret"},
        volume_context={"image": "ghcr.io/example/filter:1"},
    )
    raw = req.SerializeToString()
    fields = by_number(raw)
    assert sorted(fields) == [1, 2, 3, 4, 5, 6, 7, 8]

    assert single_bytes(raw, 1) == b"vol-1"  # volume_id
    assert decode_map(raw, 2) == {"pc": "1"}  # publish_context
    assert single_bytes(raw, 3) == b"/staging"  # staging_target_path
    assert single_bytes(raw, 4) == b"/var/lib/kubelet/pods/p/volumes/v/mount"  # target_path
    assert single_varint(raw, 6) == 1  # readonly
    assert decode_map(raw, 7) == {"token": "s3cret"}  # secrets
    assert decode_map(raw, 8) == {"image": "ghcr.io/example/filter:1"}  # volume_context

    # volume_capability = 5: oneof access_type {block = 1; mount = 2}, access_mode = 3.
    cap = single_bytes(raw, 5)
    assert sorted(by_number(cap)) == [2, 3]
    mount = single_bytes(cap, 2)
    assert single_bytes(mount, 1) == b"ext4"  # fs_type
    assert [v for _, v in by_number(mount)[2]] == [b"ro", b"noexec"]  # mount_flags
    assert single_bytes(mount, 3) == b"1000"  # volume_mount_group
    access_mode = single_bytes(cap, 3)
    assert single_varint(access_mode, 1) == 3  # mode = MULTI_NODE_READER_ONLY

    block = csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume())
    assert decode(block.SerializeToString()) == [(1, LEN, b"")]


def test_identity_field_numbers() -> None:
    probe = csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=True))
    ready = single_bytes(probe.SerializeToString(), 1)
    assert single_varint(ready, 1) == 1  # google.protobuf.BoolValue.value

    info = csi_pb2.GetPluginInfoResponse(
        name="wasm.csi.example.com", vendor_version="0.1.0", manifest={"k": "v"}
    )
    raw = info.SerializeToString()
    assert single_bytes(raw, 1) == b"wasm.csi.example.com"
    assert single_bytes(raw, 2) == b"0.1.0"
    assert decode_map(raw, 3) == {"k": "v"}

    # PluginCapability: oneof type {Service service = 1; VolumeExpansion volume_expansion = 2}
    svc = csi_pb2.PluginCapability(
        service=csi_pb2.PluginCapability.Service(
            type=csi_pb2.PluginCapability.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS
        )
    )
    assert single_varint(single_bytes(svc.SerializeToString(), 1), 1) == 2
    exp = csi_pb2.PluginCapability(
        volume_expansion=csi_pb2.PluginCapability.VolumeExpansion(
            type=csi_pb2.PluginCapability.VolumeExpansion.OFFLINE
        )
    )
    assert single_varint(single_bytes(exp.SerializeToString(), 2), 1) == 2


def test_node_get_info_and_stats_field_numbers() -> None:
    info = csi_pb2.NodeGetInfoResponse(
        node_id="node-a",
        max_volumes_per_node=42,
        accessible_topology=csi_pb2.Topology(segments={"topology.kubernetes.io/zone": "z1"}),
    )
    raw = info.SerializeToString()
    assert single_bytes(raw, 1) == b"node-a"
    assert single_varint(raw, 2) == 42
    assert decode_map(single_bytes(raw, 3), 1) == {"topology.kubernetes.io/zone": "z1"}

    stats = csi_pb2.NodeGetVolumeStatsResponse(
        usage=[csi_pb2.VolumeUsage(available=1, total=2, used=3, unit=csi_pb2.VolumeUsage.INODES)],
        volume_condition=csi_pb2.VolumeCondition(abnormal=True, message="bad"),
    )
    raw = stats.SerializeToString()
    usage = single_bytes(raw, 1)
    assert [single_varint(usage, n) for n in (1, 2, 3, 4)] == [1, 2, 3, 2]
    condition = single_bytes(raw, 2)
    assert single_varint(condition, 1) == 1
    assert single_bytes(condition, 2) == b"bad"

    caps = csi_pb2.NodeServiceCapability(
        rpc=csi_pb2.NodeServiceCapability.RPC(
            type=csi_pb2.NodeServiceCapability.RPC.VOLUME_MOUNT_GROUP
        )
    )
    assert single_varint(single_bytes(caps.SerializeToString(), 1), 1) == 6


def test_enum_values_match_spec() -> None:
    mode = csi_pb2.VolumeCapability.AccessMode.Mode
    assert dict(mode.items()) == {
        "UNKNOWN": 0,
        "SINGLE_NODE_WRITER": 1,
        "SINGLE_NODE_READER_ONLY": 2,
        "MULTI_NODE_READER_ONLY": 3,
        "MULTI_NODE_SINGLE_WRITER": 4,
        "MULTI_NODE_MULTI_WRITER": 5,
        "SINGLE_NODE_SINGLE_WRITER": 6,
        "SINGLE_NODE_MULTI_WRITER": 7,
    }
    rpc_type = csi_pb2.NodeServiceCapability.RPC.Type
    assert dict(rpc_type.items()) == {
        "UNKNOWN": 0,
        "STAGE_UNSTAGE_VOLUME": 1,
        "GET_VOLUME_STATS": 2,
        "EXPAND_VOLUME": 3,
        "VOLUME_CONDITION": 4,
        "SINGLE_NODE_MULTI_WRITER": 5,
        "VOLUME_MOUNT_GROUP": 6,
    }
    svc_type = csi_pb2.PluginCapability.Service.Type
    assert dict(svc_type.items()) == {
        "UNKNOWN": 0,
        "CONTROLLER_SERVICE": 1,
        "VOLUME_ACCESSIBILITY_CONSTRAINTS": 2,
        "GROUP_CONTROLLER_SERVICE": 3,
        "SNAPSHOT_METADATA_SERVICE": 4,
    }
    unit = csi_pb2.VolumeUsage.Unit
    assert dict(unit.items()) == {
        "UNKNOWN": 0,
        "BYTES": 1,
        "INODES": 2,
    }


def test_round_trip_through_runtime() -> None:
    req = csi_pb2.NodeExpandVolumeRequest(
        volume_id="v",
        volume_path="/p",
        capacity_range=csi_pb2.CapacityRange(required_bytes=1 << 40, limit_bytes=1 << 41),
        staging_target_path="/s",
        secrets={"a": "b"},
    )
    raw = req.SerializeToString()
    assert csi_pb2.NodeExpandVolumeRequest.FromString(raw) == req
    capacity = single_bytes(raw, 3)
    assert single_varint(capacity, 1) == 1 << 40
    assert single_varint(capacity, 2) == 1 << 41
    assert decode_map(raw, 6) == {"a": "b"}


# ---------------------------------------------------------------------------
# (c) gRPC surface
# ---------------------------------------------------------------------------


def test_grpc_module_surface() -> None:
    for name in (
        "IdentityServicer",
        "NodeServicer",
        "add_IdentityServicer_to_server",
        "add_NodeServicer_to_server",
        "IdentityStub",
        "NodeStub",
    ):
        assert hasattr(csi_pb2_grpc, name), f"csi_pb2_grpc lacks {name}"

    services = csi_pb2.DESCRIPTOR.services_by_name
    assert sorted(services) == ["Identity", "Node"]
    assert services["Identity"].full_name == "csi.v1.Identity"
    assert services["Node"].full_name == "csi.v1.Node"
    assert [m.name for m in services["Identity"].methods] == [
        "GetPluginInfo",
        "GetPluginCapabilities",
        "Probe",
    ]
    assert [m.name for m in services["Node"].methods] == [
        "NodeStageVolume",
        "NodeUnstageVolume",
        "NodePublishVolume",
        "NodeUnpublishVolume",
        "NodeGetVolumeStats",
        "NodeExpandVolume",
        "NodeGetCapabilities",
        "NodeGetInfo",
    ]
    assert csi_pb2.DESCRIPTOR.package == "csi.v1"
    # The grpc module imports csi_pb2 relatively, as the package member.
    assert csi_pb2_grpc.csi__pb2 is csi_pb2  # type: ignore[attr-defined]
    assert csi_pb2.NodePublishVolumeRequest.__module__ == "csi_wasm._proto.csi_pb2"


def test_grpc_method_paths_in_generated_code() -> None:
    source = (PROTO_PKG / "csi_pb2_grpc.py").read_text()
    for path in (
        "/csi.v1.Identity/Probe",
        "/csi.v1.Identity/GetPluginInfo",
        "/csi.v1.Node/NodePublishVolume",
        "/csi.v1.Node/NodeGetInfo",
    ):
        assert f"'{path}'" in source, path


class _Identity(csi_pb2_grpc.IdentityServicer):
    def GetPluginInfo(
        self, request: csi_pb2.GetPluginInfoRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(name="test.csi.example.com", vendor_version="0")

    def GetPluginCapabilities(
        self, request: csi_pb2.GetPluginCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetPluginCapabilitiesResponse:
        return csi_pb2.GetPluginCapabilitiesResponse()

    def Probe(
        self, request: csi_pb2.ProbeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ProbeResponse:
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=True))


def test_identity_round_trip_over_unix_socket(tmp_path: Path) -> None:
    address = f"unix:{tmp_path / 'csi.sock'}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    csi_pb2_grpc.add_IdentityServicer_to_server(_Identity(), server)
    assert server.add_insecure_port(address) != 0
    server.start()
    try:
        with grpc.insecure_channel(address) as channel:
            stub = csi_pb2_grpc.IdentityStub(channel)
            info = stub.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=5)
            assert info.name == "test.csi.example.com"
            probe = stub.Probe(csi_pb2.ProbeRequest(), timeout=5)
            assert probe.HasField("ready")
            assert probe.ready.value
            # The Node service is not registered on this server.
            node = csi_pb2_grpc.NodeStub(channel)
            with pytest.raises(grpc.RpcError) as excinfo:
                node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=5)
            assert excinfo.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(grace=None).wait(5)
