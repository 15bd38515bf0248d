"""Is `storage.root` the same storage on every node? Checked before any work on a cluster.

A local `storage.root` (a path, not a URI) is only right on a cluster when every node mounts it.
On a node that does not, the stages' Ray Data tasks and the training workers would write their
outputs and checkpoints to that node's own disk, where the driver and the other nodes never see
them: a run that fails much later (a split or a checkpoint "missing"), or hangs waiting for it.
So with more than one live node the driver writes a marker file under the root and runs one
task on each node (0 CPUs, pinned to it) that looks for the marker; a node that does not see it
is a ConfigError naming the node and the key, before any stage runs.
"""

from __future__ import annotations

import logging
import os
import uuid

from heat.validation import ConfigError
from pipeline import storage

logger = logging.getLogger(__name__)

ANSWER_S = 120.0
"""How long the nodes have to answer (a task's worker may have to start first)."""


def _sees(path: str) -> bool:
    return os.path.isfile(path)


def nodes_without(path: str, timeout_s: float = ANSWER_S) -> list[str]:
    """The live nodes (as `IP (node id prefix)`) on which the file `path` is not there, asked
    with one 0-CPU task pinned to each; a node that does not answer in `timeout_s` counts."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_sees)
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    asked = {
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node["NodeID"], soft=False)).remote(path): node
        for node in nodes
    }
    ready, late = ray.wait(list(asked), num_returns=len(asked), timeout=timeout_s)
    missing = [asked[ref] for ref in ready if not ray.get(ref)] + [asked[ref] for ref in late]
    for ref in late:
        ray.cancel(ref, force=True)
    return sorted(f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})" for node in missing)


def check_shared(root: str, key: str = "storage.root") -> None:
    """Raise ConfigError when `root` is a local path that some live node of the Ray cluster
    does not see; nothing to check for a URI (s3://, gs://, ...) or a one-node cluster."""
    import ray

    path = storage.local_path(root)
    if path is None or sum(1 for node in ray.nodes() if node.get("Alive")) < 2:
        return
    marker = os.path.join(path, f".shared-check-{uuid.uuid4().hex}")
    storage.write_bytes(marker, b"written by the driver; removed after the check\n")
    try:
        missing = nodes_without(marker)
    finally:
        os.remove(marker)
    if missing:
        raise ConfigError(key, f"{root!r} is not shared storage: node(s) {', '.join(missing)} "
                               f"do not see it (a file the driver wrote there is missing); use "
                               f"a path mounted on every node, or a URI (s3://, gs://)")
    logger.debug("%s is seen by every node", root)
