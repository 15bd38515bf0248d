"""A real Ray head on this machine for the cluster tests (`ray start --head --block`), on its own
ports and temp dir, with token auth as Ray 2.60 heads use it, and the `ray job` command line
against it. Nothing is mocked: the tests submit jobs the way the README tells users to.

The head runs in its own session: stopping it signals that process group (the head's GCS,
raylet, dashboard and their workers), never `ray stop`, which would stop every Ray instance on
the machine.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class RayHead:
    gcs_address: str
    dashboard: str
    """http://127.0.0.1:PORT: what `ray job submit --address` takes."""
    env: dict[str, str]
    """The environment a client needs (the token) and the head was started with."""

    def job(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """`ray job ARGS --address <dashboard>` (the address goes before any `--`)."""
        args = list(args)
        at = args.index("--") if "--" in args else len(args)
        command = [RAY, "job", *args[:at], "--address", self.dashboard, *args[at:]]
        return subprocess.run(command, env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def status(self, job_id: str) -> str:
        """SUCCEEDED, FAILED, STOPPED, or RUNNING (also pending) as `ray job status` says it
        (on stderr, as its log lines: "Job 'raysubmit_...' succeeded")."""
        outcome = self.job("status", job_id, timeout=60)
        text = (outcome.stdout + outcome.stderr).lower()
        for state in ("succeeded", "failed", "stopped"):  # "Job 'x' was stopped"
            if f"'{job_id.lower()}' {state}" in text or f"'{job_id.lower()}' was {state}" in text:
                return state.upper()
        return "RUNNING"

    def wait(self, job_id: str, states: tuple[str, ...], timeout: float = 900) -> str:
        deadline = time.monotonic() + timeout
        while (state := self.status(job_id)) not in states:
            assert time.monotonic() < deadline, f"job {job_id} still {state} after {timeout} s"
            time.sleep(2)
        return state


@contextmanager
def ray_head(num_cpus: int = 2) -> Iterator[RayHead]:
    """A head node of `num_cpus` CPUs with its dashboard (the job server) on 127.0.0.1."""
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths live under it
    gcs, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    command = [RAY, "start", "--head", "--block", f"--port={gcs}", f"--num-cpus={num_cpus}",
               "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={temp}",
               "--include-dashboard=true", "--disable-usage-stats"]
    log = open(Path(temp) / "head.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    head = RayHead(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", env)
    try:
        _wait_for_job_server(head, process, Path(temp) / "head.log")
        yield head
    finally:
        _stop(process)
        log.close()


def _wait_for_job_server(head: RayHead, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        if head.job("list", timeout=60).returncode == 0:
            return
        assert time.monotonic() < deadline, "the head's job server did not answer in 180 s"
        time.sleep(2)


def _stop(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            time.sleep(2)  # the group's other processes exit after `ray start`
            os.killpg(process.pid, signal.SIGKILL)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            continue
        return
