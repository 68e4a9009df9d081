"""Property tests: no input leads to an INTERNAL error or a mount outside the pods dir.

* reference parsing: any text gives a Reference or INVALID_ARGUMENT (one line); every
  reference the grammar allows parses, and its canonical form parses to itself;
* volume attributes: any volume_context gives a request or INVALID_ARGUMENT;
* target paths: NodePublishVolume/NodeUnpublishVolume over real gRPC with hostile
  target paths (``..``, ``.``, empty and odd components, escapes in mountinfo, symlinked
  directories, files) never answer INTERNAL and never mount outside
  ``<kubelet-dir>/pods``.
"""

from __future__ import annotations

import contextlib
import os
import string
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from support.driver import NodeDirs, in_process
from support.kubelet import Kubelet, PodVolume
from support.oci import PushedModule, push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm.attributes import ModuleRequest, parse_attributes
from csi_wasm.errors import InvalidArgument
from csi_wasm.reference import Reference, parse_reference

from .harness import force_unmount, mountinfo, mounts_at

Code = grpc.StatusCode
NEVER = {Code.INTERNAL, Code.UNKNOWN}

# -- reference parsing ---------------------------------------------------------------

_lower_alnum = string.ascii_lowercase + string.digits
_component = st.builds(
    lambda first, rest: first + "".join(sep + part for sep, part in rest),
    st.text(_lower_alnum, min_size=1, max_size=8),
    st.lists(
        st.tuples(
            st.sampled_from([".", "_", "__", "-", "--"]),
            st.text(_lower_alnum, min_size=1, max_size=6),
        ),
        max_size=2,
    ),
)
_host = st.one_of(
    st.sampled_from(["localhost", "127.0.0.1", "ghcr.io", "docker.io", "Index.Docker.io"]),
    st.builds(
        ".".join,
        st.lists(
            st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,6}[A-Za-z0-9])?", fullmatch=True),
            min_size=2,
            max_size=3,
        ),
    ),
    st.builds(lambda ip: f"[{ip}]", st.ip_addresses(v=6).map(str)),
)
_domain = st.builds(
    lambda host, port: host if port is None else f"{host}:{port}",
    _host,
    st.none() | st.integers(1, 65535),
)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_digest = st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())


@st.composite
def valid_references(draw: st.DrawFn) -> str:
    domain = draw(st.none() | _domain)
    path = "/".join(draw(st.lists(_component, min_size=1, max_size=3)))
    first = path.split("/")[0]
    # without a domain, a first component with '.' would be read as one (as docker does)
    assume(domain is not None or ("." not in first and first != "localhost"))
    text = path if domain is None else f"{domain}/{path}"
    if draw(st.booleans()):
        text += ":" + draw(_tag)
    if draw(st.booleans()):
        text += "@" + draw(_digest)
    return text


@given(st.text(max_size=300))
@settings(max_examples=200, deadline=None)
def test_any_text_is_a_reference_or_invalid_argument(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidArgument as error:
        assert "\n" not in error.message
        return
    assert isinstance(ref, Reference)
    assert parse_reference(str(ref)) == ref


@given(valid_references())
@settings(max_examples=200, deadline=None)
def test_grammar_references_parse_and_round_trip(text: str) -> None:
    assume(len(text) < 240)  # the name length limit is a separate rule
    # a 64-hex-digit single name on Docker Hub is refused as an image ID (docker does too)
    first = text.split("@", maxsplit=1)[0].split(":", maxsplit=1)[0]
    assume(not (len(first) == 64 and all(c in string.hexdigits for c in first)))
    ref = parse_reference(text)
    assert parse_reference(str(ref)) == ref
    assert str(parse_reference(str(ref))) == str(ref)


# -- attributes -------------------------------------------------------------------------

_keys = st.one_of(
    st.sampled_from(["url", "sha256", "imagePullPolicy", "csi.storage.k8s.io/pod.name"]),
    st.text(max_size=20),
)
_values = st.one_of(
    st.sampled_from(
        [
            "",
            "oci://ghcr.io/a/b:v1",
            "https://example.com/m.wasm",
            "http://example.com/m.wasm",
            "file:///etc/passwd",
            "Always",
            "IfNotPresent",
            "UNSPECIFIED_POLICY",
            "sha256:" + "a" * 64,
            "A" * 64,
        ]
    ),
    valid_references(),
    st.text(max_size=80),
)


@given(st.dictionaries(_keys, _values, max_size=5))
@settings(max_examples=200, deadline=None)
def test_any_volume_context_is_a_request_or_invalid_argument(context: dict[str, str]) -> None:
    try:
        request = parse_attributes(context)
    except InvalidArgument as error:
        assert "\n" not in error.message
        return
    assert isinstance(request, ModuleRequest)


# -- target paths over gRPC ----------------------------------------------------------


@dataclass
class Node:
    dirs: NodeDirs
    kubelet: Kubelet
    pushed: PushedModule
    pods: Path
    outside: Path
    volume_dir: Path  # <pods>/<uid>/volumes/kubernetes.io~csi/wasm, as kubelet makes it


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[Node]:
    dirs = NodeDirs(tmp_path_factory.mktemp("properties"))
    settings_ = dirs.settings(insecure_registries=frozenset({registry.host}))
    pushed = push_wasm_artifact(registry, "props/module", "v1", make_module(4096, "props"))
    try:
        with in_process(dirs, settings_) as (_driver, kubelet):
            pods = (dirs.kubelet_dir / "pods").resolve()
            outside = dirs.base / "outside"
            outside.mkdir()
            volume_dir = pods / "u1" / "volumes" / "kubernetes.io~csi" / "wasm"
            volume_dir.mkdir(parents=True)
            # symlinked directories on the way, and a file where a directory is expected
            (pods / "link-out").symlink_to(outside)
            (pods / "u1" / "link-up").symlink_to("../..")
            (volume_dir / "link-out").symlink_to(outside)
            (volume_dir / "a-file").write_text("not a directory")
            (volume_dir / "full").mkdir()
            (volume_dir / "full" / "keep").write_text("someone's data")
            kubelet.publish(kubelet.new_pod(name="warm"), {"url": pushed.reference})
            yield Node(dirs, kubelet, pushed, pods, outside, volume_dir)
    finally:
        dirs.cleanup_mounts()


_PREFIXES = [
    "{volume_dir}",
    "{volume_dir}",
    "{volume_dir}",
    "{pods}",
    "{pods}/u1",
    "{pods}/link-out",
    "{kubelet}",
    "{outside}",
    "",
    "/",
    "/etc",
]
_segment = st.one_of(
    st.sampled_from(
        ["..", ".", "", "mount", "wasm", "link-out", "link-up", "a-file", "full", "u1", " "]
    ),
    st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="/"),
        min_size=1,
        max_size=12,
    ),
)


def _target(node: Node, prefix: str, segments: list[str]) -> str:
    base = prefix.format(
        volume_dir=node.volume_dir,
        pods=node.pods,
        kubelet=node.dirs.kubelet_dir,
        outside=node.outside,
    )
    return "/".join([base, *segments]) if segments else base


def _inside(path: str, directory: Path) -> bool:
    return path.startswith(os.fspath(directory) + "/")


@given(
    prefix=st.sampled_from(_PREFIXES),
    segments=st.lists(_segment, max_size=4),
    make_parent=st.booleans(),
    volume_id=st.one_of(st.just("vol"), st.text(max_size=40)),
    # only the loopback registry or URLs refused before any request: no traffic elsewhere
    url=st.sampled_from(
        ["cached", "cached", "cached", "missing", "", "file:///etc/passwd", "https://127.0.0.1:1/m"]
    ),
)
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_target_path_gives_internal_or_a_mount_outside_the_pods_dir(
    node: Node, prefix: str, segments: list[str], make_parent: bool, volume_id: str, url: str
) -> None:
    target = _target(node, prefix, segments)
    if "\0" not in target:
        parent = os.path.dirname(target)
        if make_parent and os.path.realpath(parent).startswith(os.fspath(node.dirs.base) + "/"):
            with contextlib.suppress(OSError):  # e.g. a file on the way: fine, no parent then
                os.makedirs(parent, exist_ok=True)
    before = set(mountinfo())
    urls = {"cached": node.pushed.reference, "missing": node.pushed.reference + "-missing"}
    context = {"url": urls.get(url, url)}
    pod = PodVolume("p", "default", str(uuid.uuid4()), "wasm", Path("/unused"))
    request = node.kubelet.publish_request(pod, context)
    request.volume_id, request.target_path = volume_id, target
    published = False
    try:
        node.kubelet.node.NodePublishVolume(request, timeout=30)
        published = True
    except grpc.RpcError as error:
        assert error.code() not in NEVER, error.details()
    # Only mounts of this driver's cache: other test runs may share the machine.
    cache = os.fspath(node.dirs.root) + "/"
    new = [m.point for m in set(mountinfo()) - before if m.root.startswith(cache)]
    event("published" if published else "refused")
    try:
        for mount_point in new:
            assert _inside(mount_point, node.pods), f"mounted outside the pods dir: {mount_point}"
        if published:
            assert _inside(os.path.realpath(target), node.pods)
            assert mounts_at(Path(os.path.realpath(target)))[-1] >= {"ro", "nosuid", "nodev"}
        unpublish = node.kubelet.node.NodeUnpublishVolume
        from csi_wasm._proto import csi_pb2  # noqa: PLC0415

        try:
            unpublish(
                csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target),
                timeout=30,
            )
        except grpc.RpcError as error:
            assert error.code() not in NEVER, error.details()
        if published:
            assert mounts_at(Path(os.path.realpath(target))) == []
    finally:
        for mount_point in sorted(new, reverse=True):  # never leave a mount to the next example
            force_unmount(mount_point)


def test_symlink_at_the_target_is_not_followed(node: Node) -> None:
    target = node.volume_dir / "link-out"
    pod = PodVolume("p", "default", str(uuid.uuid4()), "wasm", target)
    try:
        try:
            node.kubelet.publish(pod, {"url": node.pushed.reference})
        except grpc.RpcError as error:
            assert error.code() == Code.INVALID_ARGUMENT
        assert mounts_at(node.outside) == []
    finally:
        force_unmount(node.outside)


def test_line_break_characters_in_the_target(node: Node) -> None:
    target = node.volume_dir / "odd\rname"
    pod = PodVolume("p", "default", str(uuid.uuid4()), "wasm", target)
    try:
        node.kubelet.publish(pod, {"url": node.pushed.reference})
        node.kubelet.unpublish(pod)
        assert mounts_at(target) == []
    finally:
        force_unmount(target)


_NON_UTF8_MOUNT = """
import os
from pathlib import Path
from csi_wasm.mounts import bind_read_only, find_mount
base = os.getcwd()  # the test's tmp_path; the mount dies with the private namespace
odd = os.path.join(os.fsencode(base), b"latin1-\\xe9")
os.mkdir(odd)
bind_read_only(Path(os.fsdecode(odd)), Path(os.fsdecode(odd)))
find_mount(Path(base) / "anything")
"""


def test_a_non_utf8_mount_elsewhere_on_the_node(tmp_path: Path) -> None:
    """Run in a private mount namespace: the odd mount is never seen by anything else."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", _NON_UTF8_MOUNT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-500:]
