"""`python -m pipeline.rerun <run id | run dir | sweep dir> [key=value ...] [--allow-changes]`

Trains a new run with the original's composed config, plus the overrides given, tagged
zerosweep.rerun_of. The original's overrides are composed again; where today's config files give a
key another value than the original had (a default changed since), that key is given its original
value as one more override, so the composed config is the original's. A sweep's or a search's parent
reruns the whole sweep, as a new sweep. The code and the main packages are held against the
original's provenance (track/provenance.py): where they differ, one line says how and the rerun is
refused unless --allow-changes. A run from before provenance was recorded reruns from its config,
saying that the code it ran on is unknown.
"""

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path

from pipeline import track
from pipeline.errors import ConfigError
from pipeline.track import provenance
from pipeline.track.secrets import masked
from pipeline.track.store import RunRecord

# Keys that say where a run is kept or how its sweep goes on, not what it computes: not taken from
# the original (its recorded tracking.uri has its password masked; the store it was found in is used).
NOT_PINNED = ("tracking.uri", "sweep.")


def command(run: RunRecord, then: provenance.Provenance | None) -> list[str]:
    """The pipeline's arguments that train run again: its overrides, and its values of the keys
    whose defaults changed since (a single run), or its sweep's command (a sweep or search parent)."""
    if run.tags.get(track.ROLE) == track.ROLE_SWEEP:
        overrides = then.overrides if then else shlex.split(run.params.get("sweep.overrides", ""))
        search = any(o.startswith("search=") for o in overrides)
        return [*([] if search else ["-m"]), *overrides, *([] if search else ["sweep.resume=new"])]
    overrides = then.overrides if then else run.tags.get(track.OVERRIDES, "").split()
    overrides = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~").startswith(NOT_PINNED)]
    slurm = track.SLURM_JOB in run.tags
    return [*(["-m"] if slurm else []), *overrides, *pinned(overrides, run.params)]


def pinned(overrides: list[str], params: dict[str, str]) -> list[str]:
    """key=value for every leaf of the config that today's files compose differently from the run's
    params (its composed config as logged)."""
    from pipeline.check import compose

    now = track.flat_params(compose.compose_point(overrides), {})
    changed = []
    for key, value in params.items():
        if "." not in key or key.startswith(NOT_PINNED) or now.get(key, value) == value:
            continue
        changed.append(f"{key}={_hydra_value(value)}")
    return changed


def _hydra_value(value: str) -> str:
    """A param's text as Hydra's override grammar reads it back."""
    if value.startswith("[") or value.startswith("{"):
        return value
    if value == "None":
        return "null"
    plain = value.replace("_", "").replace("-", "").replace(".", "").replace("/", "").isalnum()
    return value if plain else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.rerun", description=__doc__.split("\n")[2])
    ap.add_argument("target", help="MLflow run id, a run's dir, or a sweep's dir")
    ap.add_argument("overrides", nargs="*", help="key=value changes to the original's config")
    ap.add_argument("--allow-changes", action="store_true", help="rerun on other code or packages")
    ap.add_argument("--outputs-dir", default="outputs", help="where the default sqlite store lives")
    ap.add_argument("--tracking-uri", default=None, help="MLflow store, if not the default one")
    args = ap.parse_intermixed_args(argv)  # overrides before or after the options
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = track.store_uri(args.outputs_dir, args.tracking_uri)
    try:
        store, run_id = provenance.find_run(args.target, uri)
        run = store.get(run_id)
        with tempfile.TemporaryDirectory() as into:
            then = provenance.load(store, run_id, Path(into))
        pipeline_args = command(run, then)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if then is None:
        print(f"note: run {run_id} recorded no provenance: the code it ran on is unknown", file=sys.stderr)
    else:
        found = provenance.changes(then, provenance.collect([]))
        if found and not args.allow_changes:
            print(
                f"error: rerun: run {run_id} ran on other code or packages ({'; '.join(found)}). Fix: "
                f"check out its code (its diff is the run's {provenance.DIFF_FILE}), or give --allow-changes",
                file=sys.stderr,
            )
            sys.exit(2)
    if store.uri != track.store_uri(run.params.get("outputs_dir", "outputs")):
        pipeline_args.append(f"tracking.uri={store.uri}")
    pipeline_args += args.overrides
    cmd = [sys.executable, "-m", "pipeline", *pipeline_args]
    typed = shlex.join(["python", "-m", "pipeline", *pipeline_args])
    print(f"rerun of {run_id}: {masked(typed)}", file=sys.stderr, flush=True)
    env = {**os.environ, provenance.RERUN_OF_ENV: run_id, provenance.COMMAND_ENV: typed}
    os.execve(sys.executable, cmd, env)


if __name__ == "__main__":
    main()
