"""The facts of each cached module, kept beside it so a warm publish re-reads nothing.

Layout::

    facts/<sha256 hex>.json   {"validator": "wasmtime 50.0.1", "facts": {...}}

Not inside ``modules/<hex>/``: pods see that directory, and it holds exactly
``plugin.wasm``. A module's facts are written before the module is committed, so a
committed module normally has them; they are derived data (the same bytes always give
the same facts), written atomically but not fsynced: one lost to a power cut is
recomputed. Facts are kept in memory once read, so judging a cached module for a
volume costs a dictionary lookup. A module without facts (cached by a version before
validation, or judged by another validator) is read and validated once, on first use.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

from csi_wasm.atomic import remove, write_atomic
from csi_wasm.verify import ModuleFacts, read_facts, validator

_SUFFIX = ".json"


class KeptFacts:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._known: dict[str, ModuleFacts] = {}
        self._lock = threading.Lock()

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, module_hex: str) -> Path:
        return self.directory / (module_hex + _SUFFIX)

    def record(self, module_hex: str, facts: ModuleFacts) -> None:
        """Keep ``facts`` for the module (before it is committed); OSError if unwritable."""
        body = json.dumps({"validator": validator(), "facts": facts.to_json()}).encode()
        self.directory.mkdir(parents=True, exist_ok=True)  # a cache laid out by an older version
        write_atomic(self._path(module_hex), body, durable=False)
        with self._lock:
            self._known[module_hex] = facts

    def known(self, module_hex: str) -> ModuleFacts | None:
        """The facts kept for the module; None when there are none by this validator."""
        with self._lock:
            facts = self._known.get(module_hex)
        if facts is not None:
            return facts
        try:
            data = json.loads(self._path(module_hex).read_bytes())
            if data["validator"] != validator():
                return None  # another validator's verdict: judge again
            facts = ModuleFacts.from_json(data["facts"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # none, or damaged: read the module again
        with self._lock:
            self._known[module_hex] = facts
        return facts

    def of_module(self, module_hex: str, module_file: Path) -> ModuleFacts:
        """The module's facts: kept ones, else read from ``module_file`` and kept."""
        facts = self.known(module_hex)
        if facts is None:
            facts = self.refresh(module_hex, module_file)
        return facts

    def refresh(self, module_hex: str, module_file: Path) -> ModuleFacts:
        """Read and validate ``module_file`` again, and keep what was found."""
        facts = read_facts(module_file)
        self.record(module_hex, facts)
        return facts

    def prune(self, stored: Callable[[str], bool]) -> int:
        """Drop the facts of modules no longer stored; returns how many files went."""
        removed = 0
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return 0
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not name.endswith(_SUFFIX):
                continue  # a write in progress (write_atomic's temp file)
            module_hex = name.removesuffix(_SUFFIX)
            if stored(module_hex):
                continue
            with self._lock:
                self._known.pop(module_hex, None)
            removed += remove(Path(entry.path), durable=False)
        return removed
