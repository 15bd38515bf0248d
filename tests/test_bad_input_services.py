"""Unreachable services: probed with a short timeout before anything is written, one line naming
the key and the address, exit code 2, under 15 s (`pipeline.services`, `tests/bad_input.py`).

The servers here are real sockets on 127.0.0.1: a port nobody listens on (refused), one that
accepts connections and never answers (a hung server, or a firewall that drops packets), and an
HTTP server that is not MLflow.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from bad_input import assert_rejected, environment, heat_pipeline, tiny_config, write_yaml

LIMIT_S = 15


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """Accepts connections, never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


@pytest.fixture(scope="module")
def not_mlflow_port() -> Iterator[int]:
    """An HTTP server answering 404 to everything (some other web service on that port)."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_error(404)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def cases(silent: int, not_mlflow: int) -> dict[str, tuple[list[str], dict[str, str], list[str]]]:
    """id -> (overrides, environment, what the error line names)."""
    refused = free_port()
    s3 = "s3://bucket/runs?scheme=http&endpoint_override=127.0.0.1:{}"
    server = f"tracking.uri=http://127.0.0.1:{refused}"
    auto = ["ray.address=auto", "ray.num_cpus=null"]  # in a Ray job: RAY_ADDRESS names the head
    return {
        "tracking_server_refused": ([server], {}, ["tracking.uri", f"127.0.0.1:{refused}",
                                                   "mlflow server"]),
        "tracking_server_silent": ([f"tracking.uri=http://127.0.0.1:{silent}"], {},
                                   ["tracking.uri", f"127.0.0.1:{silent}", "within"]),
        "tracking_server_not_mlflow": ([f"tracking.uri=http://127.0.0.1:{not_mlflow}"], {},
                                       ["tracking.uri", "not as an MLflow server", "404"]),
        "tracking_store_not_sqlite": (["tracking.uri=sqlite:////etc/hostname"], {},
                                      ["tracking.uri", "/etc/hostname", "not a SQLite"]),
        "ray_head_refused": (auto, {"RAY_ADDRESS": f"127.0.0.1:{refused}"},
                             ["ray.address", f"127.0.0.1:{refused}", "no Ray head answers"]),
        "ray_head_silent": (auto, {"RAY_ADDRESS": f"127.0.0.1:{silent}"},
                            ["ray.address", f"127.0.0.1:{silent}", "does not answer as a Ray"]),
        "ray_head_not_ray": (auto, {"RAY_ADDRESS": f"127.0.0.1:{not_mlflow}"},
                             ["ray.address", "does not answer as a Ray head"]),
        "ray_client_refused": ([f"ray.address=ray://127.0.0.1:{refused}", "ray.num_cpus=null"],
                               {}, ["ray.address", f"127.0.0.1:{refused}"]),
        "s3_storage_refused": ([f"storage.root={s3.format(refused)}", server], {},
                               ["storage.root", "bucket"]),
        "s3_storage_silent": ([f"storage.root={s3.format(silent)}", server], {},
                              ["storage.root", "bucket"]),
    }


@pytest.mark.parametrize("case", list(cases(0, 0)))
def test_an_unreachable_service_fails_fast_before_anything_is_written(
        tmp_path, silent_port, not_mlflow_port, case):
    overrides, env, named = cases(silent_port, not_mlflow_port)[case]
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config(tmp_path))
    outcome = heat_pipeline("run", str(config), *overrides, cwd=tmp_path, env=environment(**env))
    assert_rejected(outcome, *named, within_s=LIMIT_S)
    assert not (tmp_path / "runs").exists(), "nothing may be written before the probes pass"


def test_ray_address_auto_without_a_cluster_names_the_way_to_start_one(tmp_path, monkeypatch):
    """`auto` means a cluster of `ray start` or of a Ray job, never another run's private
    instance; with neither, it is one line, not 40 s of retries and a traceback."""
    import ray._private.services as services

    if services.find_bootstrap_address(None):
        pytest.skip("a `ray start` cluster is recorded on this machine")
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config(tmp_path))
    outcome = heat_pipeline("run", str(config), "ray.address=auto", "ray.num_cpus=null",
                            cwd=tmp_path)
    assert_rejected(outcome, "ray.address", "ray start --head", within_s=LIMIT_S)


def test_unreachable_services_leave_a_finished_run_untouched(finished_run, silent_port,
                                                           not_mlflow_port):
    """Resuming the finished run with a service unreachable writes nothing at all: not its
    `.latest` pointer, not its folder, no MLflow run."""
    before = finished_run.snapshot()
    table = cases(silent_port, not_mlflow_port)
    for case in ("tracking_server_refused", "ray_head_refused", "s3_storage_refused"):
        overrides, env, named = table[case]
        outcome = heat_pipeline("run", str(finished_run.config), *overrides,
                                cwd=finished_run.folder, env=environment(**env))
        assert_rejected(outcome, *named, within_s=LIMIT_S)
    after = finished_run.snapshot()
    assert after["files"] == before["files"]
    assert after["runs"].keys() == before["runs"].keys()
