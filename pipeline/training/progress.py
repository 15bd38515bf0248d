"""Training progress on the driver's console: rank 0 sends lines, the driver prints them.

The workers' own output is not forwarded to the driver by default (`pipeline.console`), so
rank 0 posts its progress to a small Ray queue actor (no CPU held) that a thread of the driver
drains and logs under `pipeline.progress`: one line per `log_every` steps with the loss,
throughput and time left, and one when a variant begins, resumes, stops early or ends. Lines
from a Ray Tune trial's workers reach the trial's process instead (no console of its own).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger("pipeline.progress")

POLL_S = 0.5


def duration(seconds: float) -> str:
    """`0:42`, `12:05`, `1:02:03`."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def step_line(*, variant: str, index: int, count: int, step: int, max_steps: int, loss: float,
              tokens_per_s: float, seconds: float, steps_done: int) -> str:
    """`heat (5/6) step 150/400  loss 2.314  1,234 tok/s  ETA 0:52`: the ETA from this
    attempt's pace (`steps_done` steps in `seconds`)."""
    left = (max_steps - step) * seconds / max(steps_done, 1)
    return (f"{variant} ({index}/{count}) step {step}/{max_steps}  loss {loss:.3f}  "
            f"{tokens_per_s:,.0f} tok/s  ETA {duration(left)}")


class ProgressSink:
    """What rank 0 holds: `post(line)` puts it on the driver's queue (never raises: progress
    is not worth failing a fit for)."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def post(self, line: str) -> None:
        try:
            self.queue.put_nowait(line)
        except Exception:  # a full or gone queue: the line is lost, the training goes on
            logging.getLogger(__name__).debug("progress line dropped: %s", line)


def driver_node() -> Any:
    """Keep the queue on the driver's node: a worker node lost mid-training (Ray Train
    restarts the group there) must not take the progress lines with it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)


@contextmanager
def progress_printer(label: str) -> Iterator[ProgressSink]:
    """A queue for the workers' lines and a thread logging them as `<label>: <line>` while the
    block runs (a Ray must be initialised). Every line posted is printed before a block that
    ends normally returns; one that raises (a failure, Ctrl-C, SIGTERM) returns at once, while
    workers that still run keep posting: waiting for a quiet queue would let them train (and
    checkpoint) on for seconds after the run was stopped."""
    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": driver_node()})
    done, abandoned = threading.Event(), threading.Event()

    def drain() -> None:
        while not abandoned.is_set():
            try:
                line = queue.get(timeout=POLL_S)
            except Empty:
                if done.is_set():
                    return
                continue
            except Exception:  # the actor is gone (Ray shut down): nothing more to print
                return
            logger.info("%s: %s", label, line)

    thread = threading.Thread(target=drain, name="heat-progress", daemon=True)
    thread.start()
    try:
        yield ProgressSink(queue)
    except BaseException:
        abandoned.set()
        raise
    finally:
        done.set()
        thread.join(timeout=10)
        queue.shutdown()
