"""Module validation through the real driver: what is refused, with which message, and
that nothing refused stays in the cache (issue 9, part 1)."""

from __future__ import annotations

import gzip
import hashlib
import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.driver import NodeDirs, in_process
from support.files import FileServer
from support.kubelet import Kubelet, rpc_error
from support.oci import make_layer_tar, push_compat_image, push_wasm_artifact
from support.registry import Registry
from support.wasm import from_wat, join_sections, make_module, split_sections

from csi_wasm.server.serve import Driver
from csi_wasm.verify import Abi, validator

_MEMORY = '(memory (export "memory") 1)'
_ABI = '(func (export "proxy_abi_version_0_2_1"))'
_MALLOC = '(func (export "malloc") (param i32) (result i32) (i32.const 0))'


def _truncated() -> bytes:
    module = make_module(4096, "e2e-truncated")
    return module[: len(module) // 2]


def _out_of_order() -> bytes:
    sections = split_sections(make_module(1024, "e2e-order"))
    ids = [section_id for section_id, _ in sections]
    function, memory = ids.index(3), ids.index(5)
    sections[function], sections[memory] = sections[memory], sections[function]
    return join_sections(sections)


# (name, module, the words its refusal must contain, metric reason)
BROKEN: list[tuple[str, Callable[[], bytes], str, str]] = [
    (
        "truncated",
        _truncated,
        "is not a valid WebAssembly module: unexpected end-of-file",
        "structure",
    ),
    (
        "out-of-order",
        _out_of_order,
        "is not a valid WebAssembly module: section out of order",
        "structure",
    ),
    (
        "trailing-garbage",
        lambda: make_module(1024, "e2e-tail") + b"\xff\x01",
        "is not a valid WebAssembly module: malformed section id",
        "structure",
    ),
    (
        "no-abi-export",
        lambda: make_module(1024, "e2e-plain", proxy_wasm=False),
        "exports no proxy_abi_version_* function; found: seed;",
        "no_abi_export",
    ),
    (
        "unknown-abi-version",
        lambda: from_wat(f'(module {_MEMORY} {_MALLOC} (func (export "proxy_abi_version_0_3_0")))'),
        "exports proxy_abi_version_0_3_0, an ABI version Envoy does not implement",
        "unknown_abi_version",
    ),
    (
        "foreign-import",
        lambda: from_wat(
            f'(module (import "wasi:http/types" "f" (func)) {_MEMORY} {_ABI} {_MALLOC})'
        ),
        "imports wasi:http/types.f, but a proxy-wasm host provides only the modules env,",
        "foreign_import",
    ),
    (
        "no-memory",
        lambda: from_wat(f"(module {_ABI} {_MALLOC})"),
        "it has no memory",
        "no_memory",
    ),
    (
        "no-allocator",
        lambda: from_wat(f"(module {_MEMORY} {_ABI})"),
        "exports no allocator function (malloc or proxy_on_memory_allocate)",
        "no_allocator",
    ),
]


@pytest.fixture
def served(node_dirs: NodeDirs, registry: Registry) -> Iterator[tuple[Driver, Kubelet]]:
    settings = node_dirs.settings(insecure_registries=frozenset({registry.host}))
    with in_process(node_dirs, settings) as pair:
        yield pair


def _rejections(driver: Driver, reason: str) -> float:
    value = driver.metrics.registry.get_sample_value(
        "csi_wasm_module_rejections_total", {"reason": reason}
    )
    assert value is not None
    return value


def _cache_is_empty(dirs: NodeDirs) -> None:
    assert not list((dirs.root / "modules").iterdir())
    assert not list((dirs.root / "facts").iterdir())
    assert not list((dirs.root / "tmp").iterdir())


@pytest.mark.parametrize(("name", "build", "words", "reason"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_modules_are_refused_each_with_its_own_message(
    served: tuple[Driver, Kubelet],
    registry: Registry,
    unique_repo: str,
    node_dirs: NodeDirs,
    name: str,
    build: Callable[[], bytes],
    words: str,
    reason: str,
) -> None:
    driver, kubelet = served
    pushed = push_wasm_artifact(registry, unique_repo, name, build())
    pod = kubelet.new_pod()
    code, message = rpc_error(lambda: kubelet.publish(pod, {"url": pushed.reference}))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert words in message
    assert pushed.reference in message
    _cache_is_empty(node_dirs)
    assert not pod.target.exists()
    assert _rejections(driver, reason) == 1


def test_refused_in_every_format_and_from_a_url(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str, files: tuple[Path, FileServer]
) -> None:
    directory, server = files
    broken = _truncated()
    (directory / "raw.wasm").write_bytes(broken)
    (directory / "module.gz").write_bytes(gzip.compress(broken))
    (directory / "module.tgz").write_bytes(gzip.compress(make_layer_tar({"plugin.wasm": broken})))
    digest = hashlib.sha256(broken).hexdigest()
    urls = [
        push_compat_image(registry, unique_repo, "compat", broken).reference,
        *(
            f"http://{server.host}/{name}#{digest}"
            for name in ("raw.wasm", "module.gz", "module.tgz")
        ),
    ]
    settings = node_dirs.settings(insecure_registries=frozenset({registry.host, server.host}))
    with in_process(node_dirs, settings) as (_, kubelet):
        for url in urls:
            attributes = {"url": url.split("#")[0]}
            if "#" in url:
                attributes["sha256"] = digest
            code, message = rpc_error(
                lambda: kubelet.publish(kubelet.new_pod(), attributes)  # noqa: B023
            )
            assert code == grpc.StatusCode.FAILED_PRECONDITION, url
            assert "unexpected end-of-file" in message, url
            _cache_is_empty(node_dirs)


def test_abi_any_accepts_a_plain_module_and_proxy_wasm_still_refuses_it_from_the_cache(
    served: tuple[Driver, Kubelet], registry: Registry, unique_repo: str, node_dirs: NodeDirs
) -> None:
    driver, kubelet = served
    module = make_module(2048, "e2e-any", proxy_wasm=False)
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    pod = kubelet.new_pod()
    kubelet.publish(pod, {"url": pushed.reference, "abi": "any"})
    assert (pod.target / "plugin.wasm").read_bytes() == module
    facts = json.loads((node_dirs.root / "facts" / f"{pushed.module_sha256}.json").read_text())
    assert facts["validator"] == validator()
    assert facts["facts"]["abi_versions"] == []

    # The same module, now cached, judged for the default ABI: refused, and left for `any`.
    code, message = rpc_error(lambda: kubelet.publish(kubelet.new_pod(), {"url": pushed.reference}))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert message.startswith(f"{pushed.reference} is not a proxy-wasm module Envoy can load")
    assert "exports no proxy_abi_version_*" in message
    assert (node_dirs.root / "modules" / pushed.module_sha256 / "plugin.wasm").is_file()
    assert _rejections(driver, "no_abi_export") == 1


def test_a_structurally_broken_module_is_refused_even_for_any(
    served: tuple[Driver, Kubelet], registry: Registry, unique_repo: str, node_dirs: NodeDirs
) -> None:
    _, kubelet = served
    pushed = push_wasm_artifact(registry, unique_repo, "v1", _truncated())
    code, message = rpc_error(
        lambda: kubelet.publish(kubelet.new_pod(), {"url": pushed.reference, "abi": "any"})
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "unexpected end-of-file" in message
    _cache_is_empty(node_dirs)


def test_default_abi_any_on_the_node(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    settings = node_dirs.settings(
        insecure_registries=frozenset({registry.host}), default_abi=Abi.ANY
    )
    module = make_module(1024, "e2e-node-any", proxy_wasm=False)
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    with in_process(node_dirs, settings) as (_, kubelet):
        pod = kubelet.new_pod()
        kubelet.publish(pod, {"url": pushed.reference})
        assert (pod.target / "plugin.wasm").read_bytes() == module
        code, _ = rpc_error(
            lambda: kubelet.publish(
                kubelet.new_pod(), {"url": pushed.reference, "abi": "proxy-wasm"}
            )
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_a_module_cached_before_validation_is_validated_on_first_use(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    # What an older csi-wasm left: modules/<hex>/plugin.wasm (only its header was
    # checked) and no facts. One valid, one cut short.
    good, bad = make_module(4096, "e2e-old-good"), _truncated()
    for module in (good, bad):
        directory = node_dirs.root / "modules" / hashlib.sha256(module).hexdigest()
        directory.mkdir(parents=True)
        (directory / "plugin.wasm").write_bytes(module)
    settings = node_dirs.settings(insecure_registries=frozenset({"127.0.0.1:9"}))
    with in_process(node_dirs, settings) as (_, kubelet):
        # URL sources named by sha256 are served from the cache without the network.
        url = "http://127.0.0.1:9/gone.wasm"
        pod = kubelet.new_pod()
        kubelet.publish(pod, {"url": url, "sha256": hashlib.sha256(good).hexdigest()})
        assert (pod.target / "plugin.wasm").read_bytes() == good
        bad_hex = hashlib.sha256(bad).hexdigest()
        code, message = rpc_error(
            lambda: kubelet.publish(kubelet.new_pod(), {"url": url, "sha256": bad_hex})
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert f"{url} is not a valid WebAssembly module" in message
    facts = node_dirs.root / "facts"
    assert sorted(p.name for p in facts.iterdir()) == sorted(
        f"{hashlib.sha256(m).hexdigest()}.json" for m in (good, bad)
    )


_MUTATION = st.tuples(
    st.sampled_from(["flip", "cut", "insert"]),
    st.floats(0, 1, exclude_max=True),
    st.binary(min_size=1, max_size=6),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(mutations=st.lists(_MUTATION, min_size=1, max_size=3), abi=st.sampled_from(Abi))
def test_mutated_modules_are_served_or_refused_never_internal(
    served: tuple[Driver, Kubelet],
    registry: Registry,
    unique_repo: str,
    mutations: list[tuple[str, float, bytes]],
    abi: Abi,
) -> None:
    _, kubelet = served
    module = bytearray(make_module(600, "e2e-mutate"))
    for action, where_fraction, data in mutations:
        where = int(where_fraction * len(module))
        if action == "flip":
            module[where] ^= data[0] or 1
        elif action == "cut":
            del module[where : where + len(data) * 8]
        else:
            module[where:where] = data
        if not module:
            module = bytearray(b"\0")
    pushed = push_wasm_artifact(registry, unique_repo, secrets.token_hex(6), bytes(module))
    pod = kubelet.new_pod()
    try:
        kubelet.publish(pod, {"url": pushed.reference, "abi": abi.value})
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    else:
        assert (pod.target / "plugin.wasm").read_bytes() == module


def test_the_demo_filter_is_served_in_both_packagings(
    served: tuple[Driver, Kubelet], registry: Registry, unique_repo: str
) -> None:
    # A real proxy-wasm filter (AssemblyScript SDK, ABI 0.2.0), built by demo/filter/build.sh.
    _, kubelet = served
    demo = (
        Path(__file__).resolve().parents[2] / "demo" / "filter" / "add-header.wasm"
    ).read_bytes()
    for pushed in (
        push_wasm_artifact(registry, unique_repo, "artifact", demo),
        push_compat_image(registry, unique_repo, "compat", demo),
    ):
        pod = kubelet.new_pod()
        kubelet.publish(pod, {"url": pushed.reference})
        assert (pod.target / "plugin.wasm").read_bytes() == demo
