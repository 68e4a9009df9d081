"""``csi-wasm push FILE REF``: validate a module as the driver would, then push it.

The module is judged first (:mod:`csi_wasm.verify`, for ``--abi``): what the driver
would refuse is not pushed, and the message is the one a pod would get. It is pushed
as a CNCF Wasm artifact (default) or Istio's compat image (:mod:`csi_wasm.formats.build`)
with the driver's registry client (:mod:`csi_wasm.registry.upload`): same TLS options,
insecure hosts and credentials (``--docker-config``). The output ends with the ``url``
and ``sha256`` lines of a volume's attributes, the sha256 being the manifest digest (as
Istio's WasmPlugin means it for ``oci://`` urls).

The package's ``created`` time is ``$SOURCE_DATE_EPOCH`` when set, else the Unix epoch,
so pushing the same module again gives the same digest.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from csi_wasm.deadline import Deadline
from csi_wasm.errors import CsiWasmError, InvalidArgument
from csi_wasm.formats.build import build_package
from csi_wasm.reference import Reference, parse_reference
from csi_wasm.registry import RegistryClient, RegistryUploader
from csi_wasm.settings import DEFAULT_MAX_MODULE_BYTES, DEFAULT_PULL_TIMEOUT_SECONDS
from csi_wasm.tools.common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, RegistryAccess, say_error
from csi_wasm.verify import Abi, facts_of, judge

__all__ = ["FORMATS", "PushOptions", "PushResult", "push", "push_command"]

COMMAND = "push"
FORMATS = ("artifact", "compat")
_OCI = "oci://"


@dataclass(frozen=True)
class PushOptions:
    file: str
    target: str
    format: str = "artifact"
    access: RegistryAccess = field(default_factory=RegistryAccess)
    abi: Abi = Abi.PROXY_WASM
    timeout: float = DEFAULT_PULL_TIMEOUT_SECONDS


@dataclass(frozen=True)
class PushResult:
    reference: Reference
    manifest_digest: str
    module_digest: str
    size: int
    uploaded: int  # blobs sent; the others were in the registry already
    blobs: int

    def to_text(self) -> str:
        return (
            f"pushed {self.reference} ({self.size}-byte module {self.module_digest}; "
            f"{self.uploaded} of {self.blobs} blobs uploaded)\n"
            f"digest: {self.manifest_digest}\n"
            f"url: {_OCI}{self.reference}\n"
            f'sha256: "{self.manifest_digest.removeprefix("sha256:")}"\n'
        )


def push_command(options: PushOptions) -> int:
    """Run ``csi-wasm push``: print what was pushed, return the exit status."""
    try:
        result = push(options)
    except ValueError as error:
        say_error(COMMAND, str(error))
        return EXIT_USAGE
    except CsiWasmError as error:
        say_error(COMMAND, error.message)
        return EXIT_REFUSED
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        say_error(COMMAND, f"{where}{error.strerror or error}")
        return EXIT_REFUSED
    sys.stdout.write(result.to_text())
    return EXIT_OK


def push(options: PushOptions) -> PushResult:
    """Validate and push; ValueError for a usage error, CsiWasmError when refused."""
    reference = _push_target(options.target)
    if options.format not in FORMATS:
        raise ValueError(f"--format {options.format!r} is not one of {', '.join(FORMATS)}")
    keychain = options.access.keychain()
    module = Path(options.file).read_bytes()
    judge(facts_of(module), options.abi, options.file)
    if len(module) > DEFAULT_MAX_MODULE_BYTES:
        say_error(
            COMMAND,
            f"warning: the module is {len(module)} bytes, over serve's default "
            f"--max-module-bytes {DEFAULT_MAX_MODULE_BYTES}; nodes need a higher limit",
        )
    package = build_package(options.format, module, _created())
    deadline = Deadline.after(options.timeout)
    with RegistryClient(options.access.options()) as client:
        uploader = RegistryUploader(client, keychain)
        uploaded = sum(uploader.push_blob(reference, blob.data, deadline) for blob in package.blobs)
        digest = uploader.push_manifest(reference, package.manifest, package.media_type, deadline)
    return PushResult(
        reference,
        digest,
        "sha256:" + hashlib.sha256(module).hexdigest(),
        len(module),
        uploaded,
        len(package.blobs),
    )


def _push_target(target: str) -> Reference:
    """``[oci://]REF`` with a tag (``latest`` when none) and no digest; ValueError if not."""
    text = target.strip()
    text = text[len(_OCI) :] if text.lower().startswith(_OCI) else text
    try:
        reference = parse_reference(text)
    except InvalidArgument as error:
        raise ValueError(error.message) from None
    if reference.digest is not None:
        raise ValueError(
            f"push target {target!r} names a digest; give a tag (the digest is what push prints)"
        )
    if reference.tag is None:
        reference = Reference(reference.registry, reference.repository, "latest")
    return reference


def _created() -> int:
    """Reproducible: ``$SOURCE_DATE_EPOCH`` (reproducible-builds.org) or 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    try:
        return max(0, int(value)) if value else 0
    except ValueError:
        raise ValueError(f"SOURCE_DATE_EPOCH {value[:40]!r} is not a number of seconds") from None
