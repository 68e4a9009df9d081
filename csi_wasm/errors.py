"""The one exception tree of csi-wasm.

Every failure a user can see is one of these. Each class carries the gRPC status
code name it maps to (``code``); the mapping to real gRPC codes happens in exactly
one place, :mod:`csi_wasm.server.rpc`, so nothing below the server imports grpc.

    CsiWasmError
    ├── InvalidArgument      bad request field, attribute or reference      (final)
    ├── NotFound             reference, tag or blob not found                (final)
    ├── AlreadyExists        volume id already published differently         (final)
    ├── PermissionDenied     registry refused or needs credentials           (final)
    ├── Aborted              another operation on the volume is in flight    (retry)
    ├── Unavailable          registry unreachable, 5xx; --root unusable      (retry)
    │   └── HostUnavailable      a host failed to answer (a mirror is then marked down)
    ├── DeadlineExceeded     pull or call ran out of time                    (retry)
    ├── FailedPrecondition   digest mismatch, not Wasm, unsupported, too big (final)
    │   ├── DigestMismatch
    │   ├── InvalidModule    a module no Wasm host (or no proxy-wasm host) can load
    │   └── SignatureRejected  no valid signature where one is required
    ├── ResourceExhausted    cache disk full                                 (retry)
    ├── Unimplemented        an RPC this node plugin does not offer          (final)
    └── Internal             a bug; logged with traceback                    (final)

Messages are one line a user can act on; they never contain secrets.
"""

from __future__ import annotations

from typing import ClassVar


class CsiWasmError(Exception):
    """Base of every error csi-wasm reports to a caller."""

    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str) -> None:
        # One line: kubelet puts it in `kubectl describe pod`.
        super().__init__(" ".join(message.split()))

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidArgument(CsiWasmError):
    code = "INVALID_ARGUMENT"


class NotFound(CsiWasmError):
    code = "NOT_FOUND"


class AlreadyExists(CsiWasmError):
    code = "ALREADY_EXISTS"


class PermissionDenied(CsiWasmError):
    code = "PERMISSION_DENIED"


class Aborted(CsiWasmError):
    code = "ABORTED"


class Unavailable(CsiWasmError):
    code = "UNAVAILABLE"


class HostUnavailable(Unavailable):
    """A registry host did not answer: refused, timed out, 5xx, throttled or broke off.

    Raised by the transport, never for local trouble (a full or read-only disk), so
    a mirror is marked down only for its own failures.
    """


class DeadlineExceeded(CsiWasmError):
    code = "DEADLINE_EXCEEDED"


class FailedPrecondition(CsiWasmError):
    code = "FAILED_PRECONDITION"


class DigestMismatch(FailedPrecondition):
    """Bytes received do not hash to the digest that was promised."""


class InvalidModule(FailedPrecondition):
    """The module does not validate, or does not have the ABI the volume asks for.

    ``reason`` is one of a few fixed words (a metric label, an Event reason's detail).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class SignatureRejected(FailedPrecondition):
    """A module needs a signature by an accepted key and has none that verifies."""


class ResourceExhausted(CsiWasmError):
    code = "RESOURCE_EXHAUSTED"


class Unimplemented(CsiWasmError):
    code = "UNIMPLEMENTED"


class Internal(CsiWasmError):
    code = "INTERNAL"
