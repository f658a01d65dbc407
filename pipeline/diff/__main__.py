"""`python -m pipeline.diff <run a> <run b> [--outputs-dir DIR | --tracking-uri URI]`

One table of what differs between two runs (ids, run dirs or sweep dirs): their config (the params
each logged), their code (commit and uncommitted changes), their packages and their machine, as
each recorded it (track/provenance.py). Two runs with different results are told apart here.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

from pipeline import track
from pipeline.errors import ConfigError
from pipeline.track import provenance

UNKNOWN = "(not recorded)"


def facts(store: track.Store, run_id: str, into: Path) -> dict[str, str]:
    """A run's comparable facts by name: config.<key>, code, package.<name>, machine.<what>."""
    run = store.get(run_id)
    found = {f"config.{k}": v for k, v in run.params.items()}
    made = provenance.load(store, run_id, into)
    if made is None:
        return found | {"code": UNKNOWN}
    found["code"] = made.code.describe()
    found["code.changes"] = made.code.diff_sha1[:10] if made.code.dirty else "-"
    found |= {f"package.{name}": version for name, version in made.packages.items()}
    found |= {f"version.{name}": version for name, version in made.versions.items()}
    machine = {k: v for k, v in made.machine.items() if k != "gpus"}
    machine["gpus"] = ", ".join(g["name"] for g in made.machine["gpus"]) or "none"
    found |= {f"machine.{k}": str(v) for k, v in machine.items()}
    found |= {f"slurm.{k}": v for k, v in made.slurm.items()}
    return found


def table(a: dict[str, str], b: dict[str, str]) -> list[tuple[str, str, str]]:
    """(what, a's, b's) for every fact that differs; a fact one run lacks shows as '-'."""
    keys = sorted(set(a) | set(b))
    return [(k, a.get(k, "-"), b.get(k, "-")) for k in keys if a.get(k) != b.get(k)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.diff", description=__doc__.split("\n")[2])
    ap.add_argument("a", help="MLflow run id, a run's dir, or a sweep's dir")
    ap.add_argument("b", help="the other run")
    ap.add_argument("--outputs-dir", default="outputs", help="where the default sqlite store lives")
    ap.add_argument("--tracking-uri", default=None, help="MLflow store, if not the default one")
    args = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = track.store_uri(args.outputs_dir, args.tracking_uri)
    try:
        found = [provenance.find_run(target, uri) for target in (args.a, args.b)]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    with tempfile.TemporaryDirectory() as into:
        (a, b) = (facts(store, run_id, Path(into) / run_id) for store, run_id in found)
    rows = table(a, b)
    if not rows:
        print(f"runs {found[0][1]} and {found[1][1]}: no difference in config, code, packages or machine")
        return
    head = ("", found[0][1], found[1][1])
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(3)]
    for row in [head, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":
    main()
