"""`python -m pipeline.report <sweep dir | parent run id> [--outputs-dir DIR | --tracking-uri URI]`:
a sweep's report (page.py) rebuilt from what its runs logged, and its table printed."""

import argparse
import sys
from pathlib import Path

from pipeline import track
from pipeline.errors import ConfigError
from pipeline.report import table
from pipeline.report.page import REPORT, write
from pipeline.sweep.info import SweepInfo
from pipeline.track.secrets import masked


def resolve(target: str, uri: str) -> tuple[track.Store, SweepInfo, str]:
    """A sweep dir (its sweep.json, whose store it reads) or a parent run id in the store at uri (its
    sweep_dir tag) -> (store, info, sweep dir). ConfigError for anything else: a store that is not
    there is not made."""
    info = SweepInfo.load(target) if Path(target).is_dir() else None
    if info is not None:
        return track.Store(info.tracking_uri), info, target
    store = track.Store.existing(uri)
    parent = store.find(target) if store else None
    if parent is None:
        where = (
            f"no MLflow store at {track.sqlite_path(uri)}"
            if store is None
            else f"the store {masked(uri)} has no such run"
        )
        raise ConfigError(
            "target",
            f"{target} is not a sweep dir (with sweep.json), and {where}",
            "give a sweep dir, or the parent run id its table's heading names (in --outputs-dir's store)",
        )
    sweep_dir = parent.tags.get(track.SWEEP_DIR) or "."
    return store, SweepInfo(target, parent.experiment_id, uri, overrides=[], varying=[]), sweep_dir


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.report", description="A sweep's report, rebuilt from MLflow."
    )
    ap.add_argument("target", help="sweep dir (holds sweep.json) or MLflow parent run id")
    ap.add_argument("--outputs-dir", default="outputs", help="where the default sqlite store lives")
    ap.add_argument("--tracking-uri", default=None, help="MLflow store, if not the default one")
    args = ap.parse_args(argv)
    try:
        store, info, sweep_dir = resolve(args.target, track.store_uri(args.outputs_dir, args.tracking_uri))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(REPORT.text(table.rows(store, info)))
    print(f"report: {write(store, info, sweep_dir)}")


if __name__ == "__main__":
    main()
