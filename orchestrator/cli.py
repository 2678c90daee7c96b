"""`resnet-sweep …`: the command line. Exit codes: 0 success, 1 runtime failure, 2 bad input
(nothing was started), 3 the training run diverged (`train`), 130 interrupted
(Ctrl-C)."""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import signal
import sys
from pathlib import Path

from orchestrator.flags import MODEL_FLAGS, TRAIN_FLAGS, add_flags, add_variant_flag, field_to_flag, flat_from_args
from orchestrator.running.ray_compat import RayCompatError
from orchestrator.sweepfile.spec import SpecError
from resnet_core import metrics as M
from resnet_core.config import DATASETS, FOLDER_DATASETS
from resnet_core.errors import ConfigError, DataUnavailableError, TorchOpMissing
from resnet_core.registry import VARIANTS

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_DIVERGED = 0, 1, 2, 3


class UsageError(Exception):
    """Bad input found after argument parsing: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (exit 2), like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        # A subcommand's parser gets the rest of the line: what it leaves unknown is its own to
        # report (with its help), not the top-level parser's.
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def _fmt_count(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _config_from_args(args, flags):
    from resnet_core.config import RunConfig

    flat = flat_from_args(args, flags)
    try:
        return RunConfig.from_flat(flat)
    except ConfigError as err:
        raise UsageError(f"{field_to_flag(err.field)}: {err.reason}") from None


def cmd_describe(args) -> int:
    from orchestrator.sweepfile.model_counts import MAX_IMAGE_SIZE, check_model_size, model_description
    from resnet_core.config import DEFAULT_CROP, DEFAULT_INPUT_SIZE, DataConfig, num_classes
    from resnet_core.folders import ILSVRC2012

    cfg = _config_from_args(args, MODEL_FLAGS)
    if args.input_size is not None and not 8 <= args.input_size <= MAX_IMAGE_SIZE:
        raise UsageError(f"--input-size: {args.input_size} must be between 8 and {MAX_IMAGE_SIZE}")
    input_size, classes = args.input_size, None
    if args.dataset == "imagenet":  # no folder needed: ILSVRC-2012's classes, the recipe's crop
        input_size, classes = input_size or DEFAULT_CROP, ILSVRC2012.classes
    elif args.dataset:  # the dataset's image size and class count
        data = DataConfig(name=args.dataset)
        input_size, classes = input_size or data.image_size, num_classes(data)
    try:
        # Unset classes: at most ImageNet's 1000, which bounds the check.
        check_model_size(
            cfg.model,
            classes=classes or cfg.model.num_classes or 1000,
            image_size=input_size or DEFAULT_INPUT_SIZE[cfg.model.arch],
        )
        info = model_description(cfg.model, input_size=input_size, classes=classes)
    except ConfigError as err:
        raise UsageError(f"{field_to_flag(err.field)}: {err.reason}") from None
    if args.json:
        print(json.dumps(info))
        return EXIT_OK
    stages = " / ".join(map(str, info["blocks_per_stage"]))
    print(
        f"{info['name']}  ({info['arch']}, {info['block']} blocks, shortcut {info['shortcut']}, "
        f"{'residual' if info['residual'] else 'plain'})"
    )
    print(f"  params            {info['params']:>14,}  ({_fmt_count(info['params'])})")
    print(f"  params w/o BN     {info['params_without_bn']:>14,}  ({_fmt_count(info['params_without_bn'])})")
    print(f"  multiply-adds     {info['macs']:>14,}  ({_fmt_count(info['macs'])} at {info['input_size']} px)")
    print(f"  weighted layers   {info['weighted_layers']:>14}")
    print(f"  blocks per stage  {stages:>14}")
    print(f"  shortcut projections {info['shortcut_projections']} ({info['shortcut_params']:,} params)")
    return EXIT_OK


def _progress_line(report) -> str:
    m = report.metrics
    width = len(str(report.epochs))
    return (
        f"epoch {report.epoch:>{width}}/{report.epochs}  loss {m['train_loss']:.4f}  "
        f"train err {m['train_error']:6.2%}  val err {m['val_error']:6.2%}  test err {m['test_error']:6.2%}  "
        f"lr {m['lr']:.4g}  {m['images_per_second']:7.0f} img/s  {m['epoch_seconds']:5.1f}s"
    )


def _load_checkpoint(path_text: str, current: dict) -> dict:
    """A `train --checkpoint-dir` checkpoint, checked against the settings of this run."""
    import torch

    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"--resume: no checkpoint file at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UsageError(f"--resume: {path} is not a checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise UsageError(f"--resume: {path} is not a resnet-sweep checkpoint")
    changed = [
        k
        for k in sorted(set(state["config"]) | set(current))
        if k != "train.device" and state["config"].get(k) != current.get(k)
    ]
    if changed:
        shown = ", ".join(
            f"{field_to_flag(k)} {state['config'].get(k)!r} (now {current.get(k)!r})" for k in changed[:4]
        )
        raise UsageError(f"--resume: the checkpoint was trained with other settings: {shown}; pass the same flags")
    return state


def _writable(path_text: str, flag: str, *, folder: bool = False) -> Path:
    """Fail before training, not after, when an output path cannot be written; nothing is
    created until training starts."""
    from orchestrator.persistence.storage import local_folder_problem

    path = Path(path_text)
    problem = (
        "it is a folder" if not folder and path.is_dir() else local_folder_problem(path if folder else path.parent)
    )
    if problem:
        raise UsageError(f"{flag}: cannot write {path} ({problem})")
    return path


def cmd_train(args) -> int:
    import torch

    from orchestrator.sweepfile.model_counts import check_trial_size
    from resnet_core.train import Trainer

    cfg = _config_from_args(args, MODEL_FLAGS + TRAIN_FLAGS)
    if args.dataset__name is None:
        raise UsageError(f"--dataset: required ({', '.join(DATASETS)})")
    json_out = _writable(args.json_out, "--json-out") if args.json_out else None
    ckpt_dir = _writable(args.checkpoint_dir, "--checkpoint-dir", folder=True) if args.checkpoint_dir else None
    resume_state = _load_checkpoint(args.resume, cfg.to_flat()) if args.resume else None
    try:
        check_trial_size(cfg)
        trainer = Trainer(cfg)
    except ConfigError as err:
        raise UsageError(f"{field_to_flag(err.field)}: {err.reason}") from None
    if ckpt_dir:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    if resume_state is not None:
        trainer.load_state_dict(resume_state)
        print(f"resumed from {args.resume} at epoch {trainer.epoch}", file=sys.stderr)
    print(
        f"training {cfg.model.name} on {cfg.dataset.name} for {trainer.epochs} epochs "
        f"({trainer.total_steps} steps) on {trainer.device}",
        flush=True,
    )

    def report(r):
        print(_progress_line(r), flush=True)
        if ckpt_dir:
            torch.save(r.checkpoint(), ckpt_dir / f"epoch{r.epoch:04d}.pt")

    result = trainer.run(report)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2))
    if result["status"] == "diverged":
        print(
            f"diverged in epoch {trainer.epoch + 1}: the training loss became non-finite or exceeded "
            f"{cfg.train.divergence_factor:g}× chance level (lr {cfg.train.lr:g}); try a lower --lr or "
            f"--warmup-iterations",
            file=sys.stderr,
        )
        return EXIT_DIVERGED
    print(
        f"done: best epoch {result['best_epoch']} (chosen on val)  train err {result['train_error']:.2%}  "
        f"val err {result['val_error']:.2%}  test err {result['test_error']:.2%}  "
        f"{result['images_per_second']:.0f} img/s"
    )
    if M.TEST_ERROR_10CROP in result:
        print(
            f"final model, 10-crop test: top-1 err {result[M.TEST_ERROR_10CROP]:.2%}  "
            f"top-5 err {result[M.TEST_TOP5_ERROR_10CROP]:.2%}"
        )
    return EXIT_OK


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="address of an existing Ray cluster (default: start Ray on this machine)")
    p.add_argument(
        "--storage-path",
        help="where Tune keeps results and checkpoints (default: ./ray_results; s3://… or a shared folder for clusters)",
    )
    p.add_argument(
        "--no-report", action="store_true", help="do not write the report (./reports/NAME) when the sweep ends"
    )


def _load(args):
    """The sweep file with its `--set` overrides, validated."""
    from orchestrator.sweepfile.spec import load_spec

    return load_spec(args.sweep, args.overrides)


def _add_set_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one setting of the sweep file (repeatable): KEY a dotted path (train.epochs, resources.gpu, "
        "search.space.model.depth), VALUE read as YAML ([20, 56], 1e-3); docs/sweep-file.md lists the keys",
    )


def _warn(lines: list[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def cmd_plan(args) -> int:
    from orchestrator.sweepfile.plan import DECODE_IMAGES_PER_CORE, DEFAULT_CPU_GFLOPS, make_plan, plan_summary

    for flag in ("gpu_tflops", "cpu_gflops", "decode_rate"):
        value = getattr(args, flag)
        if value is not None and not 0 < value < float("inf"):
            raise UsageError(f"--{flag.replace('_', '-')}: {value:g} must be a positive number")
    gflops = args.cpu_gflops or DEFAULT_CPU_GFLOPS
    if args.extend and args.calibrate:
        raise UsageError("--calibrate: measures a sweep's trials; leave out --extend")
    parsed = _load(args)
    if args.extend:
        return _plan_extension(parsed, args)
    plan = make_plan(
        parsed,
        gpu_tflops=args.gpu_tflops,
        cpu_gflops=gflops,
        decode_rate=args.decode_rate or DECODE_IMAGES_PER_CORE,
    )
    _warn(plan.warnings)
    if args.calibrate:  # measures: data loaded, each model trained briefly here
        from orchestrator.sweepfile.calibration import calibrate

        try:
            plan.prediction = calibrate(plan)
        except ConfigError as err:  # the trials' device is not on this machine
            print(f"error: --calibrate measures on this machine: {err}", file=sys.stderr)
            return EXIT_FAILURE
    budget = plan.spec.budget.model_dump()
    if args.json:
        print(json.dumps(plan_summary(plan)))
        return EXIT_OK
    print(f"{plan.spec.name}: {plan.spec.description}".rstrip(": "))
    arrays = plan.arrays
    if plan.trials is not None:
        keys = list(dict.fromkeys(k for t in plan.trials for k in t.varying))
        width = max(len(t.name) for t in plan.trials)
        cols = {k: max(len(k), *(len(str(t.varying.get(k, ""))) for t in plan.trials)) for k in keys}
        array_of = {t.index: i for i, array in enumerate(arrays or []) for t in array}
        print(
            f"\n{'#':>3}  {'trial':<{width}}  "
            + "  ".join(f"{k:>{cols[k]}}" for k in keys)
            + f"  {'params':>8}  {'MACs':>8}"
            + ("  array" if arrays else "")
        )
        for t in plan.trials:
            model = plan.models[plan.model_of[t.index]]
            print(
                f"{t.index:>3}  {t.name:<{width}}  "
                + "  ".join(f"{t.varying.get(k, '')!s:>{cols[k]}}" for k in keys)
                + f"  {_fmt_count(model['params']):>8}  {_fmt_count(model['macs']):>8}"
                + (f"  {array_of[t.index]:>5}" if arrays else "")
            )
    else:
        print(f"\n{plan.num_trials} trials drawn by Optuna (TPE) from:")
        for key, dim in plan.spec.search.space.items():
            print(f"  {key:<28} {dim}")
    print(f"\nmodels ({len(plan.models)} distinct):")
    label_width = max(36, *map(len, plan.models))
    for name, m in plan.models.items():
        print(f"  {name:<{label_width}} {m['params']:>12,} params  {_fmt_count(m['macs']):>8} MACs")
    print(f"\ntrials: {plan.num_trials}, up to {plan.epochs_per_trial} epochs each on {plan.train_images:,} images")
    if arrays:
        print(
            f"arrays: {len(arrays)} ({'+'.join(str(len(a)) for a in arrays)} members), each one Tune trial on one device "
            f"(resources.array: {plan.spec.resources.array}; trials of one shape share an array)"
        )
    print(f"epochs without early stopping: {plan.total_epochs:,}")
    if plan.asha_epochs is not None:
        print(f"epochs expected with ASHA:     {plan.asha_epochs:,.0f} ({plan.asha_epochs / plan.total_epochs:.0%})")
    print("budget: " + ", ".join(f"{key} {'none' if value is None else f'{value:,}'}" for key, value in budget.items()))
    r = plan.spec.resources
    if r.workers > 1:
        per = f"{r.cpu:g} CPU{'s' if r.cpu != 1 else ''}" + (f" and {r.gpu:g} GPU" if r.gpu else "")
        print(
            f"each trial: {r.workers} data-parallel workers (resources.workers) of {per} each, "
            f"{plan.configs[0]['train.batch_size']} images per step among them"
        )
    if plan.spec.resources.gpu:
        _print_gpu_estimate(plan, given=args.gpu_tflops is not None)
    else:
        print(
            f"CPU core-hours (estimate at {gflops:g} GFLOP/s per core sustained; resources.gpu is 0): {plan.cpu_hours:.2f}"
        )
    if plan.prediction:
        from orchestrator.sweepfile.calibration import summary_lines

        print()
        print("\n".join(summary_lines(plan.prediction)))
    return EXIT_OK


def _span(values, fmt: str) -> str:
    """One value, or the lowest and highest: ``5`` or ``5–50``."""
    low, high = min(values), max(values)
    return format(low, fmt) if low == high else f"{low:{fmt}}–{high:{fmt}}"


def _print_gpu_estimate(plan, *, given: bool) -> None:
    """`plan`'s GPU-hours: by pass, the throughput assumed and why, one trial's wall-clock on its
    GPUs, and for image folders what the CPUs decode against what the GPU trains."""
    from orchestrator.sweepfile.plan import DEFAULT_GPU_TFLOPS, IMAGENET_GPU_TFLOPS, IMAGENET_MIN_SIZE

    models = plan.models
    resources = plan.spec.resources
    tflops = _span([m["gpu_tflops"] for m in models.values()], "g")
    print(f"GPU-hours (estimate at {tflops} TFLOP/s sustained per GPU): {plan.gpu_hours:,.2f}")
    by_pass = plan.gpu_hours_by_pass
    run = plan.configs[0]
    evaluated = "val + test every epoch"
    if run["dataset.name"] in FOLDER_DATASETS:
        from resnet_core.config import RunConfig, split_sizes

        _, val, test = split_sizes(RunConfig.from_flat(run).dataset)
        evaluated = f"val {val:,} + test {test:,} centre crops every epoch"
    line = f"  training {by_pass['train']:,.2f} + {evaluated} {by_pass['eval_every_epoch']:,.2f}"
    if by_pass["ten_crop"]:
        line += f" + final 10-crop test {by_pass['ten_crop']:,.2f}"
    print(line)
    if not given and any(m["gpu_tflops"] == DEFAULT_GPU_TFLOPS for m in models.values()):
        print(
            f"  {DEFAULT_GPU_TFLOPS:g} TFLOP/s per GPU: assumed, not measured, for CIFAR-size models (no GPU has been "
            f"lent to this project to measure it); `plan --calibrate` on the GPU machine measures the trials' rate "
            f"(--gpu-tflops sets it)"
        )
    if not given and any(m["gpu_tflops"] == IMAGENET_GPU_TFLOPS for m in models.values()):
        print(
            f"  {IMAGENET_GPU_TFLOPS:g} TFLOP/s per GPU: assumed for ImageNet-size models (arch imagenet at ≥ "
            f"{IMAGENET_MIN_SIZE} px), about NVIDIA's published mixed-precision ResNet-50 rate on A100s; not measured "
            f"here yet (--gpu-tflops sets it)"
        )
    if resources.array == 1:
        per_gpu = ""
        if resources.workers > 1:
            batches = {c["train.batch_size"] // resources.workers for c in plan.configs}
            per_gpu = f", {_span(batches, ',')} images per GPU per step"
        gpus = f"{resources.trial_gpus:g} GPU{'s' if resources.trial_gpus > 1 else ''}"
        if resources.workers > 1:
            gpus += f" (resources.workers {resources.workers} × gpu {resources.gpu:g}{per_gpu})"
        hours = {name: m["trial_hours"] for name, m in models.items()}
        slowest = max(hours, key=hours.get)
        shown = (
            _span(hours.values(), ",.2f") + " h" + (f" ({slowest} the longest)" if len(set(hours.values())) > 1 else "")
        )
        print(f"  one trial on {gpus}: {shown}")
    if plan.loader:
        # One line: the CPUs' decoding against the range of what the GPU trains, the most demanding model named.
        loader = plan.loader
        rates = {name: m["gpu_trains_images_per_s"] / m["decodes_images_per_s"] for name, m in loader["models"].items()}
        worst = loader["models"][max(rates, key=rates.get)]
        trains = _span([m["gpu_trains_images_per_s"] for m in loader["models"].values()], ",.0f")
        starved = [name for name, m in loader["models"].items() if m["starved"]]
        print(
            f"loader: {worst['decoding_cpus']:g} CPUs per worker decode ≈ {worst['decodes_images_per_s']:,.0f} images/s "
            f"({loader['decode_images_per_core']:g} per core); a GPU trains ≈ {trains} images/s at the rate above "
            f"({max(rates, key=rates.get)} the most): "
            + (f"the GPU would wait for the CPUs ({', '.join(starved)})" if starved else "enough")
        )


def _plan_extension(parsed, args) -> int:
    """`plan FILE --extend`: what `run FILE --extend` would keep, continue and add; starts nothing."""
    from orchestrator.persistence import storage
    from orchestrator.running.extend import growth_of, say_growth
    from orchestrator.running.sweep import Prepared
    from orchestrator.sweepfile.plan import make_plan

    spec = parsed.spec
    where = storage.normalize(args.storage_path or spec.storage_path or storage.default_storage_path())
    plan = make_plan(parsed, with_models=False)
    found = growth_of(Prepared(parsed, plan, where, spec.name, "", spec.name))
    if found is None:
        message = (
            f"no sweep named {spec.name!r} in {where} yet: `run --extend` would start it ({plan.num_trials} trials)"
        )
        print(json.dumps({"name": spec.name, "exists": False, "new": plan.num_trials}) if args.json else message)
        return EXIT_OK
    path, growth = found
    if args.json:
        summary = {"name": spec.name, "exists": True, "folder": path, "done": growth.done}
        summary.update(unfinished=growth.unfinished, new=growth.new_samples, removed=len(growth.removed))
        summary["changed"] = [key for key, _, _ in growth.changed]
        print(json.dumps(summary))
    else:
        say_growth(spec.name, growth)
    return EXIT_OK


def cmd_run(args) -> int:
    from orchestrator.running.sweep import SweepError, prepare_sweep, run_or_resume, run_sweep

    parsed = _load(args)
    if args.extend and args.resume_if_exists:
        raise UsageError("--extend: continues the sweep already; leave out --resume-if-exists")
    try:
        prep = prepare_sweep(
            parsed,
            address=args.address,
            storage_path=args.storage_path,
            tracking_uri=args.tracking_uri,
            smoke_test=args.smoke_test,
        )
        _warn(prep.plan.warnings)
        if args.extend:
            from orchestrator.running.extend import extend_sweep

            return extend_sweep(prep, address=args.address, tracking_uri=args.tracking_uri, report=not args.no_report)
        if args.resume_if_exists:
            return run_or_resume(prep, address=args.address, report=not args.no_report)
        return run_sweep(prep, address=args.address, report=not args.no_report)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_resume(args) -> int:
    from orchestrator.running.sweep import SweepError, find_experiment, resume_sweep

    try:
        return resume_sweep(
            find_experiment(args.sweep, args.storage_path),
            address=args.address,
            tracking_uri=args.tracking_uri,
            report=not args.no_report,
        )
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_sync(args) -> int:
    from orchestrator.running.sweep import SweepError, find_experiment
    from orchestrator.running.sync import sync_sweep

    try:
        return sync_sweep(find_experiment(args.sweep, args.storage_path), tracking_uri=args.tracking_uri)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_export(args) -> int:
    from orchestrator.running.export import export_model
    from orchestrator.running.sweep import SweepError

    out = _writable(args.out, "--out")
    try:
        print(export_model(args.sweep, out, trial=args.trial, storage_path=args.storage_path))
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _from_mlflow(read):
    """Runs ``read`` (which reads a sweep from MLflow): a sweep or store that is not there is bad
    input (exit 2); a store that fails to answer, midway too, is one line (exit 1)."""
    from mlflow.exceptions import MlflowException

    from orchestrator.tracking.mlflow_store import TrackingUnavailableError, redact
    from orchestrator.tracking.records import SweepNotFound, SweepUnreadable

    try:
        return read()
    except SweepNotFound as err:
        raise UsageError(str(err)) from None
    except (TrackingUnavailableError, SweepUnreadable, MlflowException, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ReadFailure(redact(first)) from None


class ReadFailure(Exception):
    """MLflow did not answer (or a file could not be written) while reading a sweep: exit 1."""


def cmd_report(args) -> int:
    from orchestrator.report.report import report_sweep

    folder = _from_mlflow(lambda: report_sweep(args.tracking_uri, args.sweep, out=args.out, experiment=args.experiment))
    shown = folder if args.out else folder.relative_to(Path.cwd())
    print(
        f"report: {shown / 'index.md'} and {shown / 'report.html'} (also on the sweep's MLflow run, artifacts report/)"
    )
    return EXIT_OK


def cmd_compare(args) -> int:
    from orchestrator.report.compare import WORSE, SweepsIncomparable, compare_sweeps

    try:
        comparison, folder = _from_mlflow(lambda: compare_sweeps(args.tracking_uri, args.a, args.b, out=args.out))
    except SweepsIncomparable as err:
        raise UsageError(str(err)) from None
    shown = folder if args.out else folder.relative_to(Path.cwd())
    print(f"{comparison.a.name} (A) vs {comparison.b.name} (B): {comparison.summary()}")
    print(f"compare: {shown / 'index.md'}, {shown / 'compare.html'} and {shown / 'compare.csv'}")
    if args.fail_on_worse and comparison.count(WORSE):
        print(f"error: {comparison.count(WORSE)} configuration(s) {WORSE} (--fail-on-worse)", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_status(args) -> int:
    from orchestrator.report import standing
    from orchestrator.tracking.records import open_record
    from resnet_core import metrics as M

    _, record = _from_mlflow(
        lambda: open_record(
            args.tracking_uri, args.sweep, args.experiment, keys=(M.VAL_ERROR, M.TEST_ERROR), responses=False
        )
    )
    now = standing.from_record(record)
    if args.json:
        print(
            json.dumps(
                {"name": record.name, "experiment": record.experiment, **now.to_dict(), "retired": record.retired}
            )
        )
    else:
        print(f"{record.name} (MLflow experiment {record.experiment!r}): {standing.summary_line(now)}")
        if retired := record.retired_line():
            print(retired)
    return EXIT_OK


def cmd_ui(args) -> int:
    import os

    from mlflow import MlflowClient

    from orchestrator.tracking.mlflow_store import (
        TrackingUnavailableError,
        check_scheme,
        default_tracking_uri,
        normalize_tracking_uri,
        redact,
        use_tracking_uri,
    )

    uri = normalize_tracking_uri(args.tracking_uri or default_tracking_uri())
    try:
        check_scheme(uri)
        shown = use_tracking_uri(uri)  # without its login: what is printed
    except TrackingUnavailableError as err:
        raise UsageError(f"--tracking-uri: {err}") from None
    if uri.startswith(("http://", "https://")):
        raise UsageError(f"--tracking-uri: {shown} is an MLflow server: it serves its own UI, open it in a browser")
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UsageError(
            f"--tracking-uri: no MLflow store at {uri.removeprefix('sqlite:///')}; run a sweep here first or pass --tracking-uri"
        )
    # MLflow's job runner (8 processes, for GenAI jobs no sweep uses) makes the UI start and stop
    # 1-3 s slower and hold ~0.7 GiB more; a user who wants it sets the variable.
    jobs = os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if jobs.strip().lower() not in ("true", "false", "1", "0"):
        raise UsageError(f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION: {jobs!r} is not true or false")
    _check_port_free(args.host, args.port)
    if not _is_loopback(args.host):
        print(
            f"warning: --host {args.host}: the MLflow UI is then reachable from the network without authentication "
            f"(whoever reaches port {args.port} can read, change and delete runs)",
            file=sys.stderr,
        )
    url = f"http://{args.host}:{args.port}"
    try:
        experiments = MlflowClient(uri).search_experiments()
    except Exception as err:  # a database that does not answer, or whose driver is not installed
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"error: cannot read the MLflow store {shown} ({type(err).__name__}: {redact(first)})", file=sys.stderr)
        return EXIT_FAILURE
    print(f"MLflow UI for {shown} at {url}  (Ctrl-C to stop)")
    for exp in experiments:
        if exp.name != "Default":  # MLflow 3 opens on GenAI pages: link the runs tables directly
            print(f"  {exp.name}: {url}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning")
    sys.stdout.flush()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        str(args.workers),
    ]
    # The store's URI goes in the environment, not the command line: a database password in it
    # would be in `ps` for every account on the machine.
    os.environ["MLFLOW_BACKEND_STORE_URI"] = uri
    os.execv(sys.executable, cmd)  # the UI becomes this process: signals reach it directly


def cmd_k8s_render(args) -> int:
    from orchestrator.k8s import RenderError, render, render_yaml

    parsed = _load(args)
    try:
        objects = render(
            parsed,
            image=args.image,
            gpus=args.gpus,
            namespace=args.namespace,
            name=args.name,
            tracking_uri=args.tracking_uri,
            storage_path=args.storage_path,
            data_claim=args.data_claim,
            warn=lambda line: print(line, file=sys.stderr),
        )
    except RenderError as err:
        raise UsageError(str(err)) from None
    sys.stdout.write(render_yaml(objects))
    return EXIT_OK


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0 to 65535)")
    return port


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: only localhost is known to stay on this machine
        return host == "localhost"


def _check_port_free(host: str, port: int) -> None:
    """A busy port is one line here, not a page of the server's log lines after it starts."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UsageError(
                f"--port: {port} on {host} is not available ({err.strerror}); pass another --port"
            ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="resnet-sweep",
        description="Reproduce and extend the ResNet papers as Ray Tune sweeps tracked in MLflow.",
        epilog="exit codes: 0 success, 1 runtime failure, 2 bad input (nothing started), 3 training diverged, 130 interrupted (Ctrl-C)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    variants = f"model variants for --model: {', '.join(VARIANTS)}"
    p = sub.add_parser("describe", help="parameters, multiply-adds and layers of one model", epilog=variants)
    add_variant_flag(p)
    add_flags(p, MODEL_FLAGS, "model")
    p.add_argument(
        "--dataset",
        choices=[d for d in DATASETS if d != "imagefolder"],
        help="count at this dataset's image size and classes",
    )
    p.add_argument(
        "--input-size",
        type=int,
        help="input side in pixels for the MAC count (default: the dataset's, else 32 CIFAR, 224 ImageNet)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("train", help="train one model without Ray (a progress line per epoch)", epilog=variants)
    add_variant_flag(p)
    add_flags(p, MODEL_FLAGS, "model")
    add_flags(p, TRAIN_FLAGS, "data and recipe")
    p.add_argument("--json-out", metavar="FILE", help="write the result (status, errors, history, …) as JSON")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="save a checkpoint after every epoch")
    p.add_argument("--resume", metavar="FILE", help="continue from a checkpoint written by --checkpoint-dir")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("plan", help="validate a sweep file and show its trials, models and budget (starts nothing)")
    p.add_argument("sweep", metavar="SWEEP.yaml")
    _add_set_flag(p)
    p.add_argument(
        "--extend",
        action="store_true",
        help="show what `run --extend` would do with the sweep of this name: trials done, unfinished, new",
    )
    p.add_argument("--storage-path", help="where to look for the sweep with --extend (default: ./ray_results)")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="time a short training and an evaluation of each distinct model here, as its trials will run, and "
        "predict each trial's and the sweep's wall time on this machine (predicted_wall_s, predicted_trial_s)",
    )
    p.add_argument(
        "--gpu-tflops",
        type=float,
        default=None,
        help="sustained TFLOP/s per GPU assumed for the GPU-hour estimate (default 50 for ImageNet-size models: "
        "arch imagenet at 112 px or more; else 5, assumed, not measured; --calibrate on a GPU measures it)",
    )
    p.add_argument(
        "--decode-rate",
        type=float,
        default=None,
        help="images/s one CPU core decodes and augments for image folders, to compare with what the GPU "
        "trains (default 280: `python bench loader` on a 2-core Xeon)",
    )
    p.add_argument(
        "--cpu-gflops",
        type=float,
        default=None,
        help="sustained GFLOP/s per core assumed for the CPU-hour estimate of sweeps without GPUs (default 25, "
        "measured on a 2-core Xeon)",
    )
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", help="run a sweep on Ray Tune, tracked in MLflow")
    p.add_argument("sweep", metavar="SWEEP.yaml")
    _add_set_flag(p)
    _add_run_flags(p)
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: sqlite:///mlflow.db here, or the sweep's tracking.tracking_uri)",
    )
    p.add_argument("--smoke-test", action="store_true", help="tiny version: 2 epochs on 256 images, at most 4 trials")
    p.add_argument(
        "--resume-if-exists",
        action="store_true",
        help="if this sweep (same name, same file) is already in the storage path, continue it instead of "
        "starting another (for entrypoints that may run twice, e.g. a retried Kubernetes job)",
    )
    p.add_argument(
        "--extend",
        action="store_true",
        help="grow the sweep of this name to the edited file: finished trials are kept, unfinished ones "
        "continue, only new ones train (same folder, same MLflow parent run)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="continue an interrupted sweep (finished trials are not rerun)")
    p.add_argument(
        "sweep",
        metavar="NAME|PATH|URI",
        help="the sweep's name (under the storage path), its folder, or its s3://… / gs://… URI",
    )
    _add_run_flags(p)
    p.add_argument(
        "--tracking-uri",
        help="the sweep's MLflow server with its login (http://USER:PASSWORD@HOST:PORT), "
        "which is never stored; or set MLFLOW_TRACKING_USERNAME/PASSWORD",
    )
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser(
        "sync",
        help="send a sweep's results from its Tune folder to MLflow (what a dead driver or a "
        "down server left out); running it twice changes nothing",
    )
    p.add_argument(
        "sweep",
        metavar="NAME|PATH|URI",
        help="the sweep's name (under the storage path), its folder, or its s3://… / gs://… URI",
    )
    p.add_argument("--storage-path", help="where to look for NAME (default: ./ray_results)")
    p.add_argument(
        "--tracking-uri",
        help="the sweep's MLflow server with its login (http://USER:PASSWORD@HOST:PORT); default: where the sweep logs",
    )
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser(
        "export",
        help="one trial's weights as a standalone file, loaded with resnet_core.load_model(FILE) in one call",
    )
    p.add_argument(
        "sweep",
        metavar="NAME|PATH|URI",
        help="the sweep's name (under the storage path), its folder, or its s3://… / gs://… URI",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--best", action="store_true", help="the trial with the lowest value of the sweep's metric (val error)"
    )
    which.add_argument("--trial", metavar="TRIAL", help="the trial's name, as `run`'s table and MLflow show it")
    p.add_argument(
        "--out",
        metavar="FILE",
        required=True,
        help="the file to write (weights, model settings, normalisation, class names; replaced if there)",
    )
    p.add_argument("--storage-path", help="where to look for NAME (default: ./ray_results)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "status", help="where a sweep stands (trials by status, epochs, best so far, ETA), read from MLflow"
    )
    p.add_argument("sweep", metavar="NAME", help="the sweep's name, as `run` printed it")
    p.add_argument("--tracking-uri", help="the sweep's MLflow store (default: sqlite:///mlflow.db in this folder)")
    p.add_argument("--experiment", help="the MLflow experiment to look in (default: every experiment)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "report", help="the papers' tables and figures for a sweep (Table 6, Fig. 6, Fig. 7, …), from MLflow"
    )
    p.add_argument("sweep", metavar="NAME", help="the sweep's name, as `run` printed it")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="folder to write index.md, report.html, figures and CSVs into (default: ./reports/NAME)",
    )
    p.add_argument("--tracking-uri", help="the sweep's MLflow store (default: sqlite:///mlflow.db in this folder)")
    p.add_argument("--experiment", help="the MLflow experiment to look in (default: every experiment)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "compare",
        help="did the results change? two sweeps' trials matched by configuration, each difference judged "
        "against the noise, from MLflow",
    )
    p.add_argument("a", metavar="A", help="the sweep compared against (its name, as `run` printed it)")
    p.add_argument("b", metavar="B", help="the sweep compared with A")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="folder to write index.md, compare.html and compare.csv into (default: ./compare/A-vs-B)",
    )
    p.add_argument("--tracking-uri", help="the sweeps' MLflow store (default: sqlite:///mlflow.db in this folder)")
    p.add_argument(
        "--fail-on-worse",
        action="store_true",
        help="exit 1 when any configuration is worse in B beyond noise (a CI job guarding a recipe)",
    )
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("ui", help="the MLflow UI for the local store, on 127.0.0.1")
    p.add_argument("--tracking-uri", help="store to browse (default: sqlite:///mlflow.db in this folder)")
    p.add_argument("--port", type=_port, default=5000)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default loopback only)")
    p.add_argument("--workers", type=int, default=1, help="server worker processes (default 1: enough for one user)")
    p.set_defaults(func=cmd_ui)

    k8s = sub.add_parser("k8s", help="Kubernetes: manifests for running a sweep with KubeRay (docs/kubernetes.md)")
    k8s_sub = k8s.add_subparsers(dest="k8s_command", required=True, metavar="COMMAND", parser_class=_Parser)
    p = k8s_sub.add_parser(
        "render",
        help="print the RayJob and the ConfigMap (holding the sweep file) for one sweep",
        description="Print, on stdout, a KubeRay RayJob that runs SWEEP.yaml and the ConfigMap that "
        "holds the file; apply with `kubectl apply -f -`. Built from k8s/base/rayjob.yaml.",
    )
    p.add_argument("sweep", metavar="SWEEP.yaml")
    _add_set_flag(p)
    p.add_argument(
        "--image",
        required=True,
        help="the trial image (built from the Dockerfile), e.g. registry.example/resnet-sweep:0.1.0",
    )
    p.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="GPUs in all (default 1): one worker pod per GPU, holding 1/resources.gpu trials",
    )
    p.add_argument("--namespace", help="namespace of both objects (default: kubectl's current one)")
    p.add_argument("--name", help="RayJob name (default: from the sweep's name; at most 47 characters)")
    p.add_argument(
        "--tracking-uri",
        help="MLflow server the sweep logs to (default: the sweep's http(s) tracking_uri, "
        "else the cluster's http://mlflow:5000)",
    )
    p.add_argument(
        "--storage-path",
        help="where Tune keeps the sweep: a folder on the shared volume (default /mnt/sweeps) or s3://bucket/prefix",
    )
    p.add_argument(
        "--data-claim",
        metavar="CLAIM",
        help="a PersistentVolumeClaim holding the data, mounted read-only in "
        "every pod at dataset.root (ImageNet, image folders) or "
        "dataset.cache_dir (CIFAR)",
    )
    p.set_defaults(func=cmd_k8s_render)
    return parser


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `resnet-sweep plan … | head` ends quietly
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, SpecError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ReadFailure, DataUnavailableError, RayCompatError, TorchOpMissing) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def program() -> None:
    """The `resnet-sweep` executable: `main` on the process's arguments, then exit with its code."""
    # Registered before anything else, so it runs last at exit, after Ray's shutdown and the
    # MLflow writer's drain: one collection finalizes what is garbage by then, then the heap is
    # frozen, which leaves it out of the interpreter's own collections at exit. Those walked the
    # Ray, MLflow and torch heap (about 640,000 objects after a sweep) again and again: 2-3 s on
    # two cores, to free memory the OS takes back anyway.
    atexit.register(_collect_then_freeze)
    sys.exit(main())


def _collect_then_freeze() -> None:
    gc.collect()
    gc.freeze()


if __name__ == "__main__":
    program()
