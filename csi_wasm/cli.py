"""Command line: ``csi-wasm serve``, ``gc``, ``fsck`` and ``catalog``.

Every flag can also come from the environment as ``CSI_WASM_<FLAG_IN_UPPER_SNAKE>``
(``--pull-timeout`` -> ``CSI_WASM_PULL_TIMEOUT``); repeatable flags take a comma-
separated list there. A flag on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from csi_wasm import __version__, logs
from csi_wasm.attributes import parse_abi
from csi_wasm.errors import CsiWasmError
from csi_wasm.faults import explain
from csi_wasm.settings import (
    DEFAULT_CACHE_MAX_BYTES,
    DEFAULT_DRIVER_NAME,
    DEFAULT_GC_INTERVAL_SECONDS,
    DEFAULT_MAX_MODULE_BYTES,
    CacheSettings,
    NodeSettings,
    PullSettings,
    ServeSettings,
    VerifySettings,
)
from csi_wasm.verify.abi import Abi

if TYPE_CHECKING:
    from csi_wasm.tools.common import RegistryAccess

ENV_PREFIX = "CSI_WASM_"
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``90``, ``90s``, ``10m``, ``1h30m``."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        match = _DURATION.fullmatch(text)
        if not text or match is None:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a duration like 90s, 10m or 1h30m"
            ) from None
        hours, minutes, secs = (float(part or 0) for part in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration {text!r} must be positive and finite")
    return seconds


def parse_size(text: str) -> int:
    units = {"": 1, "k": 1024, "ki": 1024, "m": 1024**2, "mi": 1024**2, "g": 1024**3, "gi": 1024**3}
    match = re.fullmatch(r"(\d+)\s*([kKmMgG]i?)?[bB]?", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 268435456 or 256Mi")
    size = int(match.group(1)) * units[(match.group(2) or "").lower()]
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return size


def format_size(size: int) -> str:
    """``size`` as :func:`parse_size` reads it, in the largest binary unit that divides it."""
    for unit, factor in (("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def parse_size_or_zero(text: str) -> int:
    """A size, where 0 is allowed (``--cache-max-bytes 0``: keep nothing unused)."""
    return 0 if text.strip() in ("0", "0B", "0b") else parse_size(text)


def parse_duration_or_zero(text: str) -> float:
    """A duration, where 0 is allowed (``--cache-ttl 0s``: unused is evicted at once)."""
    return 0.0 if text.strip() in ("0", "0s", "0m", "0h") else parse_duration(text)


def parse_default_abi(text: str) -> Abi:
    try:
        return parse_abi(text.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"abi {error}") from None


def parse_log_level(text: str) -> str:
    if text not in logs.LEVELS:
        raise argparse.ArgumentTypeError(
            f"log level {text!r} is not one of {', '.join(logs.LEVELS)}"
        )
    return text


class _AppendOverEnvironment(argparse.Action):
    """Repeatable flag whose default comes from the environment: the command line replaces it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        current = getattr(namespace, self.dest)
        if current is self.default:
            current = []
        setattr(namespace, self.dest, [*current, values])


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


class _DefaultsShown(argparse.HelpFormatter):
    """Help that shows every option's default, before the environment variable it reads."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS:
            return text
        shown = "default: " + _shown_default(action.default).replace("%", "%%")
        env = _ENV_SUFFIX.search(text)
        if env is not None:
            return f"{text[: env.start()]} ({shown}; {env.group(1)})"
        return f"{text} ({shown})"


_ENV_SUFFIX = re.compile(r" \((env \w+)\)$")


def _shown_default(default: object) -> str:
    if default is None or default == []:
        return "none"
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, list | tuple):
        return ",".join(map(str, default))
    return str(default) if default != "" else "empty"


class _Parser(argparse.ArgumentParser):
    """Our parser; subcommands get the same class, so their help shows defaults too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsShown)
        super().__init__(*args, **kwargs)


FlagAdder = Callable[..., None]


def _flag_adder(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> FlagAdder:
    """``flag(name, default=, help=, ...)``: an option whose default may come from ``env``."""

    def flag(name: str, *, default: object, help: str, **kwargs: Any) -> None:
        # A string default goes through ``type`` like a command-line value, so a bad
        # environment value is a usage error too.
        from_env = env.get(_env_name(name))
        if from_env is not None:
            if kwargs.get("action") is _AppendOverEnvironment:
                default = [item.strip() for item in from_env.split(",") if item.strip()]
            else:
                default = from_env
        parser.add_argument(name, default=default, help=f"{help} (env {_env_name(name)})", **kwargs)

    return flag


def _root_flag(flag: FlagAdder) -> None:
    flag("--root", default="/var/lib/csi-wasm", help="directory the driver owns: cache, records")


def _cache_flags(flag: FlagAdder) -> None:
    flag(
        "--cache-max-bytes",
        default=format_size(DEFAULT_CACHE_MAX_BYTES),
        type=parse_size_or_zero,
        help="evict unused modules, least recently used first, while the cache holds more "
        "(5Gi style accepted)",
    )
    flag(
        "--cache-ttl",
        default="168h",
        type=parse_duration_or_zero,
        help="evict a module unused for longer than this",
    )


def _log_flag(flag: FlagAdder) -> None:
    flag(
        "--log-level",
        default="info",
        type=parse_log_level,
        metavar="{" + ",".join(logs.LEVELS) + "}",
        help="log verbosity",
    )


def _registry_flags(flag: FlagAdder, docker_config_help: str, *, mirrors: bool = True) -> None:
    flag(
        "--insecure-registry",
        default=[],
        action=_AppendOverEnvironment,
        metavar="HOST[:PORT]",
        help="registry reached over plain HTTP (repeatable)",
    )
    flag("--registry-ca", default=None, metavar="FILE", help="PEM bundle of CAs for registries")
    if mirrors:
        flag(
            "--registry-mirror",
            default=[],
            action=_AppendOverEnvironment,
            metavar="SOURCE=MIRROR[/PREFIX]",
            help="pull through MIRROR first, then SOURCE (repeatable)",
        )
    flag("--docker-config", default=None, metavar="FILE", help=docker_config_help)


def _add_flags(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    flag = _flag_adder(parser, env)
    flag("--endpoint", default="unix:///csi/csi.sock", help="CSI socket, unix:///path")
    flag(
        "--node-id",
        default=env.get("NODE_NAME") or socket.gethostname(),
        help="node name reported to kubelet ($NODE_NAME, else the hostname)",
    )
    _root_flag(flag)
    flag("--kubelet-dir", default="/var/lib/kubelet", help="kubelet's root directory")
    flag("--driver-name", default=DEFAULT_DRIVER_NAME, help="CSI driver name")
    flag(
        "--metrics-address",
        default=":9090",
        help="host:port for Prometheus /metrics, /healthz, /readyz; empty to disable",
    )
    _registry_flags(
        flag, "docker config.json with node credentials, used for registries a pod has none for"
    )
    flag(
        "--credential-recheck",
        default="1h",
        type=parse_duration,
        help="how long a verified pull secret may reuse a private cached module before the "
        "registry is asked again",
    )
    flag(
        "--prefetch",
        default=[],
        action=_AppendOverEnvironment,
        metavar="URL",
        help="pull this module before any pod asks, and keep it cached while listed "
        "(repeatable; an https URL takes '#sha256=<hex>')",
    )
    flag(
        "--prefetch-configmap",
        default=None,
        metavar="NAMESPACE/NAME",
        help="a ConfigMap whose key prefetch.json lists more modules to prefetch; watched",
    )
    flag(
        "--kubeconfig",
        default=env.get("KUBECONFIG") or None,
        metavar="FILE",
        help="kubeconfig to reach the API server (Events, the prefetch ConfigMap) from "
        "outside a cluster (default: $KUBECONFIG, else the in-cluster config)",
    )
    flag(
        "--prefetch-file",
        default=None,
        metavar="FILE",
        help="a JSON list like the ConfigMap's prefetch.json (e.g. a mounted ConfigMap); "
        "re-read when it changes",
    )
    flag(
        "--prefetch-refresh",
        default="1h",
        type=parse_duration,
        help="how often listed tags are resolved again (catalog entries follow them)",
    )
    flag(
        "--catalog-grace",
        default="24h",
        type=parse_duration,
        help="how long a module the catalog no longer lists stays under its sha256/",
    )
    flag(
        "--max-module-bytes",
        default=format_size(DEFAULT_MAX_MODULE_BYTES),
        type=parse_size,
        help="largest module or layer accepted, in bytes (256Mi style accepted)",
    )
    flag(
        "--default-abi",
        default=Abi.PROXY_WASM.value,
        type=parse_default_abi,
        metavar="{" + ",".join(abi.value for abi in Abi) + "}",
        help="what a module must be for a volume without an abi attribute: proxy-wasm "
        "(valid, and loadable by Envoy) or any (valid WebAssembly)",
    )
    flag(
        "--pull-timeout",
        default="10m",
        type=parse_duration,
        help="deadline for one pull, e.g. 10m; a pull outlives kubelet's 2-minute call",
    )
    _cache_flags(flag)
    flag(
        "--gc-interval",
        default="10m",
        type=parse_duration,
        help="how often the cache is garbage-collected (a pull short of room also runs it)",
    )
    _verify_flags(flag)
    _log_flag(flag)


def _verify_flags(flag: FlagAdder) -> None:
    flag(
        "--verify-key",
        default=[],
        action=_AppendOverEnvironment,
        metavar="NAME=PATH",
        help="a public key (PEM, as cosign.pub) that may sign modules, named for the policy "
        "and the verifyKeys attribute (repeatable)",
    )
    flag(
        "--verify-policy",
        default=None,
        metavar="FILE",
        help="YAML rules: which registry/repository globs need a signature by which keys, "
        "enforce or warn",
    )
    flag(
        "--verify-unmatched",
        default="allow",
        choices=("allow", "deny"),
        help="what happens to a module no policy rule matches",
    )


def build_parser(env: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="csi-wasm",
        description="Kubernetes CSI node driver that delivers WebAssembly modules to pods.",
    )
    parser.add_argument("--version", action="version", version=f"csi-wasm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve the CSI Identity and Node services")
    _add_flags(serve, env)
    gc = commands.add_parser(
        "gc",
        help="evict unused modules now (what serve does periodically) and print what was freed",
    )
    flag = _flag_adder(gc, env)
    _root_flag(flag)
    _cache_flags(flag)
    gc.add_argument("--dry-run", action="store_true", help="only print what would be freed")
    _log_flag(flag)
    fsck = commands.add_parser(
        "fsck",
        help="re-hash and re-validate every cached module, quarantine any that no longer "
        "matches its digest or is not valid WebAssembly; exit status 1 when one was removed",
    )
    flag = _flag_adder(fsck, env)
    _root_flag(flag)
    _log_flag(flag)
    catalog = commands.add_parser(
        "catalog",
        help="show the node catalog: each entry's module and state; exit status 1 unless "
        "every entry is ready",
    )
    flag = _flag_adder(catalog, env)
    _root_flag(flag)
    catalog.add_argument("--json", action="store_true", help="print JSON")
    _add_tool_commands(commands, env)
    return parser


# -- inspect and push (csi_wasm.tools) -----------------------------------------------

_TOOL_CREDENTIALS = "docker config.json, or a secret's .dockerconfigjson, with registry credentials"
_ABIS = ("proxy-wasm", "any")  # csi_wasm.verify.Abi values; not imported to keep --help fast


def _abi_flag(flag: FlagAdder, judged: str) -> None:
    flag(
        "--abi",
        default="proxy-wasm",
        choices=_ABIS,
        help=f"{judged} as a volume with this 'abi' attribute would be",
    )


def _add_tool_commands(commands: Any, env: Mapping[str, str]) -> None:
    inspect = commands.add_parser(
        "inspect",
        help="resolve and judge a module as serve would; exit status 0 when serve would "
        "serve it, 1 when it would refuse it, 2 on a usage error",
    )
    inspect.add_argument(
        "target",
        metavar="REF|URL|FILE",
        help="what a volume's url names, "
        "or a module file (a path that exists, starts with / ./ ../ or ends in .wasm)",
    )
    flag = _flag_adder(inspect, env)
    flag(
        "--json",
        default="false",
        nargs=0,
        action=_StoreTrue,
        type=parse_bool,
        help="print the report as JSON (fields listed in the README)",
    )
    _registry_flags(flag, _TOOL_CREDENTIALS)
    _abi_flag(flag, "judge the module")
    _verify_flags(flag)  # the node's signature policy, to judge as that node would
    push = commands.add_parser(
        "push",
        help="validate a module as serve would, push it, and print the url and sha256 for a volume",
    )
    push.add_argument("file", metavar="FILE", help="the Wasm module")
    push.add_argument("target", metavar="REF", help="where to push, e.g. ghcr.io/acme/filter:v1")
    flag = _flag_adder(push, env)
    flag(
        "--format",
        default="artifact",
        choices=("artifact", "compat"),
        help="artifact: CNCF Wasm OCI artifact; compat: Istio's compat image (plugin.wasm "
        "in a tar layer)",
    )
    _registry_flags(flag, _TOOL_CREDENTIALS, mirrors=False)
    _abi_flag(flag, "refuse the module")


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


class _StoreTrue(argparse.Action):
    """``store_true`` whose default may come from the environment (through ``type``)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, True)


def _registry_access(args: argparse.Namespace) -> RegistryAccess:
    from csi_wasm.tools.common import RegistryAccess  # noqa: PLC0415 - keep --help fast

    return RegistryAccess(
        insecure_registries=frozenset(args.insecure_registry),
        registry_ca=args.registry_ca,
        docker_config=args.docker_config,
    )


def _run_inspect(args: argparse.Namespace) -> int:
    from csi_wasm.tools.inspect import InspectOptions, inspect_command  # noqa: PLC0415
    from csi_wasm.verify import Abi  # noqa: PLC0415

    return inspect_command(
        InspectOptions(
            target=args.target,
            access=_registry_access(args),
            mirrors=tuple(args.registry_mirror),
            abi=Abi(args.abi),
            as_json=args.json,
            verify=verify_settings_from(args),
        )
    )


def _run_push(args: argparse.Namespace) -> int:
    from csi_wasm.tools.push import PushOptions, push_command  # noqa: PLC0415
    from csi_wasm.verify import Abi  # noqa: PLC0415

    return push_command(
        PushOptions(
            file=args.file,
            target=args.target,
            format=args.format,
            access=_registry_access(args),
            abi=Abi(args.abi),
        )
    )


_TOOLS: dict[str, Callable[[argparse.Namespace], int]] = {
    "inspect": _run_inspect,
    "push": _run_push,
}


def _check_prefetch(args: argparse.Namespace) -> None:
    """Refuse a bad --prefetch or --prefetch-configmap at start-up, as a usage error."""
    from csi_wasm.kube.configmap import parse_configmap_ref  # noqa: PLC0415
    from csi_wasm.prefetch import parse_prefetch_flag  # noqa: PLC0415

    try:
        for value in args.prefetch:
            parse_prefetch_flag(value)
        if args.prefetch_configmap:
            parse_configmap_ref(args.prefetch_configmap)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def settings_from(args: argparse.Namespace) -> ServeSettings:
    _check_prefetch(args)
    return ServeSettings(
        node=NodeSettings(
            node_id=args.node_id,
            root=Path(args.root),
            kubelet_dir=Path(args.kubelet_dir),
            driver_name=args.driver_name,
        ),
        pull=PullSettings(
            insecure_registries=frozenset(args.insecure_registry),
            registry_ca=args.registry_ca,
            max_module_bytes=args.max_module_bytes,
            pull_timeout=args.pull_timeout,
            registry_mirrors=tuple(args.registry_mirror),
            docker_config=args.docker_config,
            credential_recheck=args.credential_recheck,
            default_abi=args.default_abi,
        ),
        cache=cache_settings_from(args),
        verify=verify_settings_from(args),
        prefetch=tuple(args.prefetch),
        prefetch_configmap=args.prefetch_configmap or None,
        prefetch_file=Path(args.prefetch_file) if args.prefetch_file else None,
        prefetch_refresh=args.prefetch_refresh,
        catalog_grace=args.catalog_grace,
        kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
        endpoint=args.endpoint,
        metrics_address=args.metrics_address,
        log_level=args.log_level,
    )


def verify_settings_from(args: argparse.Namespace) -> VerifySettings:
    return VerifySettings(
        keys=tuple(args.verify_key),
        policy=args.verify_policy or None,
        unmatched_deny=args.verify_unmatched == "deny",
    )


def cache_settings_from(args: argparse.Namespace) -> CacheSettings:
    return CacheSettings(
        max_bytes=args.cache_max_bytes,
        ttl=args.cache_ttl,
        gc_interval=getattr(args, "gc_interval", DEFAULT_GC_INTERVAL_SECONDS),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; a failure it cannot go on from is one line on stderr, never a traceback."""
    try:
        return _main(argv)
    except OSError as error:  # e.g. a --root that cannot be created or written
        print(f"csi-wasm: {explain(error)}", file=sys.stderr)
    except CsiWasmError as error:
        print(f"csi-wasm: {error.message}", file=sys.stderr)
    return 1


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tool = _TOOLS.get(args.command)
    if tool is not None:
        return tool(args)
    if args.command == "gc":
        logs.configure(args.log_level)
        from csi_wasm.cache.gc import gc_command  # noqa: PLC0415 - keep --help fast

        return gc_command(Path(args.root), cache_settings_from(args), dry_run=args.dry_run)
    if args.command == "fsck":
        logs.configure(args.log_level)
        from csi_wasm.cache.fsck import fsck_command  # noqa: PLC0415 - keep --help fast

        return fsck_command(Path(args.root))
    if args.command == "catalog":
        from csi_wasm.catalog.command import catalog_command  # noqa: PLC0415 - keep --help fast

        return catalog_command(Path(args.root), as_json=args.json)
    try:
        settings = settings_from(args)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    logs.configure(settings.log_level)
    from csi_wasm.server.serve import serve  # noqa: PLC0415 - grpc import; keep --help fast

    try:
        return serve(settings)
    except ValueError as error:
        print(f"csi-wasm: {error}", file=sys.stderr)
        return 2
