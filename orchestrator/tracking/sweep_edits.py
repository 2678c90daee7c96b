"""What growing a sweep (`run --extend`) changes in MLflow before anything trains: the parent
run's sweep file, plan and overrides become the new file's, and the trials the new file no longer
has are marked retired (their runs stay as they are; `status` and `report` leave them out and
say how many). A trial the file brings back loses the mark."""

from __future__ import annotations

from orchestrator.sweepfile.growth import identity_of_params
from orchestrator.tracking.mlflow_store import open_client
from orchestrator.tracking.records import MAX_RUNS
from orchestrator.vocabulary import (
    PARENT_TAG,
    TAG_OVERRIDES,
    TAG_PREDICTED_WALL,
    TAG_RETIRED,
    TAG_ROLE,
    TAG_SWEEP,
    TAG_WALL,
)

__all__ = ["record_growth"]


def record_growth(
    tracking_uri: str, experiment: str, sweep_key: str, *, tags: dict, artifacts: dict, removed: set[str]
) -> int:
    """Updates the parent run of the sweep ``sweep_key`` (the overrides tag is the new file's, or
    none) and marks the runs whose configuration
    (growth.trial_identity) is in ``removed``; returns how many are marked. No parent run (the
    sweep never reached MLflow): nothing to change, `sync` makes it later."""
    client = open_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return 0
    ids = [found.experiment_id]
    parents = client.search_runs(ids, f"tags.`{TAG_SWEEP}` = '{sweep_key}' and tags.`{TAG_ROLE}` = 'sweep'")
    if not parents:
        return 0
    parent = parents[0].info.run_id
    for key, value in tags.items():
        client.set_tag(parent, key, value)
    if not tags.get(TAG_OVERRIDES) and TAG_OVERRIDES in parents[0].data.tags:  # run without `--set` now
        client.delete_tag(parent, TAG_OVERRIDES)
    for tag in (TAG_PREDICTED_WALL, TAG_WALL):  # the first `run`'s prediction and time: not the grown sweep's
        if tag in parents[0].data.tags:
            client.delete_tag(parent, tag)
    for name, text in artifacts.items():
        client.log_text(parent, text, name)
    marked = 0
    for run in client.search_runs(ids, f"tags.`{PARENT_TAG}` = '{parent}'", max_results=MAX_RUNS):
        gone = identity_of_params(run.data.params) in removed
        if gone:
            client.set_tag(run.info.run_id, TAG_RETIRED, "true")
            marked += 1
        elif run.data.tags.get(TAG_RETIRED):
            client.delete_tag(run.info.run_id, TAG_RETIRED)
    return marked
