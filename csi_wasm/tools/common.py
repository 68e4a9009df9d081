"""What ``inspect`` and ``push`` share: exit statuses, registry access, one-line errors."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from csi_wasm.registry import Keychain, RegistryOptions
from csi_wasm.registry.credentials import keychain_from_file

EXIT_OK = 0  # inspect: serve would serve it; push: pushed
EXIT_REFUSED = 1  # serve would refuse it, or the registry or a file failed us
EXIT_USAGE = 2  # what argparse returns for a bad command line, too


@dataclass(frozen=True)
class RegistryAccess:
    """How to reach registries: the flags ``serve`` has for it, with the same meaning."""

    insecure_registries: frozenset[str] = frozenset()
    registry_ca: str | None = None
    docker_config: str | None = None

    def options(self) -> RegistryOptions:
        return RegistryOptions(
            insecure_registries=self.insecure_registries, ca_file=self.registry_ca
        )

    def keychain(self) -> Keychain | None:
        """The --docker-config credentials; ValueError (a usage error) when unusable."""
        return None if self.docker_config is None else keychain_from_file(self.docker_config)


def say_error(command: str, message: str) -> None:
    """One line on stderr, as every failure of a tool is reported."""
    print(f"csi-wasm {command}: {' '.join(message.split())}", file=sys.stderr)
