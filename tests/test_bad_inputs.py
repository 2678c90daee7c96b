"""Bad input as a new user tries it: sweep files, flags, tracking URIs, Ray addresses,
storage paths, data folders, checkpoints and resume targets. Each case is one line naming the
field (and the YAML line), exit 2 (1 for what only trying finds: a dead cluster, data that
cannot be downloaded), no traceback, nothing started or written.

The same table is in the "Bad input" section of docs/reliability.md, row for row and word for
word: ``python -m tests.test_bad_inputs --markdown`` runs every case and prints it, ``--write``
puts it in the page (from the repository root). Each case's test also compares its row with the
page's, so the page cannot keep a stale message. A row shows the working folder as ``.``, and
what depends on the machine (its CPU count, the S3 client's network error) as ``<…>``."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import VALID

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "reliability.md"
UNWRITABLE = "/sys/resnet-sweep"  # refused even to root, unlike a chmod-ed folder

RANDOM = VALID.replace("grid", "random")
FOLDER_SWEEP = VALID.replace("name: digits, image_size: 16", "name: imagefolder, root: images, image_size: 32")
BOMB = "".join(f"{a}: &{a} [{', '.join([f'*{p}'] * 9)}]\n" for p, a in zip("abcdefgh", "bcdefghi"))
BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + BOMB + VALID


@dataclass(frozen=True)
class Case:
    name: str  # what the user tried
    argv: tuple[str, ...]  # after `resnet-sweep`
    words: tuple[str, ...]  # the line must name these: the field first
    code: int = 2
    files: dict[str, str | bytes] = field(default_factory=dict)  # put in the working directory first
    varies: tuple[tuple[str, str], ...] = ()  # (regex, replacement): the machine-dependent part, for the table


def sweep(name: str, text: str, words: tuple[str, ...], line: int | None = None, *, command: str = "run", **kw) -> Case:
    """A sweep file as `resnet-sweep run sweep.yaml` (or plan) meets it; ``line``: the YAML line named."""
    located = (f"sweep.yaml:{line}:",) if line else ()
    return Case(name, (command, "sweep.yaml"), words + located, files={"sweep.yaml": text}, **kw)


def with_valid(name: str, argv: tuple[str, ...], words: tuple[str, ...], code: int = 2, **kw) -> Case:
    """``argv`` on the valid sweep file."""
    return Case(name, argv, words, code, files={"sweep.yaml": VALID, **kw.pop("files", {})}, **kw)


CASES = [
    # --- the sweep file ------------------------------------------------------------------------------
    sweep("an empty file", "", ("YAML mapping",), 1),
    sweep("a list instead of a mapping", "- name: t\n- model: {}\n", ("YAML mapping",), 1),
    sweep("tabs for indentation", "name: t\nmodel:\n\tdepth: 20\n", ("YAML syntax error", "cannot start any token"), 3),
    sweep("an unclosed brace", "name: t\nmodel: {arch: cifar\ntrain: {}\n", ("YAML syntax error",), 3),
    sweep("a key given twice", VALID + "train: {epochs: 3}\n", ("duplicate key 'train'",), 9),
    sweep("a misspelt section", VALID + "modle: {}\n", ("modle", "did you mean model"), 9),
    sweep("a misspelt model key", VALID.replace("block:", "blok:"), ("model.blok", "did you mean block"), 3),
    sweep("no name", VALID.replace("name: t\n", ""), ("name", "required")),
    sweep("a name with a slash", VALID.replace("name: t", "name: a/b"), ("name", "'a/b'"), 1),
    sweep(
        "a word where a number goes",
        VALID.replace("batch_size: 64", "batch_size: many"),
        ("train.batch_size", "integer"),
        4,
    ),
    sweep("an unknown dataset", VALID.replace("name: digits", "name: svhn"), ("dataset.name", "cifar10"), 2),
    sweep("a depth that is not 6n+2", VALID.replace("[8, 14]", "[8, 21]"), ("search.space.model.depth", "6n+2"), 8),
    sweep(
        "a misspelt search key",
        VALID.replace("model.depth:", "model.depht:"),
        ("model.depht", "did you mean model.depth"),
        8,
    ),
    sweep("an empty list of values", VALID.replace("[8, 14]", "[]"), ("search.space.model.depth", "empty list"), 8),
    sweep(
        "an unknown distribution",
        RANDOM + "    train.lr: {normal: [0.1, 0.01]}\n",
        ("search.space.train.lr", "uniform"),
        9,
    ),
    sweep(
        "a distribution in a grid",
        VALID + "    train.lr: {loguniform: [1e-3, 1e-1]}\n",
        ("search.space.train.lr", "random or optuna"),
        9,
    ),
    sweep(
        "bounds the wrong way round", RANDOM + "    train.lr: {uniform: [0.1, 0.01]}\n", ("train.lr", "low < high"), 9
    ),
    sweep("loguniform from zero", RANDOM + "    train.lr: {loguniform: [0, 0.1]}\n", ("train.lr", "positive"), 9),
    sweep("quoted bounds", RANDOM + "    train.lr: {loguniform: ['1e-3', 0.1]}\n", ("train.lr", "two numbers"), 9),
    sweep(
        "an int range over model.depth",
        RANDOM.replace("[8, 14]", "{int: [20, 110]}"),
        ("search.space.model.depth.int", "16 of its 91", "model.n: {int: [3, 18]}"),
        8,
    ),
    sweep(
        "an int range over an ImageNet depth",
        RANDOM.replace("arch: cifar, block: basic, shortcut: A", "arch: imagenet").replace(
            "[8, 14]", "{int: [18, 50]}"
        ),
        ("search.space.model.depth.int", "3 of its 33", "[18, 34, 50]"),
        8,
    ),
    sweep(
        "Optuna with nothing to search",
        VALID.replace("grid", "optuna").replace("model.depth: [8, 14]", "{}").replace("space:\n    {}", "space: {}"),
        ("search.space", "Optuna has nothing to search"),
        7,
    ),
    sweep("a YAML alias bomb (350 bytes)", BOMB, ("expands to more than 100,000 values",)),
    sweep("an alias that contains itself", "name: &a [*a]\n", ("recursive",), 1),
    sweep("a thousand nested lists", "name: " + "[" * 1000 + "]" * 1000 + "\n", ("nested too deeply",)),
    sweep("a 2 MB sweep file", VALID + "description: " + "x" * 2_000_000 + "\n", ("over the limit of 1,000,000",)),
    sweep(
        "a billion random trials",
        RANDOM + "  num_samples: 1000000000\n",
        ("search.num_samples", "over the limit of 10,000"),
        9,
    ),
    sweep(
        "a grid of a million points",
        VALID + "    train.seed: [" + ", ".join(map(str, range(1000))) + "]\n"
        "    train.lr: [" + ", ".join(f"0.{i:03d}" for i in range(1, 1000)) + "]\n",
        ("search.space", "1,998,000 trials", "2 × 1000 × 999 values"),
        7,
    ),
    sweep(
        "a depth of six million",
        VALID.replace("[8, 14]", "[6000002]"),
        ("search.space.model.depth", "over the limit of 2,500"),
        8,
    ),
    sweep(
        "a width of 100,000",
        VALID.replace("shortcut: A", "shortcut: A, width: 100000"),
        ("model.width", "over the limit of 64"),
        3,
    ),
    sweep(
        "images of 100,000 px",
        VALID.replace("image_size: 16", "image_size: 100000"),
        ("dataset.image_size", "over the limit of 1,024"),
        2,
    ),
    sweep(
        "a model no device holds",
        VALID.replace("arch: cifar, block: basic, shortcut: A", "arch: imagenet, width: 64").replace(
            "[8, 14]", "[152]"
        ),
        ("model.width", "GiB", "over the limit of 1,024 GiB"),
        3,
    ),
    sweep(
        "a million classes",
        VALID.replace("name: digits", "name: synthetic, synthetic_classes: 1000000"),
        ("dataset.synthetic_classes", "over the limit of 100,000"),
        2,
    ),
    sweep(
        "10^24 epochs",
        VALID.replace("epochs: 2", "epochs: 1000000000000000000000000"),
        ("train.epochs", "over the limit of 100,000"),
        4,
    ),
    sweep(
        "cuda trials without a GPU",
        VALID.replace("batch_size: 64", "batch_size: 64, device: cuda"),
        ("train.device", "resources.gpu"),
        4,
    ),
    sweep("more GPUs than the machine has", VALID + "resources: {gpu: 1}\n", ("resources.gpu", "this machine has 0")),
    sweep(
        "more CPUs than the machine has",
        VALID + "resources: {cpu: 100000}\n",
        ("resources.cpu", "this machine has"),
        varies=((r"this machine has \d+$", "this machine has <its CPU count>"),),
    ),
    sweep("1.5 GPUs per trial", VALID + "resources: {gpu: 1.5}\n", ("resources.gpu", "one device"), 9),
    sweep(
        "2 GPUs per trial in resources.gpu (not resources.workers)",
        VALID + "resources: {gpu: 2}\n",
        ("resources.gpu", "one device", "resources.workers"),
        9,
    ),
    sweep("repeated seeds", VALID + "  seeds: [0, 0]\n", ("search.seeds", "distinct"), 9),
    sweep("every point excluded", VALID + "  exclude:\n    - {model.block: basic}\n", ("search", "no trials left")),
    sweep("more trials than the budget", VALID + "budget: {max_trials: 1}\n", ("budget.max_trials", "2 trials"), 9),
    sweep(
        "ASHA's max_t below the epochs",
        VALID + "scheduler: {name: asha, max_t: 1}\n",
        ("scheduler.max_t", "below the 2 epochs"),
        9,
    ),
    sweep(
        "bottleneck blocks at a basic depth",
        VALID.replace("block: basic", "block: bottleneck").replace("[8, 14]", "[14]"),
        ("search.space.model.depth", "9n+2"),
        8,
    ),
    sweep(
        "an ImageNet bottleneck net of 20 layers",
        VALID.replace("arch: cifar, block: basic", "arch: imagenet, block: bottleneck").replace("[8, 14]", "[20]"),
        ("search.space.model.depth", "50, 101, 152"),
        8,
    ),
    sweep("a negative learning rate", VALID.replace("epochs: 2", "epochs: 2, lr: -0.1"), ("train.lr", "-0.1"), 4),
    sweep(
        "an unknown precision",
        VALID.replace("batch_size: 64", "batch_size: 64, precision: fp8"),
        ("train.precision", "bf16"),
        4,
    ),
    sweep(
        "an unknown value in a grid",
        VALID + "    train.schedule: [multistep, linear]\n",
        ("search.space.train.schedule", "'linear'", "cosine"),
        9,
    ),
    sweep(
        "uniform over an integer",
        RANDOM + "    train.epochs: {uniform: [1, 3]}\n",
        ("search.space.train.epochs.uniform", "not a real number"),
        9,
    ),
    sweep(
        "uniform over a yes/no",
        RANDOM + "    model.residual: {uniform: [0, 1]}\n",
        ("model.residual", "not a real number"),
        9,
    ),
    sweep(
        "a choice of a distribution",
        RANDOM + "    train.lr: {choice: {uniform: [0.01, 0.1]}}\n",
        ("train.lr", "choice takes a list"),
        9,
    ),
    sweep(
        "fixed and searched at once",
        VALID.replace("block: basic, ", "block: basic, depth: 8, "),
        ("model.depth", "both fixed"),
        8,
    ),
    sweep(
        "an unknown search algorithm",
        VALID.replace("algorithm: grid", "algorithm: bayes"),
        ("search.algorithm", "bayes", "optuna"),
        6,
    ),
    sweep("an unknown scheduler", VALID + "scheduler: {name: hyperband}\n", ("scheduler.name", "hyperband", "asha"), 9),
    sweep("an unknown metric", VALID + "metric: {name: accuracy}\n", ("metric.name", "accuracy", "val_error"), 9),
    sweep("maximising an error", VALID + "metric: {mode: max}\n", ("metric.mode", "'max'"), 9),
    sweep("zero CPUs per trial", VALID + "resources: {cpu: 0}\n", ("resources.cpu", "greater than 0"), 9),
    sweep("num_samples on a grid", VALID + "  num_samples: 3\n", ("search.num_samples", "seeds"), 9),
    sweep("seeds with Optuna", VALID.replace("grid", "optuna") + "  seeds: [0, 1]\n", ("search.seeds", "Optuna"), 9),
    sweep(
        "an exclude rule on an unknown key",
        VALID + "  exclude:\n    - {model.dpth: 8}\n",
        ("search.exclude.0.model.dpth", "did you mean"),
        10,
    ),
    sweep(
        "an exclude rule of the wrong type",
        VALID + "  exclude:\n    - {model.depth: deep}\n",
        ("search.exclude.0.model.depth", "'deep'"),
        10,
    ),
    sweep(
        "classes that disagree with the data",
        VALID.replace("shortcut: A}", "shortcut: A, num_classes: 5}"),
        ("model.num_classes", "10 classes"),
        3,
    ),
    sweep(
        "model.n and a fixed depth",
        VALID.replace("block: basic,", "block: basic, depth: 56,").replace("model.depth:", "model.n:"),
        ("search.space.model.n", "sets the depth"),
        8,
    ),
    sweep(
        "zero_init_last on plain nets",
        VALID.replace("shortcut: A", "shortcut: A, residual: false, zero_init_last: true"),
        ("model.zero_init_last", "residual: true"),
        3,
    ),
    sweep(
        "zero_init_last crossed with plain nets",
        VALID.replace("shortcut: A", "shortcut: A, zero_init_last: true") + "    model.residual: [true, false]\n",
        ("model.zero_init_last", "(in the trial model.depth=8, model.residual=False)"),
        3,
    ),
    Case("no such sweep file", ("run", "missing.yaml"), ("no sweep file at missing.yaml",)),
    Case("a folder for the sweep file", ("plan", "."), ("(it is a folder)",)),
    Case(
        "a binary file for the sweep file",
        ("plan", "sweep.yaml"),
        ("cannot read sweep.yaml",),
        files={"sweep.yaml": b"\xff\xfe\x00\x01"},
    ),
    # --- flags -----------------------------------------------------------------------------------------
    with_valid(
        "a misspelt key in --set",
        ("run", "sweep.yaml", "--set", "train.epoch=1"),
        ("--set train.epoch", "did you mean epochs"),
    ),
    with_valid(
        "an unknown flag after run",
        ("run", "sweep.yaml", "--bogus"),
        ("unrecognized arguments: --bogus", "resnet-sweep run --help"),
    ),
    Case(
        "run without a sweep file",
        ("run",),
        ("the following arguments are required: SWEEP.yaml", "resnet-sweep run --help"),
    ),
    with_valid(
        "a word for --gpu-tflops",
        ("plan", "sweep.yaml", "--gpu-tflops", "fast"),
        ("--gpu-tflops", "invalid float value"),
    ),
    Case("an unknown --model", ("describe", "--model", "resnet9000"), ("--model", "invalid choice", "resnet1202")),
    Case("a depth that is not 6n+2 for train", ("train", "--dataset", "digits", "--depth", "21"), ("--depth", "6n+2")),
    Case("train without --dataset", ("train", "--depth", "20"), ("--dataset", "required")),
    Case("describe at 100,000 px", ("describe", "--input-size", "100000"), ("--input-size", "between 8 and 1024")),
    Case(
        "describe a model no device holds",
        ("describe", "--model", "resnet152", "--width", "64"),
        ("--width", "over the limit of 1,024 GiB"),
    ),
    Case(
        "train a width of 100", ("train", "--dataset", "digits", "--width", "100"), ("--width", "over the limit of 64")
    ),
    Case(
        "--json-out in an unwritable folder",
        ("train", "--dataset", "digits", "--json-out", f"{UNWRITABLE}/out.json"),
        ("--json-out", "not writable"),
    ),
    Case(
        "--checkpoint-dir that is a file",
        ("train", "--dataset", "digits", "--checkpoint-dir", "notes.txt"),
        ("--checkpoint-dir", "not a folder"),
        files={"notes.txt": "x"},
    ),
    Case("ui on port 70000", ("ui", "--port", "70000"), ("--port", "70000", "0 to 65535")),
    Case("ui for a store that is not there", ("ui",), ("--tracking-uri", "no MLflow store")),
    Case(
        "ui for an MLflow server",
        ("ui", "--tracking-uri", "http://127.0.0.1:5000"),
        ("--tracking-uri", "serves its own UI"),
    ),
    Case(
        "ui for an unknown kind of store",
        ("ui", "--tracking-uri", "foo://x"),
        ("--tracking-uri", "not an MLflow tracking URI"),
    ),
    # --- tracking URIs ---------------------------------------------------------------------------------
    with_valid(
        "a misspelt scheme (htp://)",
        ("run", "sweep.yaml", "--tracking-uri", "htp://x"),
        ("--tracking-uri", "'htp://x'"),
    ),
    with_valid(
        "an unknown scheme (foo://)",
        ("run", "sweep.yaml", "--tracking-uri", "foo://x"),
        ("--tracking-uri", "scheme foo"),
    ),
    with_valid(
        "SQLite in a folder that does not exist",
        ("run", "sweep.yaml", "--tracking-uri", "sqlite:////nonexistent/dir/mlflow.db"),
        ("--tracking-uri", "does not exist"),
    ),
    with_valid(
        "SQLite in an unwritable folder",
        ("run", "sweep.yaml", "--tracking-uri", "sqlite:////sys/mlflow.db"),
        ("--tracking-uri", "/sys"),
    ),
    with_valid(
        "an MLflow server that is down",
        ("run", "sweep.yaml", "--tracking-uri", "http://127.0.0.1:9"),
        ("--tracking-uri", "no MLflow server answers"),
    ),
    sweep(
        "a server that is down, in the file",
        VALID + "tracking: {tracking_uri: 'http://127.0.0.1:9'}\n",
        ("tracking.tracking_uri", "no MLflow server answers"),
    ),
    # --- Ray addresses ---------------------------------------------------------------------------------
    with_valid(
        "an address without a port", ("run", "sweep.yaml", "--address", "head-node"), ("--address", "host:port")
    ),
    with_valid(
        "a port that is not a number", ("run", "sweep.yaml", "--address", "head:http"), ("--address", "host:port")
    ),
    with_valid(
        "no cluster at the address",
        ("run", "sweep.yaml", "--address", "127.0.0.1:9"),
        ("no Ray cluster answers at 127.0.0.1:9",),
        1,
    ),
    with_valid(
        "a ray:// address with the local SQLite store",
        ("run", "sweep.yaml", "--address", "ray://127.0.0.1:9"),
        ("tracking.tracking_uri", "ray:// address"),
    ),
    # --- storage paths ---------------------------------------------------------------------------------
    with_valid(
        "an unwritable storage path",
        ("run", "sweep.yaml", "--storage-path", f"{UNWRITABLE}/results"),
        ("storage_path", "not writable"),
    ),
    with_valid(
        "a file as the storage path",
        ("run", "sweep.yaml", "--storage-path", "notes.txt"),
        ("storage_path", "not a folder"),
        files={"notes.txt": "x"},
    ),
    with_valid(
        "s3:// without a bucket",
        ("run", "sweep.yaml", "--storage-path", "s3://"),
        ("storage_path", "s3:// names no bucket"),
    ),
    with_valid(
        "S3 keys in the storage URI",
        ("run", "sweep.yaml", "--storage-path", "s3://KEY:SECRET@bucket/x"),
        ("storage_path", "credentials"),
    ),
    with_valid(
        "an endpoint in the storage URI",
        ("run", "sweep.yaml", "--storage-path", "s3://bucket/x?endpoint_override=h"),
        ("storage_path", "AWS_ENDPOINT_URL"),
    ),
    sweep(
        "an unwritable storage_path in the file",
        VALID + f"storage_path: {UNWRITABLE}/results\n",
        ("storage_path", "not writable"),
    ),
    # --- data folders ----------------------------------------------------------------------------------
    Case(
        "CIFAR offline, cache_dir a file",
        ("run", "sweep.yaml"),
        ("cifar10 is not in", "notes.txt"),
        1,
        files={
            "sweep.yaml": VALID.replace("name: digits, image_size: 16", "name: cifar10, cache_dir: notes.txt"),
            "notes.txt": "x",
        },
    ),
    Case(
        "train on CIFAR offline, --cache-dir a file",
        ("train", "--dataset", "cifar10", "--cache-dir", "notes.txt"),
        ("cifar10 is not in", "notes.txt"),
        1,
        files={"notes.txt": "x"},
    ),
    Case(
        "an image folder that is not there",
        ("run", "sweep.yaml"),
        ("images: no such folder", "dataset.root"),
        1,
        files={"sweep.yaml": FOLDER_SWEEP},
    ),
    Case(
        "plan with an image folder that is not there",
        ("plan", "sweep.yaml"),
        ("images: no such folder",),
        1,
        files={"sweep.yaml": FOLDER_SWEEP},
    ),
    Case(
        "an image folder without val/",
        ("run", "sweep.yaml"),
        ("images/val: no such folder",),
        1,
        files={"sweep.yaml": FOLDER_SWEEP, "images/train/a/0.jpg": b"x"},
    ),
    Case(
        "train on an image folder with an empty class",
        ("train", "--dataset", "imagefolder", "--root", "images", "--epochs", "1"),
        ("images/train/b: no images",),
        1,
        files={"images/train/a/0.jpg": b"x", "images/train/b/notes.txt": "x", "images/val/a/0.jpg": b"x"},
    ),
    # --- checkpoints and resume targets -----------------------------------------------------------------
    Case(
        "--resume with no such file",
        ("train", "--dataset", "digits", "--resume", "missing.pt"),
        ("--resume", "no checkpoint file"),
    ),
    Case(
        "--resume with random bytes",
        ("train", "--dataset", "digits", "--resume", "state.pt"),
        ("--resume", "is not a checkpoint"),
        files={"state.pt": random.Random(0).randbytes(256)},
    ),
    Case(
        "--resume with a text file",
        ("train", "--dataset", "digits", "--resume", "notes.txt"),
        ("--resume", "is not a checkpoint"),
        files={"notes.txt": "not a checkpoint\n"},
    ),
    Case("resume a sweep that is not there", ("resume", "no-such-sweep"), ("no sweep named 'no-such-sweep'",)),
    Case("sync a sweep that is not there", ("sync", "no-such-sweep"), ("no sweep named 'no-such-sweep'",)),
    Case(
        "resume a folder that holds no sweep",
        ("resume", "notes"),
        ("no sweep named 'notes'",),
        files={"notes/readme.txt": "x"},
    ),
    Case(
        "resume a sweep whose file is broken",
        ("resume", "ray_results/t"),
        ("YAML syntax error",),
        files={"ray_results/t/sweep.yaml": "name: t\nmodel: {arch: cifar\n"},
    ),
]


def _case_id(case: Case) -> str:
    return case.name.replace(" ", "-")


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")}


def run_case(case: Case, folder: Path) -> tuple[int, str, dict[str, int], dict[str, int]]:
    """Run ``case`` in ``folder`` (its working directory) through the CLI's main, in this
    process: the exit code, what it printed on stderr, and the folder before and after."""
    from orchestrator.cli import main

    for name, content in case.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    before = snapshot(folder)
    cwd, err = os.getcwd(), io.StringIO()
    os.chdir(folder)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(list(case.argv))
            except SystemExit as exit_:  # argparse exits by itself
                code = exit_.code
    finally:
        os.chdir(cwd)
    return code, err.getvalue(), before, snapshot(folder)


@pytest.mark.unit
@pytest.mark.parametrize("case", [pytest.param(c, id=_case_id(c)) for c in CASES])
def test_bad_input_is_one_line_naming_the_field(case, tmp_path, capfd):
    code, err, before, after = run_case(case, tmp_path)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(w in lines[0] for w in case.words), lines[0]
    assert code == case.code, (code, lines[0])
    assert after == before  # nothing written
    assert capfd.readouterr().err == ""  # nothing reached stderr around the one line either
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()
    # the page shows this very line (the table's whole text: with the test of its rows below)
    assert row(case, code, err, tmp_path) == doc_rows().get(case.name), (
        f"docs/reliability.md's bad-input row {case.name!r} is stale: {REGENERATE}"
    )


@pytest.mark.unit
def test_catalogue_covers_every_kind_of_input():
    assert len(CASES) >= 45 and len({c.name for c in CASES}) == len(CASES)
    commands = {c.argv[0] for c in CASES}
    assert {"run", "plan", "train", "describe", "resume", "ui"} <= commands
    flags = {a for c in CASES for a in c.argv if a.startswith("--")}
    assert {"--tracking-uri", "--address", "--storage-path", "--resume", "--cache-dir"} <= flags


def test_alias_bomb_is_refused_quickly_in_bounded_memory(tmp_path):
    """Before: the line map walked 387M aliased values (gigabytes, then a MemoryError traceback)."""
    from orchestrator.sweepfile.spec import SpecError, parse_spec

    start = time.perf_counter()
    with pytest.raises(SpecError, match="expands to more than"):
        parse_spec(BOMB)
    assert time.perf_counter() - start < 2
    # The CLI under a 4 GiB address-space limit (importing torch takes about 3).
    (tmp_path / "bomb.yaml").write_text(BOMB)
    limit = 4 * 2**30
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "plan", "bomb.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "expands to more than" in out.stderr, out.stderr


@pytest.mark.unit
def test_anchors_aliases_and_merge_keys_still_work():
    from orchestrator.sweepfile.plan import make_plan
    from orchestrator.sweepfile.spec import parse_spec

    text = (
        VALID.replace("[8, 14]", "&depths [8, 14, 20]")
        + """\
    model.residual: [true, false]
  exclude:
    - &plain {model.residual: false, model.depth: 14}
    - {<<: *plain, model.depth: 8}
    - *plain
"""
    )
    plan = make_plan(parse_spec(text), with_models=False)
    assert sorted((t.config["model.depth"], t.config["model.residual"]) for t in plan.trials) == [
        (8, True),
        (14, True),
        (20, False),
        (20, True),
    ]


def test_ui_on_the_network_warns_that_anyone_can_reach_it(tmp_path):
    """Not loopback: a one-line warning before the (unauthenticated) UI starts."""
    from tests.ray_nodes import free_port

    (tmp_path / "mlflow.db").touch()  # a store to browse (MLflow fills it in when the UI starts)
    exe = Path(sys.executable).parent / "resnet-sweep"
    proc = subprocess.Popen(
        [str(exe), "ui", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        first = proc.stderr.readline()
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=30)
    assert first.startswith("warning: --host 0.0.0.0") and "without authentication" in first, first


HEADER = "| input | command | exit | what the user sees |\n|---|---|---|---|"
BEGIN = "<!-- bad-input table: written by `python -m tests.test_bad_inputs --write`; do not edit -->"
END = "<!-- end of the bad-input table -->"
REGENERATE = "regenerate it with `python -m tests.test_bad_inputs --write` (from the repository root)"


def row(case: Case, code: int, err: str, folder: Path) -> str:
    """The case's row of the table: its command, exit code and line, with the working folder
    shown as `.` and the parts that depend on the machine (``case.varies``) replaced."""
    command = " ".join(["resnet-sweep", *(a if len(a) < 60 else a[:57] + "…" for a in case.argv)])
    line = err.strip()
    for path in dict.fromkeys([str(folder), os.path.realpath(folder)]):
        line = line.replace(path, ".")
    for pattern, replacement in case.varies:
        line = re.sub(pattern, replacement, line)
    cells = [case.name, f"`{command}`", str(code), f"`{line}`"]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def markdown() -> str:
    """The table of docs/reliability.md: each case run as in the test, in a fresh folder."""
    rows = [HEADER]
    for case in CASES:
        with tempfile.TemporaryDirectory() as folder:
            code, err, _, _ = run_case(case, Path(folder))
            rows.append(row(case, code, err, Path(folder)))
    return "\n".join(rows) + "\n"


def doc_table(doc: str | None = None) -> str:
    """The table as docs/reliability.md has it, between its two markers."""
    doc = DOC.read_text() if doc is None else doc
    assert BEGIN in doc and END in doc, f"docs/reliability.md lost its bad-input table's markers: {REGENERATE}"
    return doc[doc.index(BEGIN) + len(BEGIN) : doc.index(END)].strip("\n") + "\n"


@functools.cache
def doc_rows() -> dict[str, str]:
    """The page's rows by their first cell (the case's name)."""
    rows = doc_table().splitlines()[2:]
    return {r.split(" | ")[0].removeprefix("| "): r for r in rows}


def write() -> None:
    doc = DOC.read_text()
    doc_table(doc)
    before, after = doc[: doc.index(BEGIN) + len(BEGIN)], doc[doc.index(END) :]
    DOC.write_text(f"{before}\n\n{markdown()}\n{after}")


@pytest.mark.unit
def test_the_page_has_one_row_per_case_in_order():
    """With each case's test comparing its row word for word, the page's table is the output of
    ``--markdown``."""
    lines = doc_table().splitlines()
    assert "\n".join(lines[:2]) == HEADER, REGENERATE
    assert list(doc_rows()) == [c.name for c in CASES] and len(lines) == len(CASES) + 2, (
        f"docs/reliability.md's bad-input table has other rows than the cases: {REGENERATE}"
    )


if __name__ == "__main__" and sys.argv[1:] == ["--markdown"]:
    sys.stdout.write(markdown())
elif __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    write()
    print(f"wrote the bad-input table of {DOC.relative_to(REPO)}")
elif __name__ == "__main__":
    sys.exit("usage: python -m tests.test_bad_inputs --markdown | --write")
