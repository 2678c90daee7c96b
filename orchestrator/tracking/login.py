"""The MLflow login on its way to Tune's loop, and kept from everything else.

Trials report to the driver and never talk to MLflow, so no trial process gets the login. On
this machine the driver's Ray processes (GCS, raylet and every worker they start) are started
without it. With Ray Client (ray://) Tune's loop, and the tracker in it, runs on the head: the
login reaches it through an actor of this job that holds it in memory, not through the job's
runtime_env, which Ray keeps in its GCS, writes to its logs and gives to every trial."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from orchestrator.tracking.mlflow_store import LOGIN_ENV, redact

__all__ = ["receive", "share", "without_login"]


@contextmanager
def without_login() -> Iterator[None]:
    """This process's environment without the MLflow login, and its command line without any
    secret (Ray records it as the job's entrypoint), while the block starts Ray."""
    argv = sys.argv
    sys.argv = [redact(arg) for arg in argv]
    held = {k: os.environ.pop(k) for k in LOGIN_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(held)
        sys.argv = argv


def _actor_name(sweep_key: str) -> str:
    return f"resnet-sweep-mlflow-login-{sweep_key}"  # per sweep: a resumed Tune loop finds its own


class _LoginHolder:
    def __init__(self) -> None:
        self.login: dict[str, str] = {}

    def keep(self, login: dict[str, str]) -> None:
        self.login = login

    def get(self) -> dict[str, str]:
        return self.login


def share(sweep_key: str):
    """Hand this process's MLflow login to the sweep's Tune loop on a Ray Client head; returns
    the holder's handle (keep it while the sweep runs), or None when there is no login."""
    import ray

    login = {k: os.environ[k] for k in LOGIN_ENV if os.environ.get(k)}
    if not login:
        return None
    holder = (
        ray.remote(num_cpus=0, max_restarts=0)(_LoginHolder)
        .options(name=_actor_name(sweep_key), get_if_exists=True)
        .remote()
    )
    ray.get(holder.keep.remote(login))  # a method's argument: not part of the actor's stored spec
    return holder


def receive(sweep_key: str) -> None:
    """In Tune's loop: the login shared for this sweep, when it was (ray://) and this process
    has none of its own."""
    import ray

    if any(os.environ.get(k) for k in LOGIN_ENV) or not ray.is_initialized():
        return
    try:
        holder = ray.get_actor(_actor_name(sweep_key))
    except ValueError:  # none shared: a local run, or no login
        return
    os.environ.update(ray.get(holder.get.remote()))
