"""How many trials of a search train at once, enforced where Tune does not.

Tune's `max_concurrent_trials` limits the trials its search algorithm creates; a search restored
by `--resume` already has its unfinished trials, and Tune starts every one the cluster has room
for. A trial holds no CPU itself (its Ray Train workers take theirs outside its placement
group), so on 2 CPUs two restored trials would both start, their workers would take every CPU,
and Ray Data's read tasks, which need one more, would never run: both trials hang.

So each trial takes a slot from a small named actor before it trains and waits while all are
taken; the driver gives the slot back when Tune reports the trial ended (finished, stopped by
ASHA or failed), which also covers a trial whose process Tune killed.
"""

from __future__ import annotations

import time

POLL_S = 2.0
NAMESPACE = "heat-pipeline"
"""An explicit namespace: Tune's trial actors do not share the driver's anonymous one."""


class _Slots:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.holders: set[str] = set()

    def acquire(self, trial_id: str) -> bool:
        """True when `trial_id` holds a slot (again, for a restarted trial)."""
        if trial_id in self.holders or len(self.holders) < self.capacity:
            self.holders.add(trial_id)
            return True
        return False

    def release(self, trial_id: str) -> None:
        self.holders.discard(trial_id)


def create(name: str, capacity: int):
    """The search's slot keeper (a named actor without resources), replacing an earlier one.
    Keep the handle: a named actor that is not detached ends when its creator's handle goes."""
    import ray

    try:
        ray.kill(ray.get_actor(name, namespace=NAMESPACE))
    except ValueError:
        pass
    return ray.remote(num_cpus=0)(_Slots).options(name=name, namespace=NAMESPACE).remote(capacity)


def acquire(name: str, trial_id: str) -> None:
    """Block until `trial_id` holds one of the search's slots."""
    import ray

    keeper = ray.get_actor(name, namespace=NAMESPACE)
    while not ray.get(keeper.acquire.remote(trial_id)):
        time.sleep(POLL_S)


def release(name: str, trial_id: str) -> None:
    import ray

    try:
        ray.get(ray.get_actor(name, namespace=NAMESPACE).release.remote(trial_id))
    except ValueError:  # the search is over and its keeper gone
        pass


def remove(name: str) -> None:
    import ray

    try:
        ray.kill(ray.get_actor(name, namespace=NAMESPACE))
    except ValueError:
        pass
