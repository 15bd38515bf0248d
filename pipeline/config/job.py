"""A pipeline started as a Ray job (`ray job submit ... -- heat-pipeline run ...`): what the config
must mean there.

Ray's job supervisor starts the entrypoint with `RAY_ADDRESS` set to the cluster's GCS and
`RAY_JOB_CONFIG_JSON_ENV_VAR` set to the job's runtime env, in a temporary copy of the submitted
working directory that is deleted when the job ends. So inside a job:

- the pipeline runs on the job's cluster whatever `ray.address` says: `local` (the smoke
  config's) would start a second Ray inside the job, whose workers cannot fetch the job's
  working dir ("Failed to download runtime_env file package gcs://_ray_pkg_..."), so it is read
  as `auto`; a `ray://` address of another cluster is refused;
- a relative `storage.root`, a relative SQLite tracking store or artifact location would be
  written into that temporary directory and vanish with it: refused, naming the key and what
  to give instead (an absolute path every node reads, or a URI; a tracking server).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from heat.validation import ConfigError

logger = logging.getLogger(__name__)

JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray's job supervisor in the environment of a job's entrypoint (and only there)."""


def inside_ray_job() -> bool:
    return JOB_ENV in os.environ


def job_ray_section(raw: Any) -> Any:
    """The raw `ray` section as a job reads it: address auto, no local CPU count."""
    if not inside_ray_job():
        return raw
    section = dict(raw) if isinstance(raw, Mapping) else {}
    address = section.get("address", "local")
    if isinstance(address, str) and address.startswith("ray://"):
        raise ConfigError("ray.address", f"{address!r} names another cluster, but this pipeline "
                                         f"runs inside a Ray job, on the job's cluster: use auto "
                                         f"(or leave it out)")
    if address != "auto":
        logger.info("inside a Ray job: running on the job's cluster (ray.address %s read as "
                    "auto)", address)
    section.pop("num_cpus", None)
    section.pop("worker_niceness", None)
    return {**section, "address": "auto"}


def check_job_paths(root: str, tracking: Mapping[str, Any] | None) -> None:
    """Inside a job: no path that would land in the job's temporary working directory."""
    if not inside_ray_job():
        return
    where = (f"inside a Ray job it would be written into the job's temporary working directory "
             f"({os.getcwd()}), which is deleted when the job ends")
    if _relative(root):
        raise ConfigError("storage.root", f"{root!r} is relative: {where}; give an absolute path "
                                          f"on storage every node reads, or a URI "
                                          f"(s3://bucket/heat)")
    tracking = tracking or {}
    uri = tracking.get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if isinstance(uri, str) and _relative_store(uri):
        raise ConfigError("tracking.uri", f"{uri!r} is relative: {where}; use a tracking server "
                                          f"(http://HEAD:5000) or an absolute sqlite:////path")
    artifacts = tracking.get("artifact_location")
    if isinstance(artifacts, str) and _relative(artifacts):
        raise ConfigError("tracking.artifact_location", f"{artifacts!r} is relative: {where}")


def _relative(path: str) -> bool:
    if "://" in path:
        return path.startswith("file://") and not path[len("file://"):].startswith("/")
    return not os.path.isabs(os.path.expanduser(path))


def _relative_store(uri: str) -> bool:
    if uri.startswith("sqlite:///"):
        return not uri[len("sqlite:///"):].startswith("/")
    return "://" not in uri and _relative(uri)
