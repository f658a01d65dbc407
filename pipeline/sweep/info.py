"""<sweep dir>/sweep.json: how a sweep's jobs, its end and its report find the sweep's parent run.

Written once when the multirun starts and read by its jobs, which may run on other machines that
see the sweep dir; the parent's id never travels through MLFLOW_RUN_ID (it would override the
nesting of the child runs).
"""

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser

FILE = "sweep.json"


@dataclass
class SweepInfo:
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    # The sweep's command-line overrides, and the keys among them that take several values.
    overrides: list[str]
    varying: list[str]

    def save(self, sweep_dir: Path) -> None:
        (sweep_dir / FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, sweep_dir: str | Path) -> "SweepInfo | None":
        path = Path(sweep_dir) / FILE
        return cls(**json.loads(path.read_text())) if path.exists() else None

    def point_name(self, task_overrides: list[str]) -> str:
        return point_name(task_overrides, self.varying)


# Keys that say where a run is kept, not what it trains: left out of a run's name (its
# zerosweep.overrides tag keeps every override as typed).
WHERE = ("outputs_dir", "tracking.", "hydra.", "sweep.")


def point_name(task_overrides: list[str], varying: list[str]) -> str:
    """A point's name: its values of the keys that vary (zero=stage2,offload=cpu); a single run's,
    what it trains. Each path by its last part (model.name_or_path=/data/models/m1 -> ...=m1): the
    UI's run list shows names, not tags."""
    key = [o.split("=", 1)[0].lstrip("+~") for o in task_overrides]
    varying = [v.lstrip("+~") for v in varying]  # +deepspeed_config=a,b varies deepspeed_config
    picked = [o for o, k in zip(task_overrides, key, strict=True) if k in varying]
    picked = picked or [o for o, k in zip(task_overrides, key, strict=True) if not k.startswith(WHERE)]
    # deepspeed_config=ds.json names its recipe, +deepspeed_config=ds (check/ds_recipe.py): shown as typed.
    picked = [o.removeprefix("+") if o.startswith("+deepspeed_config=") else o for o in picked]
    return ",".join(re.sub(r"[^,\[\]=\s]*/", "", o) for o in picked) or "default"


def varying_keys(overrides: list[str]) -> list[str]:
    """The keys a sweep gives several values (zero=stage1,stage2 -> zero)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.get_key_element() for o in parsed if o.is_sweep_override()]
