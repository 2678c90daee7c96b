"""The quickstart space with and without ASHA: epochs trained and the best val error.

    python bench asha --sweep sweeps/quickstart.yaml --grace-period 2 --reduction-factor 3

The sweep file runs twice through the orchestrator (``bench.orchestration.run_ours``:
``prepare_sweep`` + ``run_sweep``, as ``resnet-sweep run --no-report``), each time in a fresh
process with its own Ray, MLflow file (made beforehand) and Tune storage: once with ``scheduler: {name: none}`` (the
quickstart as written: the whole grid) and once with ``scheduler: {name: asha, grace_period,
reduction_factor}``. Same trials, seeds and order; the same number run at once (one per CPU).

epochs trained   per trial, the last epoch in its results (Tune's result.json): a trial ASHA
                 stops at a rung has trained exactly that many epochs.
epochs of grid   the epochs the grid run trained (every trial to its end).
best val error   the lowest val error any trial reported at any epoch, chosen on val as the
                 sweep's own "best" line is; its trial is named as in MLflow. The quickstart's val
                 split is 180 images, so one image is 0.56 points.

ASHA settings. The quickstart is 6 trials of 15 epochs, with a learning-rate warm-up of 80
iterations (lr 0.01), which at 40 steps per epoch ends with epoch 2. The spec lets a sweep choose
grace_period and reduction_factor; max_t must be at least the trials' epochs (the trials ASHA
keeps train their whole schedule), so it is left at 15. The defaults here are grace_period 2 and
reduction_factor 3 (Tune's and the spec's default): rungs at epochs 2 and 6, planned at 29 epochs,
32% of the grid's 90. A rung at 2 judges every net at the end of the warm-up; at 1 (rungs 1, 3, 9,
planned 24%) and at 3 (rungs 3 and 9, planned 40%) ASHA would judge during the warm-up or at
epoch 3, where the jump to lr 0.1 sends the nets' val error up to 55–80% for an epoch.

The plan's estimate assumes synchronous halving. Tune's ASHA is asynchronous: a trial reaching a
rung is compared with the trials recorded there before it, and the first to arrive always goes
on. With 6 trials, 2 at a time, the first pair meets every rung with at most one record, so at
least one of them trains all 15 epochs and the other does unless it arrives second and is worse:
a run spends at least 25 epochs (28%), and 38 (42%) or more when both of the first pair go on.

``--smoke-test`` runs both modes with the orchestrator's own ``--smoke-test`` shrinking (the first
4 trials, 2 epochs, 256 training images, grace_period 1).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from bench.orchestration import in_child, run_ours, workdir
from bench.table import emit, machine
from orchestrator.sweepfile.plan import asha_expected_epochs

QUICKSTART = Path(__file__).resolve().parent.parent / "sweeps" / "quickstart.yaml"


def with_scheduler(text: str, scheduler: dict) -> str:
    """The sweep file ``text`` with its scheduler section replaced."""
    import yaml

    data = yaml.safe_load(text)
    data["scheduler"] = scheduler
    return yaml.safe_dump(data, sort_keys=False)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python bench asha", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, default=QUICKSTART, help="the sweep file (default: the quickstart)")
    parser.add_argument("--grace-period", type=int, default=2, help="ASHA's first rung, in epochs")
    parser.add_argument("--reduction-factor", type=float, default=3, help="ASHA keeps 1 in this many at each rung")
    parser.add_argument("--out", type=Path, help="append the table as markdown to this file")
    parser.add_argument(
        "--smoke-test",
        action="store_true",
        help="both modes on the orchestrator's --smoke-test sweep: 4 trials, 2 epochs, 256 images",
    )
    args = parser.parse_args(argv)
    text = args.sweep.read_text()
    asha = {"name": "asha", "grace_period": args.grace_period, "reduction_factor": args.reduction_factor}
    modes = {"grid (no ASHA)": with_scheduler(text, {"name": "none"}), "ASHA": with_scheduler(text, asha)}

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-asha-") as tmp:
        runs = {}
        for i, (mode, sweep) in enumerate(modes.items()):
            folder = workdir(tmp, i, with_mlflow=True)
            print(f"{mode} …", flush=True)
            runs[mode] = in_child(folder / "output.log", run_ours, str(folder), sweep, args.smoke_test)
    load_after = os.getloadavg()

    def trained(run: dict) -> int:
        return sum(max(r["epoch"] for r in epochs) for epochs in run["results"].values())

    grid_epochs = trained(runs["grid (no ASHA)"])
    rows = []
    for mode, run in runs.items():
        error, folder, trial_id = min(
            (r["val_error"], folder, r["trial_id"]) for folder, epochs in run["results"].items() for r in epochs
        )
        rows.append(
            (
                mode,
                str(len(run["results"])),
                str(trained(run)),
                str(grid_epochs),
                f"{trained(run) / grid_epochs:.0%}",
                f"{error:.2%}",
                folder.removesuffix(f"_{trial_id}"),
                f"{run['wall']:.0f}",
            )
        )
    run = runs["ASHA"]
    scheduler = run["scheduler"]  # as it ran: --smoke-test sets grace_period 1
    planned = asha_expected_epochs(run["num_trials"], run["epochs_per_trial"], scheduler)
    title = (
        f"{args.sweep.name}{' --smoke-test' if args.smoke_test else ''}: ASHA grace_period "
        f"{scheduler.grace_period}, reduction_factor {scheduler.reduction_factor:g}, max_t "
        f"{scheduler.max_t or run['epochs_per_trial']} (planned ≈{planned:.0f} epochs) ({machine()}, "
        f"{os.cpu_count()} CPUs, load avg {load_before[0]:.2f} before / {load_after[0]:.2f} after)"
    )
    columns = (
        "mode",
        "trials",
        "epochs trained",
        "epochs of grid",
        "fraction",
        "best val error",
        "best trial",
        "wall s",
    )
    emit(title, columns, rows, args.out, argv, "asha")
    return 0
