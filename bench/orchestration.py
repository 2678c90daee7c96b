"""A sweep of short trials through the orchestrator against the ideal and against bare Ray Tune.

    python bench orchestration --trials 16 --epochs 4 --depth 8

ours          ``orchestrator.running.sweep.prepare_sweep`` + ``run_sweep`` (what ``resnet-sweep run
              --no-report`` calls) on a generated sweep file: ``--trials`` seeds of one small
              CIFAR-style ResNet on ``digits`` at 16 px, ``resources: {cpu: 1}``, MLflow in a
              SQLite file made beforehand (as ./mlflow.db is after a first sweep) and Tune storage
              in a temporary folder. As in every sweep: one checkpoint
              per epoch, MLflow written by a driver callback, actors reused between trials.
bare Tune     ``tune.Tuner`` on a function trainable that runs ``resnet_core.train.Trainer`` on the
              same resolved configs with one ``tune.report`` per epoch and nothing else (no
              checkpoints, no MLflow, no callbacks of ours), 1 CPU per trial; Tune's defaults
              (``reuse_actors=False``), and ``reuse_actors=True`` as the orchestrator sets it.

Both start Ray the same way (a private local instance, no dashboard), so as many trials run at
once as the machine has CPUs (the concurrency, at most ``--trials``), and both set torch to the
trial's one thread. Each path runs in a fresh process (its own Ray, started in its wall time);
imports are done before the clock starts. Columns:

wall s       ours: prepare_sweep (loads the data, checks MLflow and storage) + run_sweep; bare:
             ray.init + Tuner.fit.
Ray start s  the part of the wall spent starting Ray.
Σ trial s    the trials' own time as Tune clocks it (``time_total_s`` of each trial's last
             result): building the trainer, training, evaluating and, in ours, saving each epoch's
             checkpoint; not the time a trial waits for the driver to take its result. Without
             actor reuse every trial builds its trainer in a new process (loading the data, a
             slower first epoch), so that row's Σ trial s, and its ideal, are larger.
Σ train s    the training loops alone (``epoch_seconds``), the same work in every path: a check
             that the trials themselves ran at the same speed.
ideal s      Σ trial s / concurrency: the sweep with no cost outside the trials.
vs bare      wall / the wall of bare Tune with ``reuse_actors=True`` (like for like).

A second table splits ours' wall above the ideal of the bare trials (reuse_actors) into what the
driver timed (its functions wrapped with a clock in the benchmark's child process, behaviour
unchanged): Ray start, prepare_sweep, and the MLflow callback by hook (in Tune's loop: trials
wait for it to take their results, and new trials wait to start); then the trials' own time over the bare ones per concurrent slot, split into
slower training loops (the driver's work takes CPU from the trials on a small machine; also
noise) and the rest (checkpoints; eval and building the trainer are the same in both); "other"
is what is left (scheduling, actor start, Tune's loop: bare Tune has its share of it too).
The paths run one after another, so load from other work on a shared machine can fall unevenly:
the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from bench.table import emit, machine
from resnet_core.train import RunConfig, Trainer

SMOKE_TEST = {"trials": 4, "epochs": 1, "depth": 8, "train_limit": 256}
# The driver's MLflow callback, timed by hook (SweepTracker's Tune callback methods).
TRACKER_HOOKS = ("setup", "on_trial_start", "on_trial_result", "on_trial_complete", "on_experiment_end")


# --- shared with bench/asha.py -------------------------------------------------------------------
def _quiet(log: str) -> None:
    """A child's output (progress lines, Ray's and MLflow's messages) goes to its log file."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)


def in_child(log: Path, fn: Callable, *args) -> Any:
    """``fn(*args)`` in a fresh process (its own Ray, no settings left over), output to ``log``."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_quiet, initargs=(str(log),)) as pool:
        try:
            return pool.submit(fn, *args).result()
        except Exception:
            print(f"failed; its output is in {log}", file=sys.stderr)
            raise


def workdir(parent: str, index: int, *, with_mlflow: bool) -> Path:
    """A new folder for one run; ``with_mlflow``: with the MLflow SQLite store ``run_ours`` logs to
    already made, by this process, not the run's: a sweep usually finds its ./mlflow.db there
    (making one takes seconds, once), and a store opened in the run's process stays cached."""
    path = Path(parent) / str(index)
    path.mkdir()
    if with_mlflow:
        from orchestrator.tracking.mlflow_store import open_client

        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial … tables"
        open_client(f"sqlite:///{path}/mlflow.db")
    return path


def trial_results(experiment_path: str) -> dict[str, list[dict]]:
    """Each trial's results (result.json, one line per epoch), by trial folder name."""
    return {
        path.parent.name: [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for path in Path(experiment_path).glob("*/result.json")
    }


def _timed(owner: Any, name: str, totals: dict[str, float], key: str) -> None:
    """Wraps ``owner.name`` with a clock that adds its time to ``totals[key]``."""
    inner = getattr(owner, name)
    totals.setdefault(key, 0.0)

    def clocked(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start

    setattr(owner, name, clocked)


def run_ours(workdir: str, text: str, smoke_test: bool = False) -> dict:
    """The sweep in ``text`` as ``resnet-sweep run --no-report`` runs it, with MLflow and Tune
    storage in ``workdir``: its wall time, the driver's timed parts, its trials, scheduler and results."""
    import mlflow  # noqa: F401 — imported before the clock, as ray.tune is
    import ray
    import ray.tune

    from orchestrator.running import cluster, sweep
    from orchestrator.running.tracker import SweepTracker
    from orchestrator.sweepfile.spec import parse_spec

    os.chdir(workdir)
    parts: dict[str, float] = {}
    _timed(cluster, "connect", parts, "Ray start")
    _timed(sweep, "prepare_sweep", parts, "prepare_sweep")
    for hook in TRACKER_HOOKS:
        _timed(SweepTracker, hook, parts, f"MLflow {hook}")
    start = time.perf_counter()
    prep = sweep.prepare_sweep(
        parse_spec(text),
        storage_path=f"{workdir}/ray_results",
        tracking_uri=f"sqlite:///{workdir}/mlflow.db",
        smoke_test=smoke_test,
    )
    code = sweep.run_sweep(prep, report=False)
    wall = time.perf_counter() - start
    concurrency = int(ray.cluster_resources().get("CPU", 1) // prep.parsed.spec.resources.cpu)
    ray.shutdown()
    if code != 0:
        raise RuntimeError(f"the sweep ended with exit code {code}")
    return {
        "wall": wall,
        "parts": parts,
        "results": trial_results(prep.experiment_path),
        "concurrency": concurrency,
        "num_trials": prep.plan.num_trials,
        "epochs_per_trial": prep.plan.epochs_per_trial,
        "scheduler": prep.parsed.spec.scheduler,
    }


# --- bare Ray Tune -------------------------------------------------------------------------------
def _bare_trial(config: dict) -> None:
    import ray
    from ray import tune

    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    Trainer(RunConfig.from_flat(config["flat"])).run(lambda r: tune.report(r.metrics))


def run_bare(workdir: str, configs: list[dict], reuse_actors: bool) -> dict:
    import ray
    from ray import cloudpickle, tune

    # Workers cannot import bench (it is not installed): the trainable travels by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    start = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    started = time.perf_counter()
    tuner = tune.Tuner(
        tune.with_resources(_bare_trial, {"cpu": 1}),
        param_space={"flat": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(reuse_actors=reuse_actors),
        run_config=tune.RunConfig(name="bare", storage_path=f"{workdir}/ray_results", verbose=0),
    )
    grid = tuner.fit()
    wall = time.perf_counter() - start
    ray.shutdown()
    if grid.errors:
        raise RuntimeError(f"{len(grid.errors)} bare trials failed: {grid.errors[0]}")
    return {"wall": wall, "parts": {"Ray start": started - start}, "results": trial_results(grid.experiment_path)}


# --- the benchmark -------------------------------------------------------------------------------
def sweep_text(trials: int, epochs: int, depth: int, train_limit: int | None = None) -> str:
    import yaml

    dataset = {"name": "digits", "image_size": 16, **({"train_limit": train_limit} if train_limit else {})}
    return yaml.safe_dump(
        {
            "name": "bench-orchestration",
            "dataset": dataset,
            "model": {"arch": "cifar", "depth": depth},
            "train": {"epochs": epochs, "batch_size": 32},
            "search": {"algorithm": "grid", "seeds": list(range(trials))},
            "resources": {"cpu": 1},
        },
        sort_keys=False,
    )


def _sums(run: dict) -> tuple[float, float]:
    """(Σ trial s, Σ train s) over the trials' results."""
    trial = sum(r[-1]["time_total_s"] for r in run["results"].values())
    train = sum(e["epoch_seconds"] for r in run["results"].values() for e in r)
    return trial, train


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python bench orchestration", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16, help="trials (seeds of the same net)")
    parser.add_argument(
        "--epochs", type=int, default=4, help="epochs per trial (about 0.45 s each at depth 8 on one core)"
    )
    parser.add_argument("--depth", type=int, default=8, help="CIFAR-style depth, 6n+2")
    parser.add_argument("--out", type=Path, help="append the tables as markdown to this file")
    parser.add_argument(
        "--smoke-test",
        action="store_true",
        help=f"a tiny run that checks the benchmark works: {SMOKE_TEST}, without the Tune-defaults row",
    )
    args = parser.parse_args(argv)
    shape = SMOKE_TEST if args.smoke_test else {"trials": args.trials, "epochs": args.epochs, "depth": args.depth}
    text = sweep_text(**shape)

    from orchestrator.sweepfile.plan import make_plan
    from orchestrator.sweepfile.spec import parse_spec

    configs = make_plan(parse_spec(text), with_models=False).configs
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-orchestration-") as tmp:
        runs = {}
        paths = {
            "ours": (run_ours, text),
            "bare Tune, defaults": (run_bare, configs, False),
            "bare Tune, reuse_actors": (run_bare, configs, True),
        }
        if args.smoke_test:  # under a minute: the defaults differ from the row kept in one flag
            del paths["bare Tune, defaults"]
        for i, (path, (fn, *fn_args)) in enumerate(paths.items()):
            folder = workdir(tmp, i, with_mlflow=fn is run_ours)
            print(f"{path} …", flush=True)
            runs[path] = in_child(folder / "output.log", fn, str(folder), *fn_args)
    load_after = os.getloadavg()

    concurrency = min(runs["ours"]["concurrency"], shape["trials"])
    like = runs["bare Tune, reuse_actors"]
    rows = []
    for path, run in runs.items():
        trial, train = _sums(run)
        ideal = trial / concurrency
        rows.append(
            (
                path,
                f"{run['wall']:.1f}",
                f"{run['parts']['Ray start']:.1f}",
                f"{trial:.1f}",
                f"{train:.1f}",
                f"{ideal:.1f}",
                f"{run['wall'] / ideal:.2f}x",
                f"{run['wall'] / like['wall']:.2f}x",
            )
        )
    where = f"{machine()}, {os.cpu_count()} CPUs, load avg {load_before[0]:.2f} before / {load_after[0]:.2f} after"
    title = (
        f"{shape['trials']} trials of ResNet-{shape['depth']} × {shape['epochs']} epochs on digits, "
        f"{concurrency} at a time ({where})"
    )
    columns = ("path", "wall s", "Ray start s", "Σ trial s", "Σ train s", "ideal s", "wall/ideal", "vs bare (reuse)")
    emit(title, columns, rows, args.out, argv, "orchestration")

    (trial, train), (bare_trial, bare_train) = _sums(runs["ours"]), _sums(like)
    parts = dict(runs["ours"]["parts"])
    parts["trials: training loops slower than bare, per slot"] = (train - bare_train) / concurrency
    parts["trials: other time over bare (checkpoints), per slot"] = (
        (trial - train) - (bare_trial - bare_train)
    ) / concurrency
    overhead = runs["ours"]["wall"] - bare_trial / concurrency
    parts["other (scheduling, actor start, Tune's loop)"] = overhead - sum(parts.values())
    rows = [(part, f"{s:.2f}", f"{s / overhead:.0%}") for part, s in parts.items()]
    emit(
        f"ours: {overhead:.1f} s of wall above the bare trials' ideal ({bare_trial / concurrency:.1f} s), by part",
        ("part", "s", "share"),
        rows,
        args.out,
        argv,
        "orchestration",
    )
    return 0
