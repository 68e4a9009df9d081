"""Registry mirrors: ``--registry-mirror SOURCE=MIRROR[/PREFIX]``.

A pull of a reference on SOURCE is tried through each of its mirrors first, in the
order given, then on SOURCE itself. This is how a fleet of nodes puts Harbor's proxy
cache, Spegel or Dragonfly in front of a registry. The mirror can add a path prefix
(Harbor names its proxy-cache projects: ``docker.io=harbor.example.com/dockerhub``).
Content is checked against its digest whichever host serves it, so a mirror can
make a pull faster but never change what is mounted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from csi_wasm.reference import Reference, parse_reference


@dataclass(frozen=True)
class Mirror:
    source: str  # registry host[:port] as in Reference.registry
    host: str
    prefix: str  # repository prefix on the mirror, "" for none

    def rewrite(self, reference: Reference) -> Reference:
        repository = (
            f"{self.prefix}/{reference.repository}" if self.prefix else reference.repository
        )
        return replace(reference, registry=self.host, repository=repository)

    def __str__(self) -> str:
        return f"{self.source}={self.host}" + (f"/{self.prefix}" if self.prefix else "")


def parse_mirror(text: str) -> Mirror:
    """``SOURCE=MIRROR[/PREFIX]``; ValueError naming the flag when malformed."""
    source, sep, target = text.partition("=")
    if not sep or not source.strip() or not target.strip():
        raise ValueError(f"--registry-mirror {text!r} must look like SOURCE=MIRROR[/PREFIX]")
    try:
        # Parse both through the reference grammar so hosts are normalised alike
        # (docker.io, index.docker.io) and a typo is caught at start-up.
        source_ref = parse_reference(f"{source.strip()}/probe")
        target_ref = parse_reference(f"{target.strip().rstrip('/')}/probe")
    except Exception as error:
        raise ValueError(f"--registry-mirror {text!r}: {error}") from None
    prefix = target_ref.repository.removesuffix("probe").rstrip("/")
    return Mirror(source_ref.registry, target_ref.registry, prefix)


class Mirrors:
    def __init__(self, mirrors: Iterable[Mirror] = ()) -> None:
        self._by_source: dict[str, list[Mirror]] = {}
        for mirror in mirrors:
            self._by_source.setdefault(mirror.source, []).append(mirror)

    def candidates(self, reference: Reference) -> list[Reference]:
        """Where to try ``reference``: its mirrors in order, then the source."""
        routes = [m.rewrite(reference) for m in self._by_source.get(reference.registry, [])]
        return [*routes, reference]
