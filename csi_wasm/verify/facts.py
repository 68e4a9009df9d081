"""What is known about a module once it was read: the input of every verdict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ABI_EXPORT_PREFIX = "proxy_abi_version_"


@dataclass(frozen=True)
class ModuleFacts:
    """A module's size, validator verdict, imports and exports.

    ``abi_versions`` are the proxy-wasm ABI versions the module's function exports
    announce (``proxy_abi_version_0_2_1`` -> ``"0.2.1"``), in export order.
    ``structure_error`` is the validator's reason, None when the module validates.
    """

    size: int
    abi_versions: tuple[str, ...]
    exports: tuple[tuple[str, str], ...]  # (name, kind)
    imports: tuple[tuple[str, str, str], ...]  # (module, name, kind)
    structure_error: str | None

    @classmethod
    def of(
        cls,
        size: int,
        exports: tuple[tuple[str, str], ...],
        imports: tuple[tuple[str, str, str], ...],
        structure_error: str | None,
    ) -> ModuleFacts:
        versions = tuple(
            name.removeprefix(ABI_EXPORT_PREFIX).replace("_", ".")
            for name, kind in exports
            if kind == "func" and name.startswith(ABI_EXPORT_PREFIX)
        )
        return cls(size, versions, exports, imports, structure_error)

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "abi_versions": list(self.abi_versions),
            "exports": [{"name": name, "kind": kind} for name, kind in self.exports],
            "imports": [
                {"module": module, "name": name, "kind": kind}
                for module, name, kind in self.imports
            ],
            "structure_error": self.structure_error,
        }

    @classmethod
    def from_json(cls, data: Any) -> ModuleFacts:
        """The facts :meth:`to_json` wrote; ValueError on anything else."""
        try:
            size = data["size"]
            error = data["structure_error"]
            exports = tuple((str(e["name"]), str(e["kind"])) for e in data["exports"])
            imports = tuple(
                (str(i["module"]), str(i["name"]), str(i["kind"])) for i in data["imports"]
            )
        except (KeyError, TypeError) as caught:
            raise ValueError(f"not module facts: {caught}") from None
        if not isinstance(size, int) or not (error is None or isinstance(error, str)):
            raise ValueError("not module facts: size or structure_error of the wrong type")
        return cls.of(size, exports, imports, error)
