"""`plan --calibrate`: a sweep's wall time predicted from rates measured on this machine
(resnet_core.calibrate), not from an assumed TFLOP/s; and the calibration cache that lets `run`
state the same prediction without measuring again.

The prediction, for a sweep run on this machine (no --address):
- a Tune trial (a trial, or an array of trials trained as one model) takes: its setup (data
  loaded, trainer built, warm-up) + TRIAL_START_S + per epoch (its training images × the measured
  seconds per training image + its val and test images × the seconds per evaluated image + one
  checkpoint + EPOCH_S) + at its end a pass over val (Fig. 7's layer responses) and, for image
  folders, the 10-crop test; with ASHA only the epochs it is expected to train (asha_trial_epochs);
  data-parallel workers each train and evaluate their share (measured at their share of the
  batch; the gradients' all-reduce is not measured);
- the trials run as Tune starts them: in plan order, each as soon as a slot is free, as many at
  once as the machine fits (ResourcesSpec.fitting: CPUs, GPUs, max_concurrent);
- trials compute slower than measured alone when they share the machine: on CPUs, the threads of
  the trials at once and DRIVER_CORES against the cores; trials on one GPU share its speed (no
  gain from packing them is assumed);
- the sweep adds SWEEP_START_S before its first trial and SWEEP_END_S after its last.
It assumes the sweep has the machine to itself: the cores other processes kept busy while
calibrating (OtherWork) give a second figure, the wall time if that work goes on.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from orchestrator.sweepfile.model_counts import CountCache
from orchestrator.sweepfile.plan import Plan, asha_trial_epochs
from resnet_core.config import RunConfig, planned_epochs, split_sizes, steps_per_epoch

__all__ = [
    "CALIBRATION_CACHE",
    "CalibrationCache",
    "calibrate",
    "calibration_key",
    "duration",
    "predict",
    "predicted",
    "schedule",
    "summary_lines",
]

# Costs that are the orchestrator's, not the trainer's: measured from `resnet-sweep run
# sweeps/quickstart.yaml` on the 2-core VM (docs/benchmarks.md, "Predicted against actual wall
# time"), not at `plan --calibrate` time.
SWEEP_START_S = 23.0  # the command's start to its first trial's: imports, checks, Ray, MLflow
SWEEP_END_S = 5.0  # the last trial's end to the command's: the final table and the report
TRIAL_START_S = 1.5  # a trial's first epoch beyond its others: its worker, its folder, the first result
EPOCH_S = 0.1  # per epoch: the result to Tune, the checkpoint copied into the sweep's folder
OTHER_WORK_SHOWN = 0.1  # cores of other work worth a line
DRIVER_CORES = 0.25  # what the driver (Tune's loop, MLflow's writes) and Ray's own processes use


class CalibrationCache(CountCache):
    """Measured rates on disk (~/.cache/resnet-sweep/calibration.json, or under $XDG_CACHE_HOME),
    keyed by this machine and everything a rate depends on (calibration_key); valid for one
    version of the training code and of torch."""

    FILE = "calibration.json"
    SOURCES = ("array.py", "blocks.py", "calibrate.py", "config.py", "data.py", "resnet.py", "train.py")
    EXTRA_SOURCES = (Path(__file__),)  # the machine's keys, what predict reads


CALIBRATION_CACHE = CalibrationCache()
# What predict reads of a cached rate: one written by an older version without them is not used.
RATE_KEYS = {
    "device", "speed", "threads", "members", "setup_s", "train_s_per_image", "eval_s_per_image", "checkpoint_s",
    "steps", "cpus", "gpus",
}  # fmt: skip


def threads_of(spec) -> int:
    """torch's threads in a trial's worker: its CPUs, whole (running.trainable._on_worker)."""
    return max(1, int(spec.resources.cpu))


def _measured_run(run: RunConfig, workers: int) -> RunConfig:
    """What one process of a trial trains: with data-parallel workers, its share of the batch."""
    if workers == 1:
        return run
    return replace(run, train=replace(run.train, batch_size=max(1, run.train.batch_size // workers)))


def calibration_key(cfgs: Sequence[RunConfig], spec) -> str:
    """Everything a rate depends on: this machine, the models, the data, the batch and the speed
    settings as written ("auto" resolves alike on one machine), the threads, the array's size."""
    tc = _measured_run(cfgs[0], spec.resources.workers).train
    return repr(
        (
            socket.gethostname(),
            tuple(run.model for run in cfgs),
            cfgs[0].dataset,
            tc.batch_size,
            tc.device,
            tc.precision,
            tc.channels_last,
            tc.compile,
            tc.fused_sgd,
            threads_of(spec),
        )
    )


def _units(plan: Plan) -> list[list[int]]:
    """The Tune trials, each as the indices of its configs: an array's members, or one trial
    (Optuna: each probe point, standing for the trials it draws)."""
    arrays = plan.arrays
    if arrays:
        return [[t.index for t in array] for array in arrays]
    return [[i] for i in range(len(plan.configs))]


def _unit_runs(plan: Plan, unit: list[int]) -> list[RunConfig]:
    return [RunConfig.from_flat(plan.configs[i]) for i in unit]


def calibrate(plan: Plan) -> dict:
    """Measures every distinct model (trial, or array) of ``plan`` on this machine as its trials
    will train (resnet_core.calibrate), keeps the rates in the calibration cache, and returns the
    prediction (``predict``)."""
    from resnet_core.calibrate import measure_rates  # torch: only a plan that calibrates pays for it

    spec = plan.spec
    groups: dict[str, list[RunConfig]] = {}
    for unit in _units(plan):
        runs = _unit_runs(plan, unit)
        groups.setdefault(calibration_key(runs, spec), [_measured_run(run, spec.resources.workers) for run in runs])
    with OtherWork() as other:
        rates = measure_rates(list(groups.values()), threads=threads_of(spec))
    machine = {**_machine(), "other_work_cores": other.cores}
    for key, rate in zip(groups, rates):
        CALIBRATION_CACHE.put(key, {**rate.to_dict(), **machine})
    return predicted(plan)


def predicted(plan: Plan) -> dict | None:
    """The prediction from the rates in the calibration cache, measuring nothing (``run`` calls
    it); None when a model of the plan has no rate there (`plan --calibrate` measures them)."""
    rates = {}
    for unit in _units(plan):
        key = calibration_key(_unit_runs(plan, unit), plan.spec)
        rate = CALIBRATION_CACHE.get(key)
        if not isinstance(rate, dict) or not RATE_KEYS <= rate.keys():
            return None
        rates[key] = rate
    return predict(plan, rates)


def _machine() -> dict:
    """The machine a rate was measured on: its cores and GPUs (the concurrency), its names."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {
        "cpus": os.cpu_count() or 1,
        "gpus": gpus,
        "cpu_name": _cpu_name(),
        "gpu_name": torch.cuda.get_device_name(0) if gpus else None,
        "host": socket.gethostname(),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def predict(plan: Plan, rates: dict[str, dict]) -> dict:
    """The sweep's and each trial's wall time on the machine the ``rates`` (calibration key →
    Rate dict with the machine's cpus and gpus) were measured on, if the sweep has it to itself
    (see the module's docstring); and the sweep's if the other work seen while calibrating goes
    on. ``predicted_trial_s``: by trial name; Optuna's trials are drawn as it runs: by model, a
    trial of it trained to its end."""
    spec = plan.spec
    resources = spec.resources
    machine = next(iter(rates.values()))
    slots = resources.fitting(machine["cpus"], machine["gpus"], spec.max_concurrent)
    units = _units(plan)
    tune_trials = len(units) if plan.trials is not None else plan.num_trials
    running = min(slots or tune_trials, tune_trials)
    # Optuna's trials stand in turn for its probe points (as the GPU-hour estimate has them).
    unit_of = [i % len(units) for i in range(tune_trials)]
    epochs = _trial_epochs(plan, tune_trials)
    runs = [_unit_runs(plan, unit) for unit in units]
    unit_rates = [rates[calibration_key(r, spec)] for r in runs]
    other = machine.get("other_work_cores") or 0.0

    def seconds(u: int, trial_epochs: int, slowdown: float) -> float:
        return _trial_seconds(runs[u][0], unit_rates[u], trial_epochs, plan.epochs_per_trial, resources, slowdown)

    def wall(slowdown: float) -> float:
        return SWEEP_START_S + schedule([seconds(u, e, slowdown) for u, e in zip(unit_of, epochs)], slots) + SWEEP_END_S

    slowdown = _slowdown(resources, running, machine, other=0.0)
    labels = [plan.model_of[unit[0]] if plan.model_of else r[0].model.name for unit, r in zip(units, runs)]
    if plan.trials is None:
        trial_s: dict[str, float] = {}
        for u, label in enumerate(labels):
            trial_s[label] = max(trial_s.get(label, 0.0), seconds(u, plan.epochs_per_trial, slowdown))
    else:
        trial_s = {plan.trials[i].name: seconds(u, epochs[u], slowdown) for u, unit in enumerate(units) for i in unit}
    models = {}
    for label, r, rate in zip(labels, runs, unit_rates):
        macs = plan.models.get(label, {}).get("macs")
        models.setdefault(label, _shown_rate(rate, r[0], len(r), resources.workers, macs))
    return {
        "predicted_wall_s": wall(slowdown),
        "predicted_trial_s": trial_s,
        "calibration": {
            "concurrency": slots,
            "slowdown": slowdown,
            "machine": {k: machine.get(k) for k in ("host", "cpu_name", "cpus", "gpu_name", "gpus")},
            "other_work_cores": other,
            "wall_s_if_other_work_goes_on": wall(_slowdown(resources, running, machine, other=other)),
            "models": models,
            "overheads_s": {
                "sweep_start": SWEEP_START_S,
                "sweep_end": SWEEP_END_S,
                "trial_start": TRIAL_START_S,
                "epoch": EPOCH_S,
            },
            "driver_cores": DRIVER_CORES,
        },
    }


def _slowdown(resources, running: int, machine: dict, *, other: float) -> float:
    """How much slower each trial computes than it did alone when measured. On GPUs: trials that
    share one (no gain from packing them is assumed). On CPUs: the threads of the ``running``
    trials and the driver's share against the cores that ``other`` work leaves free."""
    if resources.gpu:
        return max(1.0, running * resources.workers / max(machine["gpus"], 1))
    threads = max(1, int(resources.cpu))
    demand = threads * resources.workers * running + DRIVER_CORES
    return max(1.0, demand / max(threads, machine["cpus"] - other))


class OtherWork:
    """Cores that other processes kept busy while this block ran (0 where the kernel's CPU
    counters, /proc/stat, cannot be read): on a shared machine, what the trials will not get."""

    cores = 0.0

    def __enter__(self) -> OtherWork:
        self._start = (time.perf_counter(), time.process_time(), _busy_seconds())
        return self

    def __exit__(self, *exc) -> None:
        wall, own, busy = self._start
        wall, busy_now = time.perf_counter() - wall, _busy_seconds()
        if busy is not None and busy_now is not None and wall > 0:
            self.cores = max(0.0, (busy_now - busy - (time.process_time() - own)) / wall)


def _busy_seconds() -> float | None:
    """CPU seconds all processes have used since boot, and time stolen by the hypervisor."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:9]  # user nice system idle iowait irq softirq steal
    except OSError:
        return None
    busy = [int(v) for i, v in enumerate(fields) if i not in (3, 4)]
    return sum(busy) / os.sysconf("SC_CLK_TCK")


def _trial_epochs(plan: Plan, tune_trials: int) -> list[int]:
    """The epochs each Tune trial is expected to train: all of them, or with ASHA its share."""
    if plan.spec.scheduler.name != "asha":
        return [plan.epochs_per_trial] * tune_trials
    return asha_trial_epochs(tune_trials, plan.spec.scheduler.max_t or plan.epochs_per_trial, plan.spec.scheduler)


def _trial_seconds(run: RunConfig, rate: dict, epochs: int, max_epochs: int, resources, slowdown: float) -> float:
    """One Tune trial's wall time: its setup, its epochs (each data-parallel process trains and
    evaluates its share), and at its end the layer responses (and the 10-crop test)."""
    train, val, test = split_sizes(run.dataset)
    workers = resources.workers
    own = planned_epochs(run.train, steps_per_epoch(train, run.train.batch_size))
    epochs = min(epochs, own)
    per_epoch = (train * rate["train_s_per_image"] + (val + test) * rate["eval_s_per_image"]) / workers
    compute = epochs * (per_epoch + rate["checkpoint_s"])
    if epochs == own or epochs >= max_epochs:  # trained to its end
        compute += val * rate["eval_s_per_image"] / workers
        if run.dataset.from_folder:
            compute += 10 * test * rate["eval_s_per_image"] / workers
    return rate["setup_s"] + TRIAL_START_S + epochs * EPOCH_S + compute * slowdown


def _shown_rate(rate: dict, run: RunConfig, members: int, workers: int, macs: int | None) -> dict:
    """What `plan --calibrate` states beside a model: where and how it was measured, its rates;
    with the model's count, its training flop rate in the plan's count (6 flops per multiply-add
    and image, as the GPU-hour estimate assumes it), the measured figure for --gpu-tflops."""
    return {
        "device": rate["device"],
        "speed": rate["speed"],
        "threads": rate["threads"],
        "members": members,
        "batch_size": _measured_run(run, workers).train.batch_size,
        "train_images_per_s": 1 / rate["train_s_per_image"],
        "eval_images_per_s": 1 / rate["eval_s_per_image"],
        "setup_s": rate["setup_s"],
        "checkpoint_s": rate["checkpoint_s"],
        "steps_timed": rate["steps"],
        "train_flops_per_s": 6 * macs * members / rate["train_s_per_image"] if macs else None,
    }


def schedule(seconds: Sequence[float], slots: int) -> float:
    """When the last of these trials ends, each started in order as soon as one of ``slots``
    is free (Tune starts the planned trials in order; 0 slots: all at once)."""
    ends = [0.0] * (slots or len(seconds) or 1)
    for s in seconds:
        i = min(range(len(ends)), key=ends.__getitem__)
        ends[i] += s
    return max(ends)


def summary_lines(prediction: dict) -> list[str]:
    """`plan --calibrate`'s lines: the measured rate beside each model, each trial's predicted
    wall time and the sweep's, with the concurrency used."""
    cal = prediction["calibration"]
    machine = cal["machine"]
    where = machine["gpu_name"] or f"{machine['cpu_name']}, {machine['cpus']} cores"
    lines = [f"calibrated on {machine['host']} ({where}):"]
    width = max(map(len, cal["models"]))
    for label, m in cal["models"].items():
        members = f", array of {m['members']}" if m["members"] > 1 else ""
        flops = "" if m["train_flops_per_s"] is None else f" (≈ {_flop_rate(m['train_flops_per_s'])})"
        lines.append(
            f"  {label:<{width}}  train {m['train_images_per_s']:,.0f} images/s{flops}, eval "
            f"{m['eval_images_per_s']:,.0f} images/s  ({m['device']}, {m['speed']}, {m['threads']} "
            f"thread{'s' if m['threads'] > 1 else ''}, batch {m['batch_size']}{members}; setup "
            f"{m['setup_s']:.1f} s, {m['steps_timed']} steps timed)"
        )
    trials = prediction["predicted_trial_s"]
    lines.append("predicted wall time per trial:")
    width = max(map(len, trials))
    lines += [f"  {name:<{width}}  {duration(s)}" for name, s in trials.items()]
    at_once = f"{cal['concurrency']} at a time" if cal["concurrency"] else "all at once"
    lines.append(
        f"predicted wall time of `run` on this machine: {duration(prediction['predicted_wall_s'])} "
        f"(trials {at_once}; with {SWEEP_START_S:g} s to start and {SWEEP_END_S:g} s to end)"
    )
    if cal["slowdown"] > 1:
        lines.append(
            f"  each trial computing {cal['slowdown']:.2f}× slower than measured alone: the trials at once and "
            f"the driver share the machine"
        )
    if cal["other_work_cores"] >= OTHER_WORK_SHOWN:
        lines.append(
            f"  other work kept {cal['other_work_cores']:.1f} of the {machine['cpus']} cores busy while calibrating; "
            f"if it goes on, `run` takes about {duration(cal['wall_s_if_other_work_goes_on'])}"
        )
    return lines


def _flop_rate(flops: float) -> str:
    return f"{flops / 1e12:.3g} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.3g} GFLOP/s"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
