"""``csi-wasm inspect REF|URL|FILE``: what the driver would make of a module, and why.

A reference is pulled by the driver's own :class:`~csi_wasm.puller.Puller` (its
registry client, mirrors, credentials and signature gate for the ``--verify-*`` node
policy) into a temporary store that is removed afterwards, so formats, index
selection, digest and signature checks and error messages are the driver's. The module
is then judged as a volume asking for ``--abi`` would be.

What is inspected:

* ``oci://REF`` or a bare ``REF``: as the volume attribute ``url`` takes it;
* ``https://...``: downloaded as the driver does and unpacked (Wasm, gzip or tarball);
  with a ``#sha256=<hex>`` suffix the download goes through the puller and the sha256
  is checked, as a volume's ``sha256`` attribute would be;
* a file: a path that exists, starts with ``/``, ``./`` or ``../``, or ends in ``.wasm``;
  unpacked like an https body.

Exit status: 0 when the driver would serve the module, 1 when it would refuse it (the
message on stderr), 2 for a usage error (see :mod:`csi_wasm.tools.common`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from csi_wasm.access import AccessRecords
from csi_wasm.attributes import HttpSource, ModuleRequest, PullPolicy, parse_source
from csi_wasm.cache.store import MODULE_FILE, ModuleStore
from csi_wasm.deadline import Deadline
from csi_wasm.errors import CsiWasmError, InvalidArgument
from csi_wasm.formats.body import unpack_body
from csi_wasm.mirrors import Mirrors, parse_mirror
from csi_wasm.prefetch import parse_prefetch_flag
from csi_wasm.puller import Puller, Resolution
from csi_wasm.reference import Reference
from csi_wasm.registry import HttpSourceClient, Keychain, RegistryClient, display_url
from csi_wasm.settings import (
    DEFAULT_MAX_MODULE_BYTES,
    DEFAULT_PULL_TIMEOUT_SECONDS,
    PullSettings,
    VerifySettings,
)
from csi_wasm.tools.common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, RegistryAccess, say_error
from csi_wasm.verify import Abi, ModuleFacts, judge, read_facts
from csi_wasm.verify.gate import SignatureGate
from csi_wasm.verify.keys import PublicKey, load_keys
from csi_wasm.verify.policy import Policy, load_policy

__all__ = ["JSON_FIELDS", "InspectOptions", "Report", "inspect", "inspect_command"]

COMMAND = "inspect"

# The keys of `inspect --json`, in order; documented in the README. Never rename one.
JSON_FIELDS = (
    "source",
    "kind",
    "format",
    "mirror",
    "index_digests",
    "manifest_digest",
    "module_digest",
    "size",
    "abi_versions",
    "exports",
    "imports",
    "structure_error",
    "abi",
    "serve",
    "code",
    "message",
)


@dataclass(frozen=True)
class InspectOptions:
    target: str
    access: RegistryAccess = field(default_factory=RegistryAccess)
    mirrors: tuple[str, ...] = ()  # SOURCE=MIRROR[/PREFIX], as --registry-mirror
    abi: Abi = Abi.PROXY_WASM
    as_json: bool = False
    max_module_bytes: int = DEFAULT_MAX_MODULE_BYTES
    timeout: float = DEFAULT_PULL_TIMEOUT_SECONDS
    verify: VerifySettings = field(default_factory=VerifySettings)  # as serve's --verify-*


@dataclass
class Report:
    """Everything ``inspect`` found; ``code``/``message`` are set when serve would refuse."""

    source: str
    kind: str  # "oci", "url" or "file"
    abi: Abi
    where: str  # how the driver's messages name the module
    format: str | None = None  # a Format.name for oci, "url" or "file" otherwise
    mirror: str | None = None  # the mirror that served the manifest, None for the source
    index_digests: tuple[str, ...] = ()
    manifest_digest: str | None = None
    module_digest: str | None = None
    facts: ModuleFacts | None = None
    code: str | None = None
    message: str | None = None

    def judge(self, module_path: Path) -> None:
        """Read the module's facts and judge them as the driver does (InvalidModule)."""
        self.facts = read_facts(module_path)
        judge(self.facts, self.abi, self.where)

    @property
    def serve(self) -> bool:
        return self.message is None and self.facts is not None

    def resolved(self, resolution: Resolution) -> None:
        """The puller's ``on_resolved`` hook: the format and digests of the pull."""
        self.format = resolution.format
        *indexes, self.manifest_digest = resolution.manifest_digests
        self.index_digests = tuple(indexes)
        routed = resolution.route.registry != resolution.reference.registry
        self.mirror = resolution.route.registry if routed else None

    def refuse(self, code: str | None, message: str) -> None:
        self.code, self.message = code, message

    def to_json(self) -> dict[str, Any]:
        facts = self.facts.to_json() if self.facts is not None else {}
        document = {
            "source": self.source,
            "kind": self.kind,
            "format": self.format,
            "mirror": self.mirror,
            "index_digests": list(self.index_digests),
            "manifest_digest": self.manifest_digest,
            "module_digest": self.module_digest,
            "size": facts.get("size"),
            "abi_versions": facts.get("abi_versions", []),
            "exports": facts.get("exports", []),
            "imports": facts.get("imports", []),
            "structure_error": facts.get("structure_error"),
            "abi": self.abi.value,
            "serve": self.serve,
            "code": self.code,
            "message": self.message,
        }
        assert tuple(document) == JSON_FIELDS
        return document

    def to_text(self) -> str:
        lines = [f"source:     {self.source}", f"format:     {self.format or '-'}"]
        if self.mirror:
            lines.append(f"mirror:     {self.mirror}")
        lines += [f"index:      {digest}" for digest in self.index_digests]
        if self.manifest_digest:
            lines.append(f"manifest:   {self.manifest_digest}")
        if self.module_digest:
            lines.append(f"module:     {self.module_digest}")
            if self.kind == "url":  # what a volume naming this url must say
                lines.append(f'sha256:     "{self.module_digest.removeprefix("sha256:")}"')
        facts = self.facts
        if facts is not None:
            lines.append(f"size:       {facts.size} bytes")
            lines.append(f"abi:        {', '.join(facts.abi_versions) or 'none'}")
            if facts.structure_error:
                lines.append(f"invalid:    {facts.structure_error}")
            lines.append(f"exports:    {len(facts.exports)}")
            lines += [f"  {kind:<7} {name}" for name, kind in facts.exports]
            lines.append(f"imports:    {len(facts.imports)}")
            lines += [f"  {kind:<7} {module}.{name}" for module, name, kind in facts.imports]
        if self.serve:
            lines.append(f"verdict:    serve (abi: {self.abi.value})")
        else:
            code = f"{self.code}: " if self.code else ""
            lines.append(f"verdict:    refuse (abi: {self.abi.value}): {code}{self.message}")
        return "\n".join(lines) + "\n"


def inspect_command(options: InspectOptions) -> int:
    """Run ``csi-wasm inspect``: print the report, return the exit status."""
    try:
        report = inspect(options)
    except ValueError as error:
        say_error(COMMAND, str(error))
        return EXIT_USAGE
    if options.as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        sys.stdout.write(report.to_text())
    sys.stdout.flush()
    if not report.serve:
        say_error(COMMAND, report.message or "refused")
        return EXIT_REFUSED
    return EXIT_OK


def inspect(options: InspectOptions) -> Report:
    """Resolve and judge ``options.target``; ValueError for a usage error."""
    target = options.target.strip()
    if _is_file(target):
        report = Report(target, "file", options.abi, target, format="file")
        _run(report, lambda tmp: _unpack_file(Path(target), tmp, options, report))
        return report
    source, sha256 = _parse_target(target)
    node = _Node.load(options)
    if isinstance(source, HttpSource):
        shown = display_url(source.url)
        report = Report(shown, "url", options.abi, shown, format="url")
    else:
        report = Report(f"oci://{source}", "oci", options.abi, str(source))
    _run(report, lambda tmp: node.pull(source, sha256, report, tmp))
    return report


@dataclass(frozen=True)
class _Node:
    """What a node brings to a pull besides the network: credentials, mirrors, policy."""

    options: InspectOptions
    keychain: Keychain | None
    mirrors: Mirrors
    keys: dict[str, PublicKey]
    policy: Policy

    @classmethod
    def load(cls, options: InspectOptions) -> _Node:
        """Read the flags' files; ValueError (a usage error) naming the one that is bad."""
        mirrors = Mirrors(parse_mirror(text) for text in options.mirrors)
        keys = load_keys(options.verify.keys)
        verify = options.verify
        policy_file = Path(verify.policy) if verify.policy else None
        policy = load_policy(policy_file, keys, unmatched_deny=verify.unmatched_deny)
        return cls(options, options.access.keychain(), mirrors, keys, policy)

    def pull(
        self, source: Reference | HttpSource, sha256: str | None, report: Report, tmp: Path
    ) -> None:
        """Pull into a store under ``tmp`` as serve would, then judge what came."""
        options = self.options
        with RegistryClient(options.access.options()) as client:
            store = ModuleStore(tmp / "cache")
            store.prepare()
            gate = SignatureGate(self.keys, self.policy, store, client)
            if isinstance(source, HttpSource) and sha256 is None:
                # An enforced signature rule refuses any https URL, as serve does.
                gate.requirement(ModuleRequest(source, None, PullPolicy.ALWAYS))
                _download(client, source, tmp, options, report)
                return
            access = AccessRecords(tmp / "access")
            access.prepare()
            # The puller refuses only what no host can load; the ABI is judged here, once
            # the facts are read, so a refused module's exports and imports are shown too.
            settings = PullSettings(
                max_module_bytes=options.max_module_bytes,
                pull_timeout=options.timeout,
                default_abi=Abi.ANY,
            )
            puller = Puller(
                store,
                client,
                settings,
                access,
                node_keychain=self.keychain,
                mirrors=self.mirrors,
                on_resolved=report.resolved,
                signatures=gate,
            )
            module = puller.get(
                ModuleRequest(source, sha256, PullPolicy.ALWAYS), None, options.timeout
            )
            try:
                report.module_digest = f"sha256:{module.digest}"
                report.manifest_digest = module.manifest_digest or report.manifest_digest
                report.judge(module.path / MODULE_FILE)
            finally:
                puller.release(module)


def _run(report: Report, work: Callable[[Path], None]) -> None:
    """``work(tmp)`` in a temporary directory; its failures become the report's verdict."""
    try:
        with tempfile.TemporaryDirectory(prefix="csi-wasm-inspect-") as tmp:
            work(Path(tmp))
    except CsiWasmError as error:
        report.refuse(error.code, error.message)
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        report.refuse(None, f"{where}{error.strerror or error}")


def _is_file(target: str) -> bool:
    # "filter.wasm" would otherwise be docker.io/library/filter.wasm: a typo would pull.
    if "://" in target:
        return False
    looks_like_path = target.startswith(("/", "./", "../")) or target.endswith(".wasm")
    return looks_like_path or os.path.lexists(target)


def _parse_target(target: str) -> tuple[Reference | HttpSource, str | None]:
    """The source and sha256 a volume with ``url: target`` would ask for; ValueError if bad."""
    try:
        if "#sha256=" in target:
            request = parse_prefetch_flag(target).request()  # the --prefetch syntax
            return request.source, request.sha256
        return parse_source(target), None
    except InvalidArgument as error:
        raise ValueError(error.message) from None
    except ValueError as error:
        raise ValueError(str(error).removeprefix("--prefetch ")) from None


def _download(
    client: RegistryClient, source: HttpSource, tmp: Path, options: InspectOptions, report: Report
) -> None:
    """An https module without a sha256: fetched as the driver fetches, to learn it."""
    body_path = tmp / "body"
    with body_path.open("w+b") as body:
        HttpSourceClient.from_registry_client(client).fetch(
            source.url, body, Deadline.after(options.timeout), limit=options.max_module_bytes
        )
        body.seek(0)
        _unpack(body, tmp, options, report)


def _unpack_file(path: Path, tmp: Path, options: InspectOptions, report: Report) -> None:
    with path.open("rb") as body:
        _unpack(body, tmp, options, report)


def _unpack(body: BinaryIO, tmp: Path, options: InspectOptions, report: Report) -> None:
    """The module in an https body or a file (Wasm, gzip or tarball), as the driver unpacks it."""
    module_path = tmp / MODULE_FILE
    with module_path.open("wb") as out:
        module_hex, _ = unpack_body(body, out, limit=options.max_module_bytes, where=report.where)
    report.module_digest = f"sha256:{module_hex}"
    report.judge(module_path)
