"""Get a module into the store: from the cache if allowed, else from its registry.

Four rules shape this module:

* One download per module per node. Requests for the same module (same source,
  sha256 and credentials) join the pull in flight rather than starting their own.
* A pull outlives the RPC that started it. kubelet gives NodePublishVolume two
  minutes; a large module on a slow registry may need longer. The pull runs on its
  own thread under its own deadline (``--pull-timeout``); an RPC that runs out of
  time returns DEADLINE_EXCEEDED, and kubelet's retry joins the same pull.
* Waiting holds no thread. :meth:`Puller.find` (local files only) returns a lookup,
  :meth:`Puller.ready` awaits the network on the caller's event loop, and
  :meth:`Puller.collect` turns the lookup into the pinned module; :meth:`Puller.get`
  does all three for a caller that has a thread to block.
* A private module stays private. The cache is shared by every pod on the node, so
  a cached module from a repository that needed credentials is only served to a
  request whose credentials were verified recently (see :mod:`csi_wasm.access`);
  otherwise one manifest request checks them first.

Credentials: the pod's pull secret for a registry, else the node's
(``--docker-config``). Node credentials are every pod's, so a module they fetch
counts as available to all pods, as kubelet treats images pulled with them.

Pins: :meth:`Puller.get` returns a module *pinned* in the store (see
:mod:`csi_wasm.cache.store`); the caller calls :meth:`Puller.release` once a volume record
names it, or on failure. A finished download holds its own pin until every request
waiting on it has taken one, so garbage collection cannot come between the commit
and the mount. When the disk fills up during a pull, the collector is asked for
room and the pull is retried once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, TypeVar

from csi_wasm.access import AccessRecords
from csi_wasm.attributes import HttpSource, ModuleRequest, PullPolicy
from csi_wasm.cache.store import MODULE_FILE, ModuleStore, storage_error
from csi_wasm.deadline import Deadline
from csi_wasm.errors import (
    CsiWasmError,
    DeadlineExceeded,
    DigestMismatch,
    FailedPrecondition,
    HostUnavailable,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from csi_wasm.faults import disk_faults
from csi_wasm.formats import (
    SNIFF_BYTES,
    Descriptor,
    Unpack,
    check_index_hop,
    check_wasm_header,
    choose_manifest,
    is_index,
    mediatypes,
    parse_image_manifest,
    select_format,
    sniff_unpack,
)
from csi_wasm.formats.body import unpack_body
from csi_wasm.formats.tarball import extract_plugin, is_disk_full
from csi_wasm.formats.wasm import HEADER_SIZE
from csi_wasm.mirrors import MirrorHealth, Mirrors
from csi_wasm.progress import ProgressLog
from csi_wasm.reference import Reference
from csi_wasm.registry import (
    Credentials,
    HttpSourceClient,
    Keychain,
    Manifest,
    RegistryClient,
    display_url,
)
from csi_wasm.registry.transport import host_of
from csi_wasm.settings import PullSettings
from csi_wasm.verify import Abi, InvalidModule, ModuleFacts, judge, read_facts
from csi_wasm.verify.gate import SignatureGate
from csi_wasm.verify.policy import NO_REQUIREMENT, Requirement
from csi_wasm.verify.signatures import Outcome
from csi_wasm.workers import Workers, settled

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class PulledModule:
    digest: str  # sha256 hex of plugin.wasm, the store key
    path: Path  # the module directory to mount
    size: int
    manifest_digest: str | None
    from_cache: bool
    warning: str | None = None  # served despite a failed signature check (a warn rule)


@dataclass(frozen=True)
class Resolution:
    """What a pull from a registry found, told before the module is downloaded.

    For ``csi-wasm inspect``, which reports it even when the module is then refused.
    """

    reference: Reference
    route: Reference  # the reference as pulled: itself or a mirror's rewrite of it
    manifest_digests: tuple[str, ...]  # indexes first, the image manifest last
    format: str  # Format.name
    layer: Descriptor  # the layer holding the module


@dataclass
class _Pull:
    """One download in flight, shared by every request that wants it."""

    source: Reference | HttpSource
    sha256: str | None
    keychain: Keychain | None = field(repr=False)
    requester: Credentials | None = field(repr=False)
    abi: Abi
    future: Future[PulledModule] = field(default_factory=Future)
    started: float = field(default_factory=time.monotonic)
    bytes_done: int = 0
    bytes_total: int = 0
    host: str = ""  # where the download runs now (a mirror or the source); for the log
    # Guarded by Puller._lock: requests waiting on the future, whether the pull has
    # finished, and whether the pull's own pin on its module was handed back.
    waiters: int = 0
    finished: bool = False
    released: bool = False
    requirement: Requirement = NO_REQUIREMENT  # signatures the module must carry

    @property
    def shown(self) -> str:
        """The source as messages name it (a URL without its query)."""
        if isinstance(self.source, HttpSource):
            return display_url(self.source.url)
        return str(self.source)

    def progress(self, done: int) -> None:
        self.bytes_done = done

    def describe(self) -> str:
        elapsed = time.monotonic() - self.started
        if self.bytes_total:
            return (
                f"{self.bytes_done / MIB:.1f} of {self.bytes_total / MIB:.1f} MiB "
                f"after {elapsed:.0f} s"
            )
        return f"resolving for {elapsed:.0f} s"


@dataclass(frozen=True)
class _Check:
    """A cached private module's access check: one manifest request with these credentials."""

    reference: Reference
    keychain: Keychain | None = field(repr=False)
    requester: Credentials | None = field(repr=False)


@dataclass(frozen=True)
class Lookup:
    """What :meth:`Puller.find` found: a cached module (pinned, maybe still to be
    checked), or the pull in flight it joined."""

    module: PulledModule | None = None
    check: _Check | None = None
    pull: _Pull | None = None
    warning: str | None = None  # for the module, whatever the pull says (a URL's)

    @property
    def waits(self) -> bool:
        """Whether :meth:`Puller.ready` has anything to wait for (the network)."""
        return self.check is not None or self.pull is not None


class PullObserver(Protocol):
    """Told about cache lookups and finished pulls (metrics)."""

    def cache_lookup(self, hit: bool) -> None: ...
    def pull_finished(self, result: str, seconds: float, size: int) -> None: ...
    def module_rejected(self, reason: str) -> None: ...


class CacheSpace(Protocol):
    """Makes room in the cache (the collector, :class:`csi_wasm.cache.gc.CacheCollector`)."""

    def reserve(self, incoming: int) -> None:
        """Evict unused modules so that ``incoming`` more bytes fit the cache budget."""

    def free_disk(self, needed: int) -> int:
        """Evict unused modules until ``needed`` bytes are free on disk; returns bytes freed."""


PullKey = tuple[str, str | None, str | None, Abi]
T = TypeVar("T")

# A mirror that fails like this is skipped for the next route; anything else
# (a digest mismatch, a module that is not Wasm) is an answer, not an outage.
_TRY_NEXT_ROUTE = (NotFound, PermissionDenied, Unavailable)


class Puller:
    def __init__(
        self,
        store: ModuleStore,
        registry: RegistryClient,
        settings: PullSettings,
        access: AccessRecords,
        *,
        node_keychain: Keychain | None = None,
        mirrors: Mirrors | None = None,
        mirror_health: MirrorHealth | None = None,
        max_parallel_pulls: int = 4,
        observer: PullObserver | None = None,
        space: CacheSpace | None = None,
        progress: ProgressLog | None = None,
        signatures: SignatureGate | None = None,
        on_resolved: Callable[[Resolution], None] | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._http = HttpSourceClient.from_registry_client(registry)
        self._settings = settings
        self._access = access
        self._node_keychain = node_keychain
        self._mirrors = mirrors or Mirrors()
        self._mirror_health = mirror_health or MirrorHealth(self._mirrors.hosts())
        self._inflight: dict[PullKey, _Pull] = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_parallel_pulls)
        self._observer = observer
        self._space = space
        self._progress = progress or ProgressLog()
        self._signatures = signatures
        self._on_resolved = on_resolved

    def get(
        self, request: ModuleRequest, pod_keychain: Keychain | None, wait: float
    ) -> PulledModule:
        """The module for ``request``, waiting at most ``wait`` seconds for a download.

        The module is pinned: call :meth:`release` when done with it. Blocks the calling
        thread; code on an event loop uses :meth:`find`, :meth:`ready`, :meth:`collect`.
        """
        return asyncio.run(self.get_async(request, pod_keychain, wait, Workers.inline()))

    async def get_async(
        self, request: ModuleRequest, pod_keychain: Keychain | None, wait: float, work: Workers
    ) -> PulledModule:
        lookup = await work.local.run(self.find, request, pod_keychain)
        try:
            await self.ready(lookup, wait, work)
        except BaseException:
            await work.local.run(self.abandon, lookup)
            raise
        return await work.local.run(self.collect, lookup)

    def find(self, request: ModuleRequest, pod_keychain: Keychain | None) -> Lookup:
        """Look in the cache, else join or start the pull; touches only local files.

        Hand the lookup to :meth:`ready`, then to :meth:`collect` or :meth:`abandon`.
        """
        with disk_faults():  # the cache's faults are named (the pull's: see _run)
            return self._find(request, pod_keychain)

    def _find(self, request: ModuleRequest, pod_keychain: Keychain | None) -> Lookup:
        source = request.source
        requirement = self._requirement(request)
        abi = request.abi or self._settings.default_abi
        if isinstance(source, HttpSource):
            # Named by its sha256 (required for URLs): the cache always answers first.
            assert request.sha256 is not None
            cached = self._pinned(
                request.sha256, None, from_cache=True, abi=abi, where=display_url(source.url)
            )
            self._observe_lookup(cached)
            # Enforced demands were refused above; warn-only ones cannot be checked either.
            warning = _unverifiable_url(source, requirement)
            if cached is not None:
                return Lookup(module=cached, warning=warning)
            pull = self._join_or_start(source, request.sha256, None, None, abi)
            return Lookup(pull=pull, warning=warning)
        keychain = _merge(pod_keychain, self._node_keychain)
        requester = pod_keychain.for_registry(source.registry) if pod_keychain else None
        if request.pull_policy is PullPolicy.IF_NOT_PRESENT:
            cached = self._keep_if_signed(self.cached(source, request.sha256, abi), requirement)
            self._observe_lookup(cached)
            if cached is not None:
                if self._access.may_serve(source.name, requester):
                    return Lookup(module=cached)
                return Lookup(module=cached, check=_Check(source, keychain, requester))
        pull = self._join_or_start(source, request.sha256, keychain, requester, abi, requirement)
        return Lookup(pull=pull)

    def _requirement(self, request: ModuleRequest) -> Requirement:
        if self._signatures is not None:
            return self._signatures.requirement(request)
        if request.verify_required or request.verify_keys:
            raise InvalidArgument(
                "volume attributes 'verify'/'verifyKeys' ask for a signature, but this node "
                "checks none (no --verify-key)"
            )
        return NO_REQUIREMENT

    def _keep_if_signed(
        self, cached: PulledModule | None, requirement: Requirement
    ) -> PulledModule | None:
        """A cached module without the verdicts its requirement needs is a miss: verify first."""
        if cached is None or self._signatures is None:
            return cached
        if self._signatures.satisfied(cached.manifest_digest, requirement):
            return cached
        self.release(cached)
        return None

    async def ready(self, lookup: Lookup, wait: float, work: Workers) -> None:
        """Wait for what the lookup still needs from the network: no thread waits on a pull.

        Raises only when a cached private module's access check fails.
        """
        if lookup.check is not None:
            await work.network.run(self._authorize, lookup.check, wait)
        if lookup.pull is not None:
            await settled(lookup.pull.future, wait)

    def collect(self, lookup: Lookup) -> PulledModule:
        """The pinned module; DEADLINE_EXCEEDED if its pull is still running, or its error."""
        with disk_faults():
            return self._collect(lookup)

    def _collect(self, lookup: Lookup) -> PulledModule:
        if lookup.pull is None:
            assert lookup.module is not None
            return _warned(lookup.module, lookup.warning)
        pull = lookup.pull
        try:
            if not pull.future.done():
                raise DeadlineExceeded(
                    f"still pulling {pull.shown} ({pull.describe()}); the pull continues "
                    "and kubelet's retry will pick it up"
                )
            result = pull.future.result()
            # The pull's own pin still holds the module, so this cannot miss it
            # (unless another process, `csi-wasm gc` or `fsck`, removed it).
            if not self._store.pin(result.digest):
                raise _vanished(result.digest)
            return _warned(result, lookup.warning)
        finally:
            self._leave(pull)

    def abandon(self, lookup: Lookup) -> None:
        """Let go of a lookup that will not be collected."""
        if lookup.module is not None:
            self.release(lookup.module)
        if lookup.pull is not None:
            self._leave(lookup.pull)

    def release(self, module: PulledModule) -> None:
        """Unpin a module :meth:`get` returned: from now on only volume records keep it."""
        self._store.unpin(module.digest)

    def unused(self, module_digest: str) -> None:
        """A volume of this module went away: its time unused counts from now."""
        self._store.touch(module_digest)

    def _leave(self, pull: _Pull) -> None:
        """One waiter is done; the last one after the pull finished hands back its pin."""
        with self._lock:
            pull.waiters -= 1
            release = pull.finished and pull.waiters == 0 and not pull.released
            pull.released = pull.released or release
        if release:
            self._release_pull(pull)

    def _release_pull(self, pull: _Pull) -> None:
        if pull.future.exception() is None:
            self.release(pull.future.result())

    def _observe_lookup(self, cached: PulledModule | None) -> None:
        if self._observer is not None:
            self._observer.cache_lookup(cached is not None)

    def cached(
        self, reference: Reference, sha256: str | None, abi: Abi | None = None
    ) -> PulledModule | None:
        """The stored module for a reference, pinned, without touching the network.

        With ``abi``, a stored module that does not pass for it is refused
        (:class:`InvalidModule`). Call :meth:`release` when done with it.
        """
        manifest_digest = reference.digest or self._store.manifest_for_reference(str(reference))
        module_hex = None
        if manifest_digest is not None:
            module_hex = self._store.module_for_manifest(manifest_digest)
        if module_hex is None and sha256 is not None and self._store.has_module(sha256):
            module_hex, manifest_digest = sha256, None
        if module_hex is None:
            return None
        if sha256 is not None and sha256 not in (module_hex, _hex(manifest_digest or "")):
            return None  # the tag moved or the sha256 is wrong: let a pull decide
        return self._pinned(
            module_hex, manifest_digest, from_cache=True, abi=abi, where=str(reference)
        )

    def _authorize(self, check: _Check, wait: float) -> None:
        """Serve a cached module only to whom the registry would serve it (a network call)."""
        deadline = Deadline.after(max(0.001, min(wait, self._settings.pull_timeout)))
        self._first_route(
            check.reference,
            lambda route: self._registry.get_manifest(
                route, check.keychain, deadline, mediatypes.MANIFEST_ACCEPT
            ),
        )
        self._access.record_pull(check.reference.name, check.requester)

    def _first_route(self, reference: Reference, attempt: Callable[[Reference], T]) -> T:
        """``attempt`` on each mirror of the reference's registry, then on the registry.

        A mirror marked down is skipped without a request (see :class:`MirrorHealth`).
        """
        *mirrored, source = self._mirrors.candidates(reference)
        health = self._mirror_health
        for route in mirrored:
            host = route.registry
            if not health.take(host):
                continue
            try:
                result = attempt(route)
            except HostUnavailable as error:
                health.failed(host, error.message)
                continue
            except _TRY_NEXT_ROUTE as error:
                health.answered(host)
                log.info(
                    "mirror failed, trying the next route",
                    extra={"fields": {"mirror": host, "error": str(error)}},
                )
                continue
            except BaseException:
                health.abandoned(host)
                raise
            health.answered(host)
            return result
        return attempt(source)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def waiting(self) -> int:
        """Requests waiting on the pulls in flight."""
        with self._lock:
            return sum(pull.waiters for pull in self._inflight.values())

    # the pull itself

    def _join_or_start(
        self,
        source: Reference | HttpSource,
        sha256: str | None,
        keychain: Keychain | None,
        requester: Credentials | None,
        abi: Abi,
        requirement: Requirement = NO_REQUIREMENT,
    ) -> _Pull:
        # Requests with other credentials never share a download: that would hand a
        # module fetched with one pod's secret to a pod without it. Nor do requests
        # that need other signatures (one pull checks one requirement), or another ABI
        # (a pull commits only a module that passes for its own).
        shown = f"{source} verify[{requirement.token()}]" if requirement else str(source)
        key: PullKey = (shown, sha256, requester.fingerprint() if requester else None, abi)
        with self._lock:
            pull = self._inflight.get(key)
            if pull is not None:
                pull.waiters += 1
                return pull
            pull = _Pull(
                source, sha256, keychain, requester, abi, waiters=1, requirement=requirement
            )
            self._inflight[key] = pull
        thread = threading.Thread(
            target=self._run,
            args=(key, pull),
            name=f"pull {key[0][:100]}",
            daemon=True,  # a SIGTERM must not wait for downloads
        )
        thread.start()
        return pull

    def _run(self, key: PullKey, pull: _Pull) -> None:
        started = time.monotonic()
        self._progress.watch(pull)
        outcome: PulledModule | BaseException
        try:
            with self._slots:
                deadline = Deadline.after(self._settings.pull_timeout)
                outcome = self._fetch_making_room(pull, deadline)  # pinned: see _leave
        except BaseException as caught:  # handed to every waiter
            outcome = storage_error(caught) if isinstance(caught, OSError) else caught
        if isinstance(outcome, BaseException):
            code = outcome.code.lower() if isinstance(outcome, CsiWasmError) else "internal"
            self._finished(started, code, 0)
        else:
            self._finished(started, "success", pull.bytes_done)
        self._progress.forget(pull)
        with self._lock:
            # Finished and resolved in one step under the lock each waiter's _leave takes,
            # so whoever is last out (a waiter or this thread) hands back the pull's pin.
            self._inflight.pop(key, None)
            pull.finished = True
            if isinstance(outcome, BaseException):
                pull.future.set_exception(outcome)
            else:
                pull.future.set_result(outcome)
            release = pull.waiters == 0 and not pull.released
            pull.released = pull.released or release
        if release:
            self._release_pull(pull)

    def _fetch_making_room(self, pull: _Pull, deadline: Deadline) -> PulledModule:
        """Fetch; if the disk fills up, ask the collector for room and try once more."""
        try:
            return self._fetch(pull, deadline)
        except (OSError, ResourceExhausted) as error:
            if self._space is None or not _disk_full(error):
                raise
            needed = 2 * max(pull.bytes_total, pull.bytes_done) + _ROOM_SLACK
            freed = self._space.free_disk(needed)
            log.info(
                "cache disk full during a pull; garbage collected",
                extra={"fields": {"url": pull.shown, "needed": needed, "freed": freed}},
            )
            if freed <= 0:
                raise ResourceExhausted(
                    "the module cache disk is full and no unused module can be evicted; "
                    "free space under --root, lower --cache-max-bytes or unpublish modules"
                ) from None
            pull.bytes_done = 0
            return self._fetch(pull, deadline)

    def _fetch(self, pull: _Pull, deadline: Deadline) -> PulledModule:
        source = pull.source
        if isinstance(source, HttpSource):
            return self._pull_url(pull, source, deadline)
        result = self._first_route(source, lambda route: self._pull(pull, route, source, deadline))
        try:
            self._access.record_pull(source.name, pull.requester)
        except BaseException:
            self.release(result)
            raise
        return result

    def _pull_url(self, pull: _Pull, source: HttpSource, deadline: Deadline) -> PulledModule:
        """Download a module named by URL and sha256; the body may be Wasm, gzip or a tarball."""
        where = display_url(source.url)
        pull.host = host_of(source.url)
        limit = self._settings.max_module_bytes
        assert pull.sha256 is not None
        with (
            self._store.temp_file() as (_, body_fd),
            os.fdopen(body_fd, "w+b", closefd=False) as body,
        ):
            self._http.fetch(source.url, body, deadline, limit=limit, progress=pull.progress)
            body.flush()
            body.seek(0)
            with self._store.temp_file() as (module_path, module_fd):
                with os.fdopen(module_fd, "wb", closefd=False) as out:
                    module_hex, _ = unpack_body(body, out, limit=limit, where=where)
                    out.flush()
                _check_sha256(pull.sha256, module_hex, (), where)
                self._commit(module_path, module_hex, pull.abi, where)
        return self._stored_pinned(module_hex, None, from_cache=False)

    def _finished(self, started: float, result: str, size: int) -> None:
        if self._observer is not None:
            self._observer.pull_finished(result, time.monotonic() - started, size)

    def _pull(
        self, pull: _Pull, route: Reference, reference: Reference, deadline: Deadline
    ) -> PulledModule:
        """Pull ``reference`` from ``route`` (itself or a mirror's rewrite of it)."""
        pull.host = route.registry
        sha256, keychain = pull.sha256, pull.keychain
        manifest, digests = self._resolve_manifest(route, keychain, deadline)
        where = str(reference)
        # Before any module byte: the digest the reference resolved to must be signed.
        outcome = self._check_signatures(pull, route, digests[0], deadline)
        known = self._store.module_for_manifest(manifest.digest)
        if known is not None:
            _check_sha256(sha256, known, digests, where)
            self._remember(reference, digests, known)
            found = self._pinned(known, manifest.digest, from_cache=True, abi=pull.abi, where=where)
            if found is not None:
                return self._signed(found, outcome, digests[0])
            # evicted since the lookup: download it again
        image = parse_image_manifest(manifest.body, manifest.media_type, where)
        package, layer = select_format(image, where)
        if self._on_resolved is not None:
            self._on_resolved(Resolution(reference, route, digests, package.name, layer))
        limit = self._settings.max_module_bytes
        if layer.size > limit:
            raise FailedPrecondition(
                f"{where} has a {layer.size}-byte layer, over the {limit}-byte limit; "
                "raise --max-module-bytes if the module really is that large"
            )
        unpack = package.unpack
        if unpack is Unpack.RAW:
            # The layer is the module: a wrong sha256 is known before downloading.
            _check_sha256(sha256, _hex(layer.digest), digests, where)
        pull.bytes_total = layer.size
        with (
            self._store.temp_file() as (blob_path, blob_fd),
            os.fdopen(blob_fd, "w+b", closefd=False) as blob,
        ):
            self._registry.fetch_blob(
                route,
                layer.digest,
                layer.size,
                blob,
                keychain,
                deadline,
                limit=limit,
                progress=pull.progress,
            )
            blob.flush()
            if unpack is Unpack.SNIFF:
                blob.seek(0)
                unpack = sniff_unpack(blob.read(SNIFF_BYTES), layer, where)
                if unpack is Unpack.RAW:
                    _check_sha256(sha256, _hex(layer.digest), digests, where)
            if unpack is Unpack.RAW:
                blob.seek(0)
                check_wasm_header(blob.read(HEADER_SIZE), where)
                module_hex = _hex(layer.digest)
                self._commit(blob_path, module_hex, pull.abi, where)
            else:
                blob.seek(0)
                module_hex = self._unpack_tarball(blob, sha256, digests, where, pull.abi)
        try:
            self._remember(reference, digests, module_hex)
        except BaseException:
            self._store.unpin(module_hex)
            raise
        pulled = self._stored_pinned(module_hex, manifest.digest, from_cache=False)
        return self._signed(pulled, outcome, digests[0])

    def _check_signatures(
        self, pull: _Pull, route: Reference, digest: str, deadline: Deadline
    ) -> Outcome | None:
        """Verify ``digest``'s signatures unless kept verdicts already satisfy the pull."""
        gate, requirement = self._signatures, pull.requirement
        if gate is None or not requirement or gate.satisfied(digest, requirement):
            return None
        return gate.check(route, pull.shown, digest, pull.keychain, deadline, requirement)

    def _signed(self, module: PulledModule, outcome: Outcome | None, digest: str) -> PulledModule:
        """Keep the verdicts of a check with the module now stored; carry its warning."""
        if outcome is None or self._signatures is None:
            return module
        try:
            self._signatures.remember(digest, outcome, module.digest)
        except OSError as error:  # a lost verdict only costs a verification next time
            log.warning("could not keep a signature verdict: %s", error)
        return dataclasses.replace(module, warning=outcome.warning) if outcome.warning else module

    def _resolve_manifest(
        self, route: Reference, keychain: Keychain | None, deadline: Deadline
    ) -> tuple[Manifest, tuple[str, ...]]:
        """The image manifest ``route`` names, through at most two levels of index.

        Also every digest on the way (indexes first): each one names this module, so
        each is indexed and each is accepted as the sha256 attribute.
        """
        manifest = self._registry.get_manifest(
            route, keychain, deadline, mediatypes.MANIFEST_ACCEPT
        )
        chain: list[str] = []
        while is_index(manifest.media_type, manifest.body):
            chain.append(manifest.digest)
            child = choose_manifest(manifest.body, manifest.media_type, str(route))
            check_index_hop(chain, child, str(route))
            manifest = self._registry.get_manifest(
                route.with_digest(child.digest), keychain, deadline, mediatypes.MANIFEST_ACCEPT
            )
        return manifest, (*chain, manifest.digest)

    def _remember(self, reference: Reference, digests: Sequence[str], module_hex: str) -> None:
        for digest in digests:
            self._store.record_manifest(digest, module_hex)
        if reference.digest is None:
            self._store.record_reference(str(reference), digests[0])

    def _unpack_tarball(
        self, blob: BinaryIO, sha256: str | None, digests: Sequence[str], where: str, abi: Abi
    ) -> str:
        limit = self._settings.max_module_bytes
        with (
            self._store.temp_file() as (module_path, module_fd),
            os.fdopen(module_fd, "wb", closefd=False) as out,
        ):
            module_hex, _ = extract_plugin(blob, out, limit=limit, where=where)
            out.flush()
            _check_sha256(sha256, module_hex, digests, where)
            self._commit(module_path, module_hex, abi, where)
        return module_hex

    def _commit(self, verified_file: Path, module_hex: str, abi: Abi, where: str) -> None:
        """Commit a verified module, pinned, after making room for it in the cache budget.

        First the module is validated and judged for ``abi``: one refused is never
        committed (its temporary file goes with the pull). Its facts are kept first,
        so a committed module has them.
        """
        kept = self._store.facts
        facts = kept.known(module_hex) or read_facts(verified_file)
        self._judge(facts, abi, where)
        kept.record(module_hex, facts)
        if self._space is not None and not self._store.has_module(module_hex):
            self._space.reserve(verified_file.stat().st_size)
        self._store.commit_module(verified_file, module_hex, pin=True)

    def _pinned(
        self,
        module_hex: str,
        manifest_digest: str | None,
        *,
        from_cache: bool,
        abi: Abi | None,
        where: str = "",
    ) -> PulledModule | None:
        """The stored module, pinned; None when it is not (or no longer) stored.

        With ``abi``, judged for it from the module's kept facts (read and validated
        here, once, for a module cached before validation existed); refused, unpinned.
        ``where`` names the module in a refusal (its reference or URL).
        """
        size = self._store.acquire(module_hex)
        if size is None:
            return None
        path = self._store.module_dir(module_hex)
        if abi is not None:
            try:
                facts = self._store.facts.of_module(module_hex, path / MODULE_FILE)
                self._judge(facts, abi, where or f"module sha256:{module_hex}")
            except BaseException:
                self._store.unpin(module_hex)
                raise
        return PulledModule(module_hex, path, size, manifest_digest, from_cache)

    def _judge(self, facts: ModuleFacts, abi: Abi, where: str) -> None:
        try:
            judge(facts, abi, where)
        except InvalidModule as refused:
            if self._observer is not None:
                self._observer.module_rejected(refused.reason)
            raise

    def _stored_pinned(
        self, module_hex: str, manifest_digest: str | None, *, from_cache: bool
    ) -> PulledModule:
        """The module just committed (and pinned) by this pull."""
        path = self._store.module_dir(module_hex)
        try:
            size = (path / MODULE_FILE).stat().st_size
        except FileNotFoundError:
            self._store.unpin(module_hex)
            raise _vanished(module_hex) from None
        return PulledModule(module_hex, path, size, manifest_digest, from_cache)


_ROOM_SLACK = 64 * 1024  # asked for on top of the download when the disk is full


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def _disk_full(error: BaseException) -> bool:
    return isinstance(error, ResourceExhausted) or is_disk_full(error)


def _unverifiable_url(source: HttpSource, requirement: Requirement) -> str | None:
    if not requirement:
        return None
    return (
        f"{display_url(source.url)}: a warn rule asks for a signature, but a module fetched "
        "by URL has none to check"
    )


def _warned(module: PulledModule, warning: str | None) -> PulledModule:
    return module if warning is None else dataclasses.replace(module, warning=warning)


def _vanished(module_hex: str) -> Unavailable:
    return Unavailable(
        f"module sha256:{module_hex} was removed from the cache while being published "
        "(csi-wasm gc or fsck running?); kubelet's retry will fetch it again"
    )


def _check_sha256(
    expected: str | None, module_hex: str, manifest_digests: Sequence[str], where: str
) -> None:
    """The sha256 attribute may name the module bytes or (for OCI) the manifest, as in Istio."""
    if expected is None or expected in (module_hex, *map(_hex, manifest_digests)):
        return
    manifest = f" and the manifest {manifest_digests[-1]}" if manifest_digests else ""
    raise DigestMismatch(
        f"sha256 mismatch for {where}: expected {expected}, but the module is {module_hex}"
        f"{manifest}; fix the sha256 attribute or the url"
    )


def _merge(pod: Keychain | None, node: Keychain | None) -> Keychain | None:
    """The pod's credentials, with the node's for registries the pod has none for."""
    if pod is None or node is None:
        return pod or node
    entries = {host: node.for_registry(host) for host in node.registries}
    entries.update({host: pod.for_registry(host) for host in pod.registries})
    return Keychain({host: creds for host, creds in entries.items() if creds is not None})
