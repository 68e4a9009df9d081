"""The prefetch list: entries as the ConfigMap's ``prefetch.json`` and ``--prefetch`` give them.

Each entry is what a volume's attributes say (``url``, ``sha256``, ``imagePullPolicy``,
``abi``)
and is validated the same way (:func:`csi_wasm.attributes.parse_attributes`). A bad
entry is reported as one problem and skipped; it never stops the others.

An entry may also carry a ``name``: it then belongs to the node's catalog
(:mod:`csi_wasm.catalog`). The name is kept as given here; the catalog checks it, so
that an entry with a bad name can be listed there as failed, with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from csi_wasm.attributes import (
    ABI,
    PULL_POLICY,
    SHA256,
    URL,
    ModuleRequest,
    PullPolicy,
    parse_attributes,
)
from csi_wasm.backoff import one_line
from csi_wasm.errors import CsiWasmError
from csi_wasm.reference import Reference
from csi_wasm.registry.http_source import display_url

DEFAULT_KEY = "prefetch.json"
NAME = "name"

_FLAG_SHA256 = "#sha256="
_SHOWN_MAX = 300

# --- the list -------------------------------------------------------------------------


@dataclass(frozen=True)
class PrefetchEntry:
    """One module to prefetch, with the meaning of the volume attributes of the same name."""

    url: str
    sha256: str | None = None
    image_pull_policy: str | None = None  # "Always" / "IfNotPresent"; None: the default
    name: str | None = None  # a catalog entry's name (checked by the catalog)
    abi: str | None = None  # "proxy-wasm" / "any"; None: the node's --default-abi

    def attributes(self) -> dict[str, str]:
        attributes = {URL: self.url}
        if self.sha256 is not None:
            attributes[SHA256] = self.sha256
        if self.image_pull_policy is not None:
            attributes[PULL_POLICY] = self.image_pull_policy
        if self.abi is not None:
            attributes[ABI] = self.abi
        return attributes

    def request(self) -> ModuleRequest:
        """The validated request; :class:`~csi_wasm.errors.InvalidArgument` if invalid.

        A named entry's tag is re-resolved at every refresh unless the entry says
        ``IfNotPresent``: the catalog follows the tag (CONTRACT.md §10).
        """
        request = parse_attributes(self.attributes())
        if self.name is not None and self.image_pull_policy is None and _is_tag(request):
            return replace(request, pull_policy=PullPolicy.ALWAYS)
        return request

    @property
    def shown(self) -> str:
        """The url as logs show it: an http(s) URL without user info, query or fragment."""
        url = self.url.strip()
        if url.lower().startswith(("https://", "http://")):
            return display_url(url)
        return url[:_SHOWN_MAX]


def parse_prefetch_list(text: str) -> tuple[list[PrefetchEntry], list[str]]:
    """The valid entries of a ``prefetch.json`` document, and one line per problem.

    The document is a JSON list whose items are either a string (the ``url``) or an
    object with ``url`` and optional ``sha256``, ``imagePullPolicy``, ``abi`` and ``name``.
    Invalid items are left out and described in the problems; nothing here raises.
    """
    try:
        document = json.loads(text) if text.strip() else []
    except ValueError as error:
        return [], [f"{DEFAULT_KEY} is not valid JSON: {error}"]
    except RecursionError:
        return [], [f"{DEFAULT_KEY} is nested too deeply to be a list of modules"]
    if not isinstance(document, list):
        return [], [
            f"{DEFAULT_KEY} must be a JSON list of module urls or "
            f'{{"url": ..., "sha256": ...}} objects, not a {_json_type(document)}'
        ]
    entries: list[PrefetchEntry] = []
    problems: list[str] = []
    for index, item in enumerate(document):
        try:
            entry = _entry(item)
            entry.request()
        except (CsiWasmError, ValueError, TypeError) as error:
            problems.append(f"entry {index} skipped: {one_line(error)}")
            continue
        entries.append(entry)
    return entries, problems


def _entry(item: object) -> PrefetchEntry:
    if isinstance(item, str):
        return PrefetchEntry(item)
    if not isinstance(item, dict):
        raise TypeError(f"expected a url string or an object with 'url', not a {_json_type(item)}")
    unknown = sorted(str(key) for key in item if key not in _FIELDS)
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(_FIELDS)}"
        )
    values: dict[str, str | None] = {}
    for key in _FIELDS:
        value = item.get(key)
        if value is not None and not isinstance(value, str):
            raise TypeError(f"field {key!r} must be a string, not a {_json_type(value)}")
        values[key] = value
    url = values[URL]
    if url is None:
        raise ValueError("field 'url' is required, e.g. oci://ghcr.io/acme/filter:v1")
    return PrefetchEntry(url, values[SHA256], values[PULL_POLICY], values[NAME], values[ABI])


_FIELDS = (NAME, URL, SHA256, PULL_POLICY, ABI)


def _is_tag(request: ModuleRequest) -> bool:
    return isinstance(request.source, Reference) and request.source.digest is None


def parse_prefetch_flag(value: str) -> PrefetchEntry:
    """A ``--prefetch`` value: a url as the ``url`` attribute takes it.

    An http(s) URL needs the module's sha256, given as a ``#sha256=<hex>`` suffix
    (``https://example.com/f.wasm#sha256=0123…``). ValueError with a one-line message
    when invalid, for the command line to report.
    """
    url, sha256 = value.strip(), None
    if _FLAG_SHA256 in url:
        url, sha256 = url.rsplit(_FLAG_SHA256, 1)
    entry = PrefetchEntry(url, sha256)
    try:
        entry.request()
    except CsiWasmError as error:
        raise ValueError(f"--prefetch {entry.shown!r}: {error.message}") from None
    return entry


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {dict: "object", list: "list", str: "string", type(None): "null"}.get(
        type(value), type(value).__name__
    )
