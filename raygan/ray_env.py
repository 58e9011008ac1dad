"""Starting or joining Ray with the settings that work on small machines and in CI."""

from __future__ import annotations

import os


def ray_environment() -> None:
    """Environment Ray reads at start-up: no usage stats, no auth token file in ~/.ray."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by RAY_ADDRESS (or `ray start`), else start a local Ray in-process."""
    import ray

    if ray.is_initialized():
        return
    ray_environment()
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, log_to_driver=True)
