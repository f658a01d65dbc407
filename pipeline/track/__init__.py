"""MLflow, through one door: the store, a point's run over its life, params, metrics from rank
0, artifacts, and the runs read back for the sweep table, the report and the UI.

The job process owns a point's run: it opens it before any rank starts (so a failed start is
still recorded), rank 0 only appends metrics to it by id (`RunRef`), and the job closes it with
the summary (`TrackedRun`). No module outside this package talks to MLflow.
"""

from pipeline.track.runs import (
    MetricLogger,
    RunRef,
    TrackedRun,
    Untracked,
    flat_params,
    open_run,
    point_key,
    record_skipped,
)
from pipeline.track.store import (
    ATTEMPT,
    CARRIES_ON,
    OUTPUT_DIR,
    PARENT,
    POINT_KEY,
    ROLE,
    RUN_ID_FILE,
    SKIPPED,
    SLURM_JOB,
    SWEEP_DIR,
    SWEEP_KEY,
    RunRecord,
    RunState,
    Store,
    owner_tags,
    prepare,
    store_uri,
    tracking_uri,
)

__all__ = [
    "ATTEMPT",
    "CARRIES_ON",
    "OUTPUT_DIR",
    "PARENT",
    "POINT_KEY",
    "ROLE",
    "RUN_ID_FILE",
    "SKIPPED",
    "SLURM_JOB",
    "SWEEP_DIR",
    "SWEEP_KEY",
    "MetricLogger",
    "RunRecord",
    "RunRef",
    "RunState",
    "Store",
    "TrackedRun",
    "Untracked",
    "flat_params",
    "open_run",
    "owner_tags",
    "point_key",
    "prepare",
    "record_skipped",
    "store_uri",
    "tracking_uri",
]
