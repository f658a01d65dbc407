"""A sweep's parent run over its life, one way for both kinds of sweep: Hydra's multirun
(callback.py) and search=fastest (search/driver.py). Opened, or reopened when the same command runs
again, with sweep.json in its dir for the points to find; closed with its table (a row per point) as
the parent's artifacts, its final state, the report, and the table printed."""

from dataclasses import dataclass
from pathlib import Path

from pipeline import track
from pipeline.report import page
from pipeline.report.table import Row, View
from pipeline.sweep.info import SweepInfo
from pipeline.track import RunState, Store, provenance

# The parent's param: the command line it sweeps.
OVERRIDES_PARAM = "sweep.overrides"


@dataclass
class Sweep:
    store: Store
    info: SweepInfo
    sweep_dir: Path  # its points' dirs, sweep.json and the report

    @classmethod
    def open(
        cls,
        store: Store,
        experiment_id: str,
        key: str,
        carried_on: str | None,
        sweep_dir: Path,
        name: str,
        command: str,
        overrides: list[str],
        varying: list[str],
        tags: dict[str, str] | None = None,
    ) -> "Sweep":
        """The parent run: the one it carries on in (an earlier run of the same command that did not
        finish), RUNNING again, or a new one (name, with command as its param, and what made it:
        track/provenance.py); either way tagged as
        this driver's sweep of key in sweep_dir (plus tags), its sweep.json written there."""
        tags = {
            track.ROLE: track.ROLE_SWEEP,
            track.SWEEP_KEY: key,
            track.SWEEP_DIR: str(sweep_dir),
            **(tags or {}),
            **track.owner_tags(),  # this driver owns it now
        }
        if carried_on:
            store.reopen(carried_on)
            store.tag(carried_on, tags)
            parent = carried_on
        else:
            parent = store.create_run(experiment_id, name, tags, {OVERRIDES_PARAM: command})
            provenance.write(store, parent, provenance.collect(overrides))
        info = SweepInfo(parent, experiment_id, store.uri, overrides, varying)
        info.save(sweep_dir)
        return cls(store, info, sweep_dir)

    @classmethod
    def load(cls, sweep_dir: Path) -> "Sweep | None":
        """The sweep whose sweep.json is in sweep_dir; None where there is none (it tracks nothing)."""
        info = SweepInfo.load(sweep_dir)
        return cls(Store(info.tracking_uri), info, sweep_dir) if info else None

    @property
    def parent(self) -> str:
        return self.info.parent_run_id

    def close(self, heading: str, rows: list[Row], view: View, artifact: str, state: RunState) -> Path:
        """The end: the table printed under its heading (first: whatever fails next, the user sees
        it), the table as the parent's artifacts <artifact>.txt and .json, the parent ended in state
        (before the report: a report that fails leaves no parent RUNNING), then the report.
        Returns the report's page."""
        text = view.text(rows)
        print(f"\n== {heading} ==")
        print(text, flush=True)
        self.store.log_text(self.parent, text + "\n", f"{artifact}.txt")
        self.store.log_dict(self.parent, view.records(rows), f"{artifact}.json")
        self.store.end(self.parent, state)
        return page.write(self.store, self.info, self.sweep_dir)
