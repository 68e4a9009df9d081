"""OCI image references: parsing, normalisation and the canonical string form.

The grammar follows distribution/reference (what ``docker pull`` accepts)::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path
    domain     := host [ ":" port ]          host: DNS name, "localhost" or [IPv6]
    path       := component ( "/" component )*
    component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
    digest     := "sha256:" 64 lowercase hex digits

The first path element is a domain when it contains ``.`` or ``:`` or is
``localhost``; otherwise the reference is on Docker Hub. Normalisation makes
``nginx`` and ``index.docker.io/library/nginx`` the same ``docker.io/library/nginx``;
hosts are lower-cased, and only sha256 digests are accepted.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from csi_wasm.errors import InvalidArgument

__all__ = [
    "DOCKER_HUB",
    "DOCKER_HUB_API_HOST",
    "Reference",
    "parse_digest",
    "parse_reference",
]

DOCKER_HUB = "docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io"})
_OFFICIAL_NAMESPACE = "library"

NAME_TOTAL_LENGTH_MAX = 255
TAG_LENGTH_MAX = 128

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_ANY_CASE_HEX = re.compile(r"[0-9a-fA-F]+")
_PORT = re.compile(r"[0-9]{1,5}")

_EXAMPLE = (
    "a valid one looks like 'ghcr.io/org/module:v1.0' or 'registry:5000/name@sha256:<64 hex>'"
)
_SHOW_MAX = 200


@dataclass(frozen=True)
class Reference:
    """A parsed, normalised OCI reference.

    ``registry`` is ``host[:port]`` (``docker.io`` for Docker Hub), ``repository``
    the path inside it (``library/nginx``). Tag and digest are both optional and
    may both be present; a digest then decides what is pulled.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def name(self) -> str:
        """``registry/repository``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host[:port] that serves the registry API (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API_HOST if self.registry == DOCKER_HUB else self.registry

    @property
    def is_latest_or_untagged(self) -> bool:
        """True when the reference can move: no digest, and tag ``latest`` or none.

        A digest-pinned reference never moves, so it is never "latest" here; this is
        what decides the default pull policy (Always for a moving reference).
        """
        return self.digest is None and self.tag in (None, "latest")

    @property
    def manifest_ref(self) -> str:
        """What to put after ``/manifests/``: the digest if known, else the tag or ``latest``."""
        if self.digest is not None:
            return self.digest
        return self.tag if self.tag is not None else "latest"

    def with_digest(self, digest: str) -> Reference:
        """This reference pinned to ``digest`` (the tag, if any, is kept for display)."""
        return replace(self, digest=parse_digest(digest))


def parse_digest(text: str) -> str:
    """Validate a ``sha256:<64 lowercase hex>`` digest and return it unchanged."""
    problem = _digest_problem(text)
    if problem is not None:
        raise InvalidArgument(
            f"invalid digest {_show(text)}: {problem}; "
            "a valid one looks like 'sha256:' followed by 64 lowercase hex digits"
        )
    return text


def parse_reference(text: str) -> Reference:
    """Parse and normalise an OCI reference; raise :class:`InvalidArgument` if it is bad."""
    if not isinstance(text, str):
        raise InvalidArgument(
            f"invalid OCI reference {_show(repr(text))}: not a string; {_EXAMPLE}"
        )
    try:
        return _parse(text)
    except _Bad as bad:
        raise InvalidArgument(
            f"invalid OCI reference {_show(text)}: {bad.problem}; {_EXAMPLE}"
        ) from None


class _Bad(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _show(text: str) -> str:
    if len(text) > _SHOW_MAX:
        return repr(text[:_SHOW_MAX]) + "..."
    return repr(text)


def _parse(text: str) -> Reference:
    if not text:
        raise _Bad("it is empty")
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise _Bad("whitespace and control characters are not allowed")
    if "://" in text:
        raise _Bad("a URL scheme such as 'oci://' is not part of a reference; remove it")

    name_and_tag, at, digest_text = text.partition("@")
    digest: str | None = None
    if at:
        problem = _digest_problem(digest_text)
        if problem is not None:
            raise _Bad(problem)
        digest = digest_text

    name, tag = _split_tag(name_and_tag)
    if not name:
        raise _Bad("the repository name is empty")

    registry, path, explicit_domain = _split_domain(name)
    _check_path(path)
    if not explicit_domain and _SHA256_HEX.fullmatch(path):
        raise _Bad(
            "a 64-character hex name looks like an image ID; "
            "pin a digest with 'name@sha256:<hex>' instead"
        )
    if registry == DOCKER_HUB and "/" not in path:
        path = f"{_OFFICIAL_NAMESPACE}/{path}"

    total = len(registry) + 1 + len(path)
    if total > NAME_TOTAL_LENGTH_MAX:
        raise _Bad(
            f"name too long ({total} characters including the registry, "
            f"at most {NAME_TOTAL_LENGTH_MAX})"
        )
    return Reference(registry=registry, repository=path, tag=tag, digest=digest)


def _digest_problem(text: str) -> str | None:
    algorithm, colon, hex_part = text.partition(":")
    if not colon:
        return "a digest must be 'sha256:<64 hex digits>'"
    if algorithm != "sha256":
        shown = repr(algorithm[:20])
        return f"only sha256 digests are supported (got algorithm {shown})"
    if len(hex_part) != 64:
        return f"a sha256 digest has 64 hex digits, got {len(hex_part)}"
    if not _SHA256_HEX.fullmatch(hex_part):
        if _ANY_CASE_HEX.fullmatch(hex_part):
            return "digest hex digits must be lowercase"
        return "the digest contains characters that are not hex digits"
    return None


def _split_tag(name_and_tag: str) -> tuple[str, str | None]:
    colon = name_and_tag.rfind(":")
    if colon <= name_and_tag.rfind("/"):
        # No colon after the last slash: any colon belongs to a registry port.
        return name_and_tag, None
    name, tag = name_and_tag[:colon], name_and_tag[colon + 1 :]
    if not tag:
        raise _Bad("the tag after ':' is empty")
    if len(tag) > TAG_LENGTH_MAX:
        raise _Bad(f"tag too long ({len(tag)} characters, at most {TAG_LENGTH_MAX})")
    if not _TAG.fullmatch(tag):
        raise _Bad(
            "a tag may only contain ASCII letters, digits, '_', '.' and '-', "
            "and must not start with '.' or '-'"
        )
    return name, tag


def _split_domain(name: str) -> tuple[str, str, bool]:
    first, slash, rest = name.partition("/")
    is_domain = bool(slash) and ("." in first or ":" in first or first.lower() == "localhost")
    if not is_domain:
        return DOCKER_HUB, name, False
    registry = _normalize_domain(first)
    if not rest:
        raise _Bad("the repository name after the registry is empty")
    return registry, rest, True


def _normalize_domain(domain: str) -> str:
    if domain.startswith("["):
        close = domain.find("]")
        if close < 0:
            raise _Bad("an IPv6 registry address needs a closing ']'")
        address, port = domain[1:close], domain[close + 1 :]
        if "%" in address:
            raise _Bad("a zone index ('%') is not allowed in a registry's IPv6 address")
        try:
            ip = ipaddress.IPv6Address(address)
        except ValueError:
            raise _Bad("the registry's IPv6 address in brackets is not valid") from None
        host = f"[{ip.compressed}]"
        if port and not port.startswith(":"):
            raise _Bad("only ':<port>' may follow a bracketed IPv6 registry address")
        port = port[1:] if port else ""
        has_port = bool(domain[close + 1 :])
    else:
        host, colon, port = domain.partition(":")
        has_port = bool(colon)
        if not host:
            raise _Bad("the registry host is empty")
        labels = host.split(".")
        if not all(_DNS_LABEL.fullmatch(label) for label in labels):
            raise _Bad(
                f"registry host {host[:100]!r} is not a valid host name "
                "(letters, digits and '-' in dot-separated labels)"
            )
        host = host.lower()
    if has_port:
        if not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
            raise _Bad("the registry port must be a number between 1 and 65535")
        port = str(int(port))
        normalized = f"{host}:{port}"
    else:
        normalized = host
    if normalized in _DOCKER_HUB_ALIASES:
        return DOCKER_HUB
    return normalized


def _check_path(path: str) -> None:
    if path != path.lower():
        raise _Bad("uppercase letters are not allowed in a repository name")
    for component in path.split("/"):
        if not component:
            raise _Bad("the repository name has an empty path component ('//' or a trailing '/')")
        if not _COMPONENT.fullmatch(component):
            raise _Bad(
                f"repository path component {component[:100]!r} is not valid: use lowercase "
                "letters and digits, joined by '.', '_', '__' or dashes"
            )
