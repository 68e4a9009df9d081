"""Which modules must be signed, and by whom: the node's rules, tightened by the pod.

The policy file (``--verify-policy``) is YAML::

    rules:                              # the first rule that matches wins
    - match: "ghcr.io/acme/filters/**"  # registry/repository as the pod wrote it
      keys: [team-a, release]           # --verify-key names; any one suffices
      mode: enforce                     # or warn

``*`` matches within one path segment, ``**`` across segments. A module no rule
matches is allowed unless ``--verify-unmatched deny``. Pod attributes only add
:class:`Demand` s; nothing a pod writes removes one.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from csi_wasm.errors import FailedPrecondition, InvalidArgument
from csi_wasm.verify.files import read_capped

MAX_POLICY_FILE_BYTES = 1024 * 1024
_RULE_FIELDS = frozenset({"match", "keys", "mode"})


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file and the problem."""


class Mode(enum.Enum):
    ENFORCE = "enforce"
    WARN = "warn"


@dataclass(frozen=True)
class Rule:
    match: str
    keys: tuple[str, ...]
    mode: Mode
    pattern: re.Pattern[str]

    def matches(self, name: str) -> bool:
        return self.pattern.fullmatch(name) is not None


@dataclass(frozen=True)
class Demand:
    """A signature by one of ``keys`` must verify; if it does not, refuse (or only warn)."""

    keys: tuple[str, ...]
    enforce: bool
    origin: str  # what asked for it, for messages: "rule ghcr.io/acme/**", "verify: required"


@dataclass(frozen=True)
class Requirement:
    """Everything a module must satisfy; empty when nothing asks for a signature."""

    demands: tuple[Demand, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.demands)

    @property
    def enforced(self) -> bool:
        return any(d.enforce for d in self.demands)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(sorted({k for d in self.demands for k in d.keys}))

    def token(self) -> str:
        """A stable text naming this requirement (pulls with different ones never merge)."""
        return ";".join(f"{'E' if d.enforce else 'W'}:{','.join(d.keys)}" for d in self.demands)


NO_REQUIREMENT = Requirement()


def glob_pattern(glob: str) -> re.Pattern[str]:
    """``*`` stays within a segment, ``**`` crosses segments; everything else is literal."""
    parts = []
    for i, piece in enumerate(glob.split("**")):
        if i:
            parts.append(".*")
        parts.append("[^/]*".join(re.escape(p) for p in piece.split("*")))
    return re.compile("".join(parts))


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    unmatched_deny: bool = False
    keys: frozenset[str] = frozenset()  # every --verify-key name

    def rule_for(self, name: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.matches(name)), None)

    def requirement(
        self, name: str, *, required: bool = False, pod_keys: tuple[str, ...] = ()
    ) -> Requirement:
        """What a module called ``name`` (registry/repository, or a URL's host/path) needs.

        INVALID_ARGUMENT when the pod names a key this node does not have;
        FAILED_PRECONDITION when no rule matches under ``--verify-unmatched deny``.
        """
        unknown = [k for k in pod_keys if k not in self.keys]
        if unknown:
            have = ", ".join(sorted(self.keys)) or "none"
            raise InvalidArgument(
                f"volume attribute 'verifyKeys' names {', '.join(unknown)}, which this node "
                f"does not have (--verify-key names: {have})"
            )
        rule = self.rule_for(name)
        if rule is None and self.unmatched_deny:
            raise FailedPrecondition(
                f"{name} matches no rule of the node's signature policy and unmatched modules "
                "are refused (--verify-unmatched deny); ask the cluster admin to add a rule"
            )
        demands = []
        if rule is not None:
            demands.append(Demand(rule.keys, rule.mode is Mode.ENFORCE, f"rule {rule.match}"))
        if required or pod_keys:
            keys = pod_keys or (rule.keys if rule is not None else tuple(sorted(self.keys)))
            if not keys:
                raise InvalidArgument(
                    "volume attribute 'verify: required' asks for a signature, but this node "
                    "has no --verify-key to check one with"
                )
            origin = "verifyKeys" if pod_keys else "verify: required"
            demands.append(Demand(keys, True, origin))
        return Requirement(tuple(demands))


def parse_policy(
    text: str, where: str, keys: Collection[str], *, unmatched_deny: bool = False
) -> Policy:
    """A policy from YAML text; :class:`PolicyError` naming ``where`` on any problem."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PolicyError(f"{where} is not valid YAML: {' '.join(str(error).split())}") from None
    if document is None:
        document = {}
    if not isinstance(document, Mapping) or set(document) - {"rules"}:
        raise PolicyError(f"{where} must be a mapping with one field, 'rules' (a list)")
    raw_rules = document.get("rules")
    raw_rules = [] if raw_rules is None else raw_rules
    if not isinstance(raw_rules, list):
        raise PolicyError(f"{where}: 'rules' must be a list")
    rules = tuple(
        _parse_rule(raw, f"{where} rule {i + 1}", keys) for i, raw in enumerate(raw_rules)
    )
    return Policy(rules, unmatched_deny, frozenset(keys))


def _parse_rule(raw: object, where: str, known: Collection[str]) -> Rule:
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where} must be a mapping with match, keys and mode")
    extra = sorted(map(str, set(raw) - _RULE_FIELDS))
    if extra:
        raise PolicyError(f"{where} has unknown field(s) {', '.join(extra)}; use match, keys, mode")
    match = raw.get("match")
    if not isinstance(match, str) or not match.strip():
        raise PolicyError(f"{where} needs 'match', a registry/repository glob")
    keys = raw.get("keys")
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise PolicyError(f"{where} needs 'keys', a non-empty list of --verify-key names")
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise PolicyError(f"{where} names key(s) {', '.join(unknown)} that no --verify-key defines")
    mode_text = raw.get("mode", Mode.ENFORCE.value)
    try:
        mode = Mode(mode_text)
    except ValueError:
        raise PolicyError(f"{where} has mode {mode_text!r}; use enforce or warn") from None
    match = match.strip()
    return Rule(match, tuple(keys), mode, glob_pattern(match))


def load_policy(
    path: Path | None, keys: Collection[str], *, unmatched_deny: bool = False
) -> Policy:
    """Read ``--verify-policy`` (no file: no rules); :class:`PolicyError` on any problem."""
    if path is None:
        return Policy((), unmatched_deny, frozenset(keys))
    data = read_capped(path, MAX_POLICY_FILE_BYTES, "policy file", PolicyError)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise PolicyError(f"policy file {path} is not UTF-8 text") from None
    return parse_policy(text, f"policy file {path}", keys, unmatched_deny=unmatched_deny)
