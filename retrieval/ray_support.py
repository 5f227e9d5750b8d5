"""Joining a Ray cluster (the optional `knnrag[ray]` extra); nothing here runs without `--ray`.

Every command keeps working without Ray installed: the import happens inside `require_ray`, and a
missing extra is a KnnragError naming the install command, never an ImportError traceback.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from retrieval.errors import InvalidInputError, KnnragError

log = logging.getLogger(__name__)

# Forwarded to the workers so they load the same code offline as the driver does.
_FORWARD_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "TOKENIZERS_PARALLELISM")


def require_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise KnnragError("--ray needs the Ray extra, which is not installed",
                          "pip install 'knnrag[ray]' (or drop --ray to run in this process)") from e
    return ray


def _runtime_env() -> dict:
    """PYTHONPATH with this checkout first: workers on this machine import the driver's knnrag even when
    it is not pip-installed; on other machines the path is absent and their installed knnrag is used."""
    root = str(Path(__file__).resolve().parents[1])
    env = {k: os.environ[k] for k in _FORWARD_ENV if k in os.environ}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": env}


def connect(address: str, *, num_cpus: int | None = None) -> Any:
    """`local`: start Ray in this process (num_cpus caps it); else join the cluster at ADDRESS (host:port or
    `auto`). A session already connected is reused, so tests and long-lived servers init once."""
    if not address:
        raise InvalidInputError("--ray needs an address", "pass --ray local, or --ray HOST:6379 of a running `ray start --head`")
    ray = require_ray()
    if ray.is_initialized():
        return ray
    kw: dict[str, Any] = {"runtime_env": _runtime_env(), "log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, **kw)
        else:
            ray.init(address=address, **kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise KnnragError(f"cannot join the Ray cluster at {address}: {str(e).splitlines()[0]}",
                          "start one with `ray start --head` and pass its address (HOST:6379), or use --ray local") from e
    log.info("Ray cluster: %s", ray.cluster_resources())
    return ray


def positive_workers(n: int | None, what: str = "--workers") -> int:
    if n is None:
        return 1
    if n < 1:
        raise InvalidInputError(f"{what} must be >= 1, got {n}", f"pass {what} 2 (one actor per worker)")
    return int(n)


def kill_actors(ray: Any, actors: list) -> None:
    """Free the CPUs actors hold (a long-lived session would otherwise starve the next pool)."""
    for a in actors:
        try:
            ray.kill(a)
        except Exception:  # noqa: BLE001 - the actor or the session is already gone
            pass
