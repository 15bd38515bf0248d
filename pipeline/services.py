"""The services a run needs, probed with a short timeout before anything is written.

An unreachable MLflow server retries for minutes, an unreachable Ray address takes 40 s to end
in a traceback, an offline bucket hangs in its client's retries: each is found here in seconds
instead, as a `ConfigError` naming the key (`tracking.uri`, `ray.address`, `storage.root`), the
address and what to do, before the run's folder, its `.latest` pointer or an MLflow run exist.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, urlsplit

import pyarrow.fs as pafs

from heat.validation import ConfigError
from pipeline import storage
from pipeline.config import RayConfig, StorageConfig, TrackingConfig

TIMEOUT_S = 4.0
"""How long one probe waits for an answer."""

T = TypeVar("T")


class ServiceConfig(Protocol):
    storage: StorageConfig
    tracking: TrackingConfig
    ray: RayConfig


def probe_services(config: ServiceConfig, timeout: float = TIMEOUT_S) -> None:
    """Storage, tracking and Ray, in the order a run first uses them."""
    probe_storage(config.storage.root, timeout)
    probe_tracking(config.tracking.uri, timeout)
    probe_ray(config.ray.address, timeout)


def within(seconds: float, what: str, call: Callable[[], T]) -> T:
    """`call()`, or a TimeoutError if it has not returned after `seconds`. The call runs in a
    daemon thread: a client stuck in its retries cannot hold the process at exit."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name=f"probe {what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def probe_storage(root: str, timeout: float = TIMEOUT_S) -> None:
    """The root is a folder (or missing: runs create it) that this process can reach."""
    try:
        if root.startswith("s3://"):  # its own timeouts, one attempt: no client left hanging
            fs, path = _s3(root, timeout)
            found = fs.get_file_info(path)
        else:
            found = within(timeout, root, lambda: storage.info(root))
    except (OSError, TimeoutError, ValueError) as error:
        raise ConfigError("storage.root", f"cannot reach {root}: "
                                          f"{_first_line(error)}") from None
    if found.type == pafs.FileType.File:
        raise ConfigError("storage.root", f"{root} is a file; expected a folder (or a path "
                                          f"where one can be created)")


_S3_OPTIONS = ("region", "scheme", "endpoint_override", "access_key", "secret_key",
               "session_token")


def _s3(uri: str, timeout: float) -> tuple[pafs.S3FileSystem, str]:
    """The filesystem `FileSystem.from_uri` would make of an s3:// URI (its query options), with
    connect and request timeouts and a single attempt."""
    parts = urlsplit(uri)
    options = {key: value for key, value in parse_qsl(parts.query) if key in _S3_OPTIONS}
    fs = pafs.S3FileSystem(**options, connect_timeout=timeout, request_timeout=timeout,
                           retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    return fs, f"{parts.netloc}{parts.path}".rstrip("/")


def probe_tracking(uri: str | None, timeout: float = TIMEOUT_S) -> None:
    """An MLflow server answers its /health endpoint; a SQLite store is a SQLite file (or can
    be created)."""
    if not uri:
        return
    if uri.startswith(("http://", "https://")):
        _probe_server(uri, timeout)
    elif uri.startswith("sqlite:///"):
        _probe_sqlite(uri)


def _probe_server(uri: str, timeout: float) -> None:
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout) as answer:
            answer.read(64)
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise ConfigError("tracking.uri", f"the MLflow server at {uri} refused us (HTTP "
                                              f"{error.code}); set MLFLOW_TRACKING_USERNAME and "
                                              f"MLFLOW_TRACKING_PASSWORD or "
                                              f"MLFLOW_TRACKING_TOKEN") from None
        raise ConfigError("tracking.uri", f"{uri} answers, but not as an MLflow server (GET "
                                          f"{health}: HTTP {error.code}); expected the address "
                                          f"`mlflow server` prints") from None
    except (OSError, ValueError) as error:  # refused, no route, timeout, bad host name
        reason = getattr(error, "reason", error)
        raise ConfigError("tracking.uri", f"no MLflow server answers at {uri} within "
                                          f"{timeout:g} s ({_first_line(reason)}); start one "
                                          f"(mlflow server --host 127.0.0.1 --port 5000) or "
                                          f"set tracking.uri: null for the local SQLite "
                                          f"store") from None


def _probe_sqlite(uri: str) -> None:
    path = Path(uri.removeprefix("sqlite:///"))
    path = path if uri.startswith("sqlite:////") or path.is_absolute() else Path("/") / path
    if path.is_dir():
        raise ConfigError("tracking.uri", f"{path} is a folder; expected a SQLite file")
    if not path.exists():
        parent = next((p for p in path.parents if p.exists()), Path("/"))
        if not parent.is_dir():
            raise ConfigError("tracking.uri", f"cannot create {path}: {parent} is a file")
        return
    with path.open("rb") as handle:
        header = handle.read(16)
    if header and header != b"SQLite format 3\x00":
        raise ConfigError("tracking.uri", f"{path} is not a SQLite database; point "
                                          f"tracking.uri at the MLflow store (mlflow.db) or a "
                                          f"new file")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2) as connection:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except sqlite3.Error as error:
        raise ConfigError("tracking.uri", f"{path}: {error}") from None


def probe_ray(address: str, timeout: float = TIMEOUT_S) -> None:
    """`local` starts its own instance; any other address must have a Ray head listening."""
    if address == "local":
        return
    target = _bootstrap_address(address)
    if target is None:
        raise ConfigError("ray.address", f"{address}: no running Ray cluster found on this "
                                         f"machine (no RAY_ADDRESS, no `ray start` here); start "
                                         f"one with `ray start --head`, or use ray.address: "
                                         f"local")
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as connection:
            grpc = _speaks_grpc(connection)
    except (OSError, ValueError) as error:
        raise ConfigError("ray.address", f"no Ray head answers at {target} within "
                                         f"{timeout:g} s ({_first_line(error)}); check the "
                                         f"address, or use ray.address: local") from None
    if not grpc:
        raise ConfigError("ray.address", f"{target} accepts connections but does not answer "
                                         f"as a Ray head (gRPC) within {timeout:g} s; check "
                                         f"the address and port (the head's GCS port, 6379 "
                                         f"by default; 10001 for ray://)")


# HTTP/2's client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, the Ray Client
# server) answers with its own SETTINGS frame (type 4) before anything else.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _speaks_grpc(connection: socket.socket) -> bool:
    try:
        connection.sendall(_HTTP2_PREFACE)
        header = connection.recv(9)
    except TimeoutError:
        return False
    return len(header) >= 4 and header[3] == 4


def _bootstrap_address(address: str) -> str | None:
    """host:port of the head `address` names. 'auto' is the cluster of a `ray job` (RAY_ADDRESS)
    or the one `ray start` recorded on this machine, never (as Ray's own fallback would have
    it) whatever GCS process happens to run here: another run's private instance."""
    if address.startswith("ray://"):
        netloc = urlsplit(address).netloc
        return netloc if ":" in netloc else f"{netloc}:10001"
    if address != "auto":
        return address
    import os

    from ray._private.services import find_bootstrap_address

    found = os.environ.get("RAY_ADDRESS") or find_bootstrap_address(None)
    if found and found.startswith("ray://"):
        return _bootstrap_address(found)
    if found and found.startswith(("http://", "https://")):
        return None  # a dashboard address: `ray job submit`'s, not one to connect a driver to
    return found or None


def _first_line(error: BaseException | str) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
