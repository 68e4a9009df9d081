"""Run a real OCI registry (Debian's ``docker-registry``, distribution 2.8) for tests.

The registry listens on 127.0.0.1 with a port the kernel picks (``http.addr`` is
``127.0.0.1:0``; the actual port is read from the registry's "listening on" log line),
keeps its blobs in a filesystem directory, allows deletes, and can require htpasswd
Basic auth.

Request counting uses the registry's access log (Apache combined format, one line per
request, written to the process's stdout which we send to a file).  A line is written
when the handler returns, which can be a moment after the client saw the response, so
every counting method first *synchronises*: it sends a sentinel request and waits until
that request's line is in the log.  Sentinel requests are never counted.

Usage::

    with Registry(tmp_dir, auth=True) as reg:
        mark = reg.mark()
        ...  # pull something
        assert reg.blob_gets(digest, since=mark) == 1
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO
from urllib.parse import unquote, urlsplit

import requests

DOCKER_REGISTRY = "/usr/bin/docker-registry"
HTPASSWD = "/usr/bin/htpasswd"
SETPRIV = "/usr/bin/setpriv"

_SYNC_PARAM = "csi-wasm-test-sync"

# 127.0.0.1 - - [22/Nov/2026:02:18:51 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
_ACCESS_RE = re.compile(
    r"^(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]*)\] "
    r'"(?P<method>[A-Z]+) (?P<uri>\S+) [^"]*" (?P<status>\d{3}) (?P<size>\d+|-)'
    r'(?: "(?P<referer>[^"]*)" "(?P<agent>.*)")?'
)
_LISTENING_RE = re.compile(r"listening on (?:\[[^\]]*\]|[^:\s]*):(?P<port>\d+)")

_live: weakref.WeakSet[Registry] = weakref.WeakSet()


def _kill_leftovers() -> None:
    for reg in list(_live):
        reg.close()


atexit.register(_kill_leftovers)


class RegistryError(RuntimeError):
    """The registry process failed to start or misbehaved."""


@dataclass(frozen=True)
class AccessRecord:
    """One request as logged by the registry's access log."""

    method: str
    uri: str  # as sent, with query string
    path: str  # percent-decoded path, no query string
    status: int
    size: int
    user_agent: str


def _parse_access_line(line: str) -> AccessRecord | None:
    m = _ACCESS_RE.match(line)
    if m is None:
        return None
    uri = m["uri"]
    size = m["size"]
    return AccessRecord(
        method=m["method"],
        uri=uri,
        path=unquote(urlsplit(uri).path),
        status=int(m["status"]),
        size=0 if size == "-" else int(size),
        user_agent=m["agent"] or "",
    )


def make_htpasswd_line(username: str, password: str) -> str:
    """A bcrypt htpasswd line, made by apache2-utils' ``htpasswd``.

    Cost 4 (the minimum): the registry checks the hash on *every* request, and the
    default cost would add milliseconds to each one.
    """
    out = subprocess.run(
        [HTPASSWD, "-B", "-C", "4", "-b", "-n", username, password],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    line = out.strip()
    if not line.startswith(f"{username}:$2"):
        raise RegistryError(f"unexpected htpasswd output: {out!r}")
    return line + "\n"


class Registry:
    """A ``docker-registry`` subprocess on 127.0.0.1.

    ``workdir`` holds the config, the storage and the logs; a temporary directory is
    made (and removed by :meth:`close`) when it is not given.  :meth:`stop` keeps the
    storage and the port, so :meth:`start` can bring the same registry back (handy to
    test outages; the restart fails if something else took the port meanwhile).
    Never stop the session-wide fixtures: make a private ``Registry`` for that.

    ``proxy_of`` (an origin's URL) makes it a pull-through cache of that origin
    (distribution's ``proxy.remoteurl``, as Harbor's proxy cache): it answers pulls from
    its storage and fetches what it lacks from the origin once. Distribution 2.8 keeps
    fetched content for a fixed week; a tag is looked up on the origin at every manifest
    request and the cached one is served only while the origin cannot be reached.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        auth: bool = False,
        username: str = "csi-wasm",
        password: str | None = None,
        start_timeout: float = 30.0,
        proxy_of: str | None = None,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="registry-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir = self.workdir / "storage"
        self.config_path = self.workdir / "config.yml"
        self.access_log_path = self.workdir / "access.log"
        self.app_log_path = self.workdir / "registry.log"
        self.htpasswd_path = self.workdir / "htpasswd"
        self.auth_enabled = auth
        self.username: str | None = username if auth else None
        self.password: str | None = (password or secrets.token_urlsafe(12)) if auth else None
        self.start_timeout = start_timeout
        self.proxy_of = proxy_of
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_files: list[IO[bytes]] = []
        self._lock = threading.Lock()
        self._records: list[AccessRecord] = []
        self._log_offset = 0
        self._partial = b""

    # -- addresses and credentials ------------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of an image reference."""
        if self.port is None:
            raise RegistryError("registry was never started")
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{self.host}"

    @property
    def auth(self) -> tuple[str, str] | None:
        """``(username, password)`` for the htpasswd registry, ``None`` when anonymous."""
        if self.username is None or self.password is None:
            return None
        return (self.username, self.password)

    @property
    def credentials(self) -> tuple[str, str]:
        """``(username, password)``; raises for an anonymous registry."""
        auth = self.auth
        if auth is None:
            raise RegistryError("this registry has no authentication")
        return auth

    def reference(self, repo: str, ref: str) -> str:
        """``host/repo:tag`` or ``host/repo@sha256:...``."""
        sep = "@" if ref.startswith("sha256:") else ":"
        return f"{self.host}/{repo}{sep}{ref}"

    # -- lifecycle ------------------------------------------------------------------

    def _write_config(self) -> None:
        addr = f"127.0.0.1:{self.port or 0}"
        config: dict[str, object] = {
            "version": "0.1",
            "log": {
                "level": "info",
                "formatter": "json",
                "accesslog": {"disabled": False},
            },
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": addr,
                "secret": secrets.token_hex(16),
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
        }
        if self.proxy_of is not None:
            config["proxy"] = {"remoteurl": self.proxy_of}
        if self.auth_enabled:
            assert self.username is not None and self.password is not None
            self.htpasswd_path.write_text(make_htpasswd_line(self.username, self.password))
            config["auth"] = {
                "htpasswd": {"realm": "csi-wasm-test", "path": str(self.htpasswd_path)}
            }
        # JSON is YAML: no YAML library needed and no quoting surprises.
        self.config_path.write_text(json.dumps(config, indent=2))

    def start(self) -> Registry:
        """Start the process and wait until ``/v2/`` answers 200 (or 401 with auth)."""
        if self.is_running():
            return self
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        app_start = self.app_log_path.stat().st_size if self.app_log_path.exists() else 0
        access_log = self.access_log_path.open("ab")
        app_log = self.app_log_path.open("ab")
        self._log_files = [access_log, app_log]
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        argv = [DOCKER_REGISTRY, "serve", str(self.config_path)]
        # Kill the registry if pytest dies without running finalizers or atexit
        # (SIGKILL, OOM).  PDEATHSIG fires when the *thread* that forked exits, so only
        # use it from the main thread, where pytest sets fixtures up.
        if Path(SETPRIV).exists() and threading.current_thread() is threading.main_thread():
            argv = [SETPRIV, "--pdeathsig", "KILL", "--", *argv]
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=access_log,
            stderr=app_log,
            env=env,
            start_new_session=True,  # Ctrl-C in the terminal goes to pytest only
        )
        _live.add(self)
        try:
            self.port = self._wait_for_port(app_start)
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_port(self, offset: int) -> int:
        deadline = time.monotonic() + self.start_timeout
        while True:
            with self.app_log_path.open("rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", "replace")
            for line in text.splitlines():
                with contextlib.suppress(ValueError):
                    msg = json.loads(line).get("msg", "")
                    m = _LISTENING_RE.search(str(msg))
                    if m is not None:
                        return int(m["port"])
            self._check_alive()
            if time.monotonic() > deadline:
                raise RegistryError(f"registry did not log its port:\n{self.tail_log()}")
            # Nothing to block on for "a line was appended to a file": poll.
            time.sleep(0.01)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last: object = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                r = requests.get(f"{self.url}/v2/", timeout=2)
            except requests.ConnectionError as exc:
                last = exc
            else:
                if r.status_code in (200, 401):
                    return
                last = r.status_code
            time.sleep(0.01)
        raise RegistryError(f"registry never answered /v2/ (last: {last!r}):\n{self.tail_log()}")

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise RegistryError(f"registry exited with {self._proc.returncode}:\n{self.tail_log()}")

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL).  Storage, port and logs are kept."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            self._proc = None
        for f in self._log_files:
            f.close()
        self._log_files = []
        _live.discard(self)

    def close(self) -> None:
        """Stop, and remove the work directory if this object made it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        kind = "htpasswd" if self.auth_enabled else "anonymous"
        return f"<Registry {self.url if self.port else '?'} {kind} {state}>"

    # -- storage ----------------------------------------------------------------------

    def blob_data_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob (overwrite it to serve corrupt data)."""
        algo, _, hexdigest = digest.partition(":")
        return (
            self.storage_dir
            / "docker/registry/v2/blobs"
            / algo
            / hexdigest[:2]
            / hexdigest
            / "data"
        )

    def plant_blob(self, repo: str, digest: str, data: bytes) -> None:
        """Make the registry believe ``repo`` has blob ``digest`` (holding ``data``).

        For pushing a manifest whose blobs nobody has (a signed fixture's): the
        registry only checks that they exist. Serving it yields ``data``, which does not
        hash to ``digest``.
        """
        data_path = self.blob_data_path(digest)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        data_path.write_bytes(data)
        algo, _, hexdigest = digest.partition(":")
        link = (
            self.storage_dir
            / "docker/registry/v2/repositories"
            / repo
            / "_layers"
            / algo
            / hexdigest
            / "link"
        )
        link.parent.mkdir(parents=True, exist_ok=True)
        link.write_text(digest)

    # -- access log -------------------------------------------------------------------

    def _read_new_records(self) -> None:
        with self._lock:
            if not self.access_log_path.exists():
                return
            with self.access_log_path.open("rb") as f:
                f.seek(self._log_offset)
                chunk = f.read()
            self._log_offset += len(chunk)
            data = self._partial + chunk
            *lines, self._partial = data.split(b"\n")
            for raw in lines:
                rec = _parse_access_line(raw.decode("utf-8", "replace"))
                if rec is not None:
                    self._records.append(rec)

    def sync(self, timeout: float = 10.0) -> None:
        """Wait until every request answered so far is in the access log.

        Sends ``GET /v2/?<sentinel>`` and waits for its log line.  Call it only after
        the requests you want to count have *completed*.
        """
        if not self.is_running():
            self._read_new_records()  # a stopped registry has flushed everything
            return
        self._read_new_records()
        with self._lock:
            start = len(self._records)
        token = secrets.token_hex(8)
        requests.get(f"{self.url}/v2/", params={_SYNC_PARAM: token}, timeout=timeout)
        needle = f"{_SYNC_PARAM}={token}"
        deadline = time.monotonic() + timeout
        while True:
            self._read_new_records()
            with self._lock:
                if any(needle in r.uri for r in self._records[start:]):
                    return
            if time.monotonic() > deadline:
                raise RegistryError(f"sentinel request never logged:\n{self.tail_log()}")
            time.sleep(0.005)

    def records(self, *, since: int = 0) -> list[AccessRecord]:
        """All requests served (after :meth:`sync`), sentinels excluded.

        ``since`` is a value from :meth:`mark`; it indexes the raw log including
        sentinel lines, so only ever pass a value :meth:`mark` returned.
        """
        self.sync()
        with self._lock:
            recs = self._records[since:]
        return [r for r in recs if _SYNC_PARAM not in r.uri]

    def mark(self) -> int:
        """A position in the log: pass it as ``since=`` to count only later requests."""
        self.sync()
        with self._lock:
            return len(self._records)

    def requests_matching(
        self,
        method: str,
        path_regex: str,
        *,
        status: int | None = None,
        since: int = 0,
    ) -> int:
        """Count requests whose method equals ``method`` and whose percent-decoded path
        (no query string) *fully* matches ``path_regex``; optionally only one status."""
        pattern = re.compile(path_regex)
        return sum(
            1
            for r in self.records(since=since)
            if r.method == method.upper()
            and pattern.fullmatch(r.path)
            and (status is None or r.status == status)
        )

    def blob_gets(
        self,
        digest: str,
        *,
        repo: str | None = None,
        status: int | None = None,
        since: int = 0,
    ) -> int:
        """How many ``GET /v2/<repo>/blobs/<digest>`` (HEADs are not counted).

        With auth, a client's unauthenticated first try (401) counts too unless you
        pass ``status=200``.
        """
        repo_re = re.escape(repo) if repo is not None else ".+"
        return self.requests_matching(
            "GET", rf"/v2/{repo_re}/blobs/{re.escape(digest)}", status=status, since=since
        )

    def manifest_gets(
        self,
        ref: str,
        *,
        repo: str | None = None,
        status: int | None = None,
        since: int = 0,
    ) -> int:
        """How many ``GET /v2/<repo>/manifests/<tag-or-digest>``."""
        repo_re = re.escape(repo) if repo is not None else ".+"
        return self.requests_matching(
            "GET", rf"/v2/{repo_re}/manifests/{re.escape(ref)}", status=status, since=since
        )

    def tail_log(self, lines: int = 40) -> str:
        """The last lines of the application log and of the access log, for debugging."""

        def tail(path: Path) -> str:
            if not path.exists():
                return "(none)"
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - 256 * lines))
                text = f.read().decode("utf-8", "replace")
            return "\n".join(text.splitlines()[-lines:])

        return (
            f"--- {self.app_log_path} ---\n{tail(self.app_log_path)}\n"
            f"--- {self.access_log_path} ---\n{tail(self.access_log_path)}"
        )


@contextlib.contextmanager
def running_registry(
    workdir: Path | None = None, *, auth: bool = False, proxy_of: str | None = None
) -> Iterator[Registry]:
    """Context manager form, for tests that need a registry of their own."""
    reg = Registry(workdir, auth=auth, proxy_of=proxy_of)
    try:
        yield reg.start()
    finally:
        reg.close()
