"""`python -m pipeline.report <sweep dir | parent run id> [--outputs-dir DIR | --tracking-uri URI]`:
a sweep's report (page.py) rebuilt from what its runs logged, and its table printed."""

import argparse
from pathlib import Path

from pipeline import track
from pipeline.report import table
from pipeline.report.page import REPORT, write
from pipeline.sweep.info import SweepInfo


def resolve(target: str, uri: str) -> tuple[track.Store, SweepInfo, str]:
    """A sweep dir (its sweep.json, whose store it reads) or a parent run id in the store at uri (its
    sweep_dir tag) -> (store, info, sweep dir)."""
    info = SweepInfo.load(target) if Path(target).is_dir() else None
    if info is not None:
        return track.Store(info.tracking_uri), info, target
    store = track.Store(uri)
    parent = store.get(target)
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
    store, info, sweep_dir = resolve(args.target, track.store_uri(args.outputs_dir, args.tracking_uri))
    print(REPORT.text(table.rows(store, info)))
    print(f"report: {write(store, info, sweep_dir)}")


if __name__ == "__main__":
    main()
