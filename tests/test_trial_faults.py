"""A trial that raises, runs out of memory or diverges ends with its own status and error
(table, progress lines, MLflow); the others finish; failure.max_failures retries apply. The faults
are raised inside the real trial processes (tests/faults/sitecustomize.py)."""

import re
from pathlib import Path

from mlflow import MlflowClient

from tests.support import child_runs, cli, migrated_store, table_rows

FAULTS = """\
name: faults
dataset: {name: digits, image_size: 8, train_limit: 256}
model: {arch: cifar, block: basic, shortcut: A}
train: {epochs: 3, batch_size: 64}
search:
  algorithm: grid
  space:
    model.depth: [8, 14]
    train.lr: [0.1, 1000.0]
  exclude:
    - {model.depth: 14, train.lr: 1000.0}
failure: {max_failures: 1}
resources: {cpu: 1}
"""


def test_exception_out_of_memory_and_divergence_each_end_with_their_own_status(workdir):
    faults = workdir / "faults"
    faults.mkdir()
    (faults / "8-0.1").write_text("raise-once")  # fails at its 2nd epoch once: retried, completes
    (faults / "14-0.1").write_text("oom")  # out of memory at its 2nd epoch, on the retry too
    (workdir / "faults.yaml").write_text(FAULTS)  # lr 1000 diverges by itself
    migrated_store(workdir)
    out = cli(
        "run",
        "faults.yaml",
        cwd=workdir,
        env={"PYTHONPATH": str(Path(__file__).parent / "faults"), "RESNET_SWEEP_TEST_FAULTS": str(faults)},
    )
    text = out.stdout + out.stderr
    assert out.returncode == 1 and "1 trial(s) failed" in out.stderr, text[-4000:]
    assert "Traceback" not in text  # one line per failure; the trace is in the trial's folder and MLflow
    assert re.search(
        r"retrying  resnet8-basic-A-lr0\.1-s0 .*failure 1 of 1 allowed: RuntimeError: injected fault.*"
        r"from its checkpoint at epoch 1",
        out.stdout,
    ), out.stdout
    assert re.search(
        r"retrying  resnet14-basic-A-lr0\.1-s0 .*: torch\.OutOfMemoryError: CUDA out of memory", out.stdout
    )
    assert re.search(
        r"out_of_memory resnet14-basic-A-lr0\.1-s0: torch\.OutOfMemoryError: CUDA out of memory.*"
        r"trace in .*/error\.txt",
        out.stdout,
    ), out.stdout
    rows = {row.split()[0]: row.split()[1] for row in table_rows(out.stdout)}
    assert rows == {
        "resnet8-basic-A-lr0.1-s0": "completed",
        "resnet14-basic-A-lr0.1-s0": "out_of_memory",
        "resnet8-basic-A-lr1000-s0": "diverged",
    }

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    parents, children = child_runs(client, "faults")
    runs = {c.info.run_name: c for c in children}
    assert parents[0].data.tags["status"] == "completed" and len(children) == 3
    oom = runs["resnet14-basic-A-lr0.1-s0"]
    assert (oom.info.status, oom.data.tags["status"]) == ("FAILED", "out_of_memory")
    assert oom.data.tags["error"].startswith("torch.OutOfMemoryError: CUDA out of memory")
    trace = Path(client.download_artifacts(oom.info.run_id, "error.txt", str(workdir))).read_text()
    assert 'File "' in trace and "\x1b[" not in trace and trace.rstrip().endswith("(injected by the test)")
    assert runs["resnet8-basic-A-lr1000-s0"].data.tags["status"] == "diverged"
    retried = runs["resnet8-basic-A-lr0.1-s0"]
    assert (retried.info.status, retried.data.tags["status"]) == ("FINISHED", "completed")
    assert "error" not in retried.data.tags
    assert [m.step for m in client.get_metric_history(retried.info.run_id, "val_error")] == [1, 2, 3]
