"""This job as Hydra started it: its output dir, its name, and its place in a sweep."""

from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from pipeline.sweep.info import SweepInfo, point_name
from pipeline.track import JOB_NUM, OUTPUT_DIR, OVERRIDES, PARENT, SWEEP_DIR
from pipeline.track.secrets import masked


@dataclass
class Point:
    out: Path
    name: str
    # The command line's overrides of this point, as Hydra parsed them.
    overrides: list[str]
    multirun: bool
    # Each group's chosen option (zero: stage2, ...), logged beside the values they set.
    choices: dict[str, str | None]
    # How the UI, the report and the sweep's end find this point's run.
    tags: dict[str, str]
    # The sweep this job is a point of (None: a single run, or a sweep that tracks nothing).
    sweep: SweepInfo | None

    @classmethod
    def current(cls, run_name: str | None) -> "Point":
        hc = HydraConfig.get()
        overrides = list(hc.overrides.task)
        out = Path(hc.runtime.output_dir)
        tags = {OVERRIDES: " ".join(overrides), OUTPUT_DIR: str(out)}
        multirun = hc.mode == RunMode.MULTIRUN
        sweep = None
        if multirun:
            tags[SWEEP_DIR] = str(Path(hc.sweep.dir).absolute())
            tags[JOB_NUM] = str(hc.job.num)
            sweep = SweepInfo.load(hc.sweep.dir)  # None when the sweep tracks nothing
        if sweep:
            tags[PARENT] = sweep.parent_run_id
        # Masked: it is printed, and may hold tracking.uri=http://alice:***@host.
        default_name = masked(sweep.point_name(overrides) if sweep else point_name(overrides, []))
        return cls(out, run_name or default_name, overrides, multirun, dict(hc.runtime.choices), tags, sweep)
