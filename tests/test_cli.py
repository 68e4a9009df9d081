"""Tests of csi_wasm.cli: flags, environment variables, durations and sizes."""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from csi_wasm import __version__
from csi_wasm.cli import (
    build_parser,
    format_size,
    main,
    parse_duration,
    parse_size,
    settings_from,
)
from csi_wasm.settings import (
    DEFAULT_DRIVER_NAME,
    DEFAULT_MAX_MODULE_BYTES,
    DEFAULT_PULL_TIMEOUT_SECONDS,
    CacheSettings,
    ServeSettings,
)
from csi_wasm.verify import Abi

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No CSI_WASM_* or NODE_NAME from the machine running the tests; logging restored."""
    for name in list(os.environ):
        if name.startswith("CSI_WASM_") or name == "NODE_NAME":
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def settings(argv: list[str], env: Mapping[str, str] | None = None) -> ServeSettings:
    args = build_parser(env or {}).parse_args(["serve", *argv])
    return settings_from(args)


# --version and --help


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"csi-wasm {__version__}"


def test_serve_help_lists_flags_and_env(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--endpoint",
        "--node-id",
        "--root",
        "--kubelet-dir",
        "--driver-name",
        "--metrics-address",
        "--insecure-registry",
        "--registry-ca",
        "--max-module-bytes",
        "--pull-timeout",
        "--cache-max-bytes",
        "--cache-ttl",
        "--gc-interval",
    ):
        assert flag in out
        assert "CSI_WASM_" + flag[2:].replace("-", "_").upper() in out


def _help_entries(out: str) -> dict[str, str]:
    """``--flag`` -> its help text (one line), from argparse's formatted help."""
    entries: dict[str, str] = {}
    current = None
    for line in out.split("options:", 1)[1].splitlines():
        match = re.match(r"  (-\S+?)(?:,|\s|$)", line)
        if match:
            current = match.group(1)
            entries[current] = ""
        if current is not None:
            entries[current] += " " + line.strip()
    return {flag: " ".join(text.split()) for flag, text in entries.items()}


def _subcommands() -> list[str]:
    (commands,) = [
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    return sorted(commands.choices)


@pytest.mark.parametrize("command", _subcommands())
def test_help_shows_every_flags_default(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    entries = _help_entries(capsys.readouterr().out)
    assert len(entries) > 1, "no flags found in the help"
    for flag, text in entries.items():
        if flag == "-h":
            continue
        assert "(default: " in text, f"{command} {flag}: no default shown in {text!r}"


def test_help_shows_the_defaults_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    entries = _help_entries(capsys.readouterr().out)
    assert "(default: 10m; env CSI_WASM_PULL_TIMEOUT)" in entries["--pull-timeout"]
    assert "(default: 256Mi; env CSI_WASM_MAX_MODULE_BYTES)" in entries["--max-module-bytes"]
    assert "(default: 5Gi; env CSI_WASM_CACHE_MAX_BYTES)" in entries["--cache-max-bytes"]
    assert "(default: none; env CSI_WASM_REGISTRY_MIRROR)" in entries["--registry-mirror"]
    assert f"(default: {socket.gethostname()}; env" in entries["--node-id"]
    with pytest.raises(SystemExit):
        main(["gc", "--help"])
    assert "(default: off)" in _help_entries(capsys.readouterr().out)["--dry-run"]


def test_help_shows_a_default_from_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser({"CSI_WASM_PULL_TIMEOUT": "90s", "CSI_WASM_METRICS_ADDRESS": ""})
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--help"])
    entries = _help_entries(capsys.readouterr().out)
    assert "(default: 90s; env CSI_WASM_PULL_TIMEOUT)" in entries["--pull-timeout"]
    assert "(default: empty; env CSI_WASM_METRICS_ADDRESS)" in entries["--metrics-address"]


@pytest.mark.parametrize(
    ("size", "text"),
    [(5 * 1024**3, "5Gi"), (256 * 1024**2, "256Mi"), (3072, "3Ki"), (1000, "1000")],
)
def test_format_size_reads_back(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_python_dash_m_version() -> None:
    env = {**os.environ, "PYTHONPATH": os.fspath(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "csi_wasm", "--version"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"csi-wasm {__version__}"


def test_python_dash_m_bad_flag_exits_2() -> None:
    env = {**os.environ, "PYTHONPATH": os.fspath(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "csi_wasm", "serve", "--pull-timeout", "soon"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "'soon' is not a duration" in proc.stderr
    assert "Traceback" not in proc.stderr


# defaults, environment and command line


def test_defaults() -> None:
    s = settings([])
    assert s.endpoint == "unix:///csi/csi.sock"
    assert s.node.node_id == socket.gethostname()
    assert s.node.root == Path("/var/lib/csi-wasm")
    assert s.node.kubelet_dir == Path("/var/lib/kubelet")
    assert s.node.pods_dir == Path("/var/lib/kubelet/pods")
    assert s.node.driver_name == DEFAULT_DRIVER_NAME == "wasm.csi.dev"
    assert s.metrics_address == ":9090"
    assert s.pull.insecure_registries == frozenset()
    assert s.pull.registry_ca is None
    assert s.pull.max_module_bytes == DEFAULT_MAX_MODULE_BYTES == 268435456
    assert s.pull.pull_timeout == DEFAULT_PULL_TIMEOUT_SECONDS == 600.0
    assert s.log_level == "info"


def test_node_id_defaults_to_node_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings([], {"NODE_NAME": "worker-7"}).node.node_id == "worker-7"
    assert settings([], {"NODE_NAME": ""}).node.node_id == socket.gethostname()


def test_environment_variables() -> None:
    env = {
        "CSI_WASM_ROOT": "/data/csi-wasm",
        "CSI_WASM_PULL_TIMEOUT": "90s",
        "CSI_WASM_INSECURE_REGISTRY": "a:5000,b",
        "CSI_WASM_MAX_MODULE_BYTES": "256Mi",
        "CSI_WASM_ENDPOINT": "unix:///run/csi.sock",
        "CSI_WASM_NODE_ID": "node-a",
        "CSI_WASM_KUBELET_DIR": "/var/snap/kubelet",
        "CSI_WASM_DRIVER_NAME": "wasm.example.com",
        "CSI_WASM_METRICS_ADDRESS": "",
        "CSI_WASM_REGISTRY_CA": "/etc/ca.pem",
        "CSI_WASM_LOG_LEVEL": "debug",
    }
    s = settings([], env)
    assert s.node.root == Path("/data/csi-wasm")
    assert s.pull.pull_timeout == 90.0
    assert s.pull.insecure_registries == frozenset({"a:5000", "b"})
    assert s.pull.max_module_bytes == 256 * 1024 * 1024
    assert s.endpoint == "unix:///run/csi.sock"
    assert s.node.node_id == "node-a"
    assert s.node.kubelet_dir == Path("/var/snap/kubelet")
    assert s.node.driver_name == "wasm.example.com"
    assert s.metrics_address == ""  # empty disables metrics
    assert s.pull.registry_ca == "/etc/ca.pem"
    assert s.log_level == "debug"


def test_repeatable_flag_from_env_ignores_blanks() -> None:
    s = settings([], {"CSI_WASM_INSECURE_REGISTRY": " a:5000 , ,b,"})
    assert s.pull.insecure_registries == frozenset({"a:5000", "b"})


def test_command_line_wins_over_environment() -> None:
    env = {
        "CSI_WASM_ROOT": "/from/env",
        "CSI_WASM_PULL_TIMEOUT": "90s",
        "CSI_WASM_MAX_MODULE_BYTES": "1Mi",
        "CSI_WASM_LOG_LEVEL": "debug",
        "CSI_WASM_METRICS_ADDRESS": ":1234",
    }
    s = settings(
        [
            "--root",
            "/from/flag",
            "--pull-timeout",
            "2m",
            "--max-module-bytes",
            "2Mi",
            "--log-level",
            "error",
            "--metrics-address",
            "",
        ],
        env,
    )
    assert s.node.root == Path("/from/flag")
    assert s.pull.pull_timeout == 120.0
    assert s.pull.max_module_bytes == 2 * 1024 * 1024
    assert s.log_level == "error"
    assert s.metrics_address == ""


def test_repeated_flag_on_command_line() -> None:
    s = settings(["--insecure-registry", "a:5000", "--insecure-registry", "b"])
    assert s.pull.insecure_registries == frozenset({"a:5000", "b"})


def test_command_line_wins_for_repeatable_flag() -> None:
    s = settings(["--insecure-registry", "c"], {"CSI_WASM_INSECURE_REGISTRY": "a:5000,b"})
    assert s.pull.insecure_registries == frozenset({"c"})


def test_parser_default_env_is_not_mutated_across_parses() -> None:
    parser = build_parser({"CSI_WASM_INSECURE_REGISTRY": "a"})
    parser.parse_args(["serve", "--insecure-registry", "x"])
    again = settings_from(parser.parse_args(["serve"]))
    assert again.pull.insecure_registries == frozenset({"a"})


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("CSI_WASM_PULL_TIMEOUT", "soon", "'soon' is not a duration"),
        ("CSI_WASM_PULL_TIMEOUT", "0s", "must be positive"),
        ("CSI_WASM_MAX_MODULE_BYTES", "lots", "'lots' is not a size"),
    ],
)
def test_bad_environment_value_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    value: str,
    complaint: str,
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as info:
        main(["serve"])
    assert info.value.code == 2
    assert complaint in capsys.readouterr().err


def test_bad_flag_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--max-module-bytes", "1.5Gi"])
    assert info.value.code == 2
    assert "'1.5Gi' is not a size" in capsys.readouterr().err


def test_bad_log_level_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--log-level", "verbose"])
    assert info.value.code == 2
    assert "log level 'verbose' is not one of" in capsys.readouterr().err


def test_bad_log_level_from_env_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSI_WASM_LOG_LEVEL", "verbose")
    with pytest.raises(SystemExit) as info:
        main(["serve"])
    assert info.value.code == 2


# durations and sizes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("1h", 3600.0),
        ("2h0m5s", 7205.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("0.5", 0.5),
        (" 45s ", 45.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "  ", "soon", "10x", "m", "h", "s", "1d", "10 m", "1m1h", "-5s", "5ms", "1h-1m"]
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["0", "0s", "0h0m0s", "-1"])
def test_parse_duration_refuses_non_positive(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="must be positive"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["nan", "inf", "Infinity"])
def test_parse_duration_refuses_nan_and_inf(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("268435456", 268435456),
        ("256Mi", 256 * 1024**2),
        ("256mi", 256 * 1024**2),
        ("256M", 256 * 1024**2),
        ("256MiB", 256 * 1024**2),
        ("64k", 64 * 1024),
        ("64Ki", 64 * 1024),
        ("1Gi", 1024**3),
        ("1 Gi", 1024**3),
        ("512B", 512),
        (" 1024 ", 1024),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "1.5Gi", "-1", "1Ti", "Mi", "1e6", "0x10"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize("text", ["0", "0Mi"])
def test_parse_size_refuses_zero(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


# cache flags, csi-wasm gc and csi-wasm fsck


def test_cache_defaults_and_environment() -> None:
    s = settings([])
    assert s.cache == CacheSettings()
    assert (s.cache.max_bytes, s.cache.ttl, s.cache.gc_interval) == (5 * 1024**3, 7 * 86400, 600)
    env = {
        "CSI_WASM_CACHE_MAX_BYTES": "1Gi",
        "CSI_WASM_CACHE_TTL": "24h",
        "CSI_WASM_GC_INTERVAL": "1m",
    }
    s = settings([], env)
    assert (s.cache.max_bytes, s.cache.ttl, s.cache.gc_interval) == (1024**3, 86400, 60)
    s = settings(["--cache-max-bytes", "2Gi", "--cache-ttl", "1h"], env)
    assert (s.cache.max_bytes, s.cache.ttl) == (2 * 1024**3, 3600)


def test_gc_and_fsck_take_root_and_cache_flags_from_the_environment() -> None:
    env = {"CSI_WASM_ROOT": "/data", "CSI_WASM_CACHE_TTL": "2h", "CSI_WASM_CACHE_MAX_BYTES": "1Mi"}
    args = build_parser(env).parse_args(["gc", "--dry-run"])
    assert (args.root, args.cache_ttl, args.cache_max_bytes, args.dry_run) == (
        "/data",
        7200.0,
        1024**2,
        True,
    )
    assert build_parser(env).parse_args(["fsck"]).root == "/data"
    assert build_parser({}).parse_args(["gc"]).dry_run is False


def test_gc_and_fsck_run_against_a_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gc", "--root", str(tmp_path / "empty")]) == 2
    root = tmp_path / "root"
    (root / "modules").mkdir(parents=True)
    assert main(["gc", "--root", str(root), "--dry-run"]) == 0
    assert "would free 0 bytes" in capsys.readouterr().out
    assert main(["fsck", "--root", str(root)]) == 0
    assert "checked 0 module(s)" in capsys.readouterr().out


def test_gc_refuses_a_bad_size(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["gc", "--cache-max-bytes", "lots"])
    assert info.value.code == 2
    assert "'lots' is not a size" in capsys.readouterr().err


def test_gc_takes_no_budget_and_no_ttl() -> None:
    args = build_parser({}).parse_args(["gc", "--cache-max-bytes", "0", "--cache-ttl", "0s"])
    assert (args.cache_max_bytes, args.cache_ttl) == (0, 0.0)


# prefetch file and the catalog


def test_catalog_flags_defaults_and_environment() -> None:
    s = settings([])
    assert (s.prefetch_file, s.prefetch_refresh, s.catalog_grace) == (None, 3600.0, 86400.0)
    env = {
        "CSI_WASM_PREFETCH_FILE": "/etc/csi-wasm/prefetch.json",
        "CSI_WASM_PREFETCH_REFRESH": "5m",
        "CSI_WASM_CATALOG_GRACE": "48h",
    }
    s = settings([], env)
    assert (s.prefetch_file, s.prefetch_refresh, s.catalog_grace) == (
        Path("/etc/csi-wasm/prefetch.json"),
        300.0,
        172800.0,
    )
    s = settings(["--prefetch-refresh", "30s", "--catalog-grace", "1h"], env)
    assert (s.prefetch_refresh, s.catalog_grace) == (30.0, 3600.0)


def test_catalog_command_takes_root_and_json() -> None:
    args = build_parser({"CSI_WASM_ROOT": "/data"}).parse_args(["catalog", "--json"])
    assert (args.command, args.root, args.json) == ("catalog", "/data", True)


def test_kubeconfig_flag_then_kubeconfig_environment() -> None:
    assert settings([]).kubeconfig is None
    assert settings([], {"KUBECONFIG": "/home/me/.kube/config"}).kubeconfig == Path(
        "/home/me/.kube/config"
    )
    s = settings(["--kubeconfig", "/etc/csi-wasm/kubeconfig"], {"KUBECONFIG": "/x"})
    assert s.kubeconfig == Path("/etc/csi-wasm/kubeconfig")


# --default-abi


def test_default_abi_flag_and_environment() -> None:
    assert settings([]).pull.default_abi is Abi.PROXY_WASM
    assert settings(["--default-abi", "any"]).pull.default_abi is Abi.ANY
    assert settings([], {"CSI_WASM_DEFAULT_ABI": "any"}).pull.default_abi is Abi.ANY
    env = {"CSI_WASM_DEFAULT_ABI": "any"}
    assert settings(["--default-abi", "proxy-wasm"], env).pull.default_abi is Abi.PROXY_WASM


@pytest.mark.parametrize("value", ["wasi", "", "ANY"])
def test_unknown_default_abi_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser({}).parse_args(["serve", "--default-abi", value])
    assert info.value.code == 2
    assert "is not one of: proxy-wasm, any" in capsys.readouterr().err
