"""The MLflow UI for the project's store, one command away, opened where sweeps are compared.

    python -m pipeline.ui [--port N] [--outputs-dir DIR]

Serves on 127.0.0.1 until Ctrl-C and prints the latest sweep's runs table and comparison view.
With --tracking-uri http(s)://... the server is already there: only the links are printed.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

from pipeline import track
from pipeline.track.secrets import masked

EXPERIMENT = "zerosweep"
# The UI's GenAI / Model training switch is per browser; this query puts it on Model training
# (in 3.17 the experimentKind tag alone still lands #/experiments/ID on the GenAI overview).
TRAINING = "workflowType=machine_learning"


# mlflow server's environment: no job runners (with its default 4 workers they cost ~2 GiB).
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def server_command(uri: str, outputs_dir: str, port: int, served: Path | None = None) -> list[str]:
    """mlflow server with one worker, for the store at uri. Artifacts: where the sqlite store's runs
    keep them (outputs_dir/mlartifacts, clients write there); or, given served, stored by the
    server itself there and served through it (--artifacts-destination), as a team's server does."""
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        uri,
        "--workers",
        "1",
    ]
    if served is not None:
        cmd += ["--artifacts-destination", served.absolute().as_uri()]
    elif track.sqlite_path(uri):
        cmd += ["--default-artifact-root", (Path(outputs_dir).absolute() / "mlartifacts").as_uri()]
    return cmd


def links(uri: str, base: str, experiment: str = EXPERIMENT) -> list[str]:
    """URLs of the experiment's runs table and of the latest sweep's comparison view, printed: base's
    password masked (the browser asks for it)."""
    store = track.Store(uri)
    base = masked(base)
    eid = store.experiment_id(experiment)
    if eid is None:
        return [f"{base}/  (no '{experiment}' experiment yet: run a sweep first)"]
    store.mark_training(eid)
    out = [f"runs:    {base}/#/experiments/{eid}/runs?{TRAINING}"]
    parent = store.latest_sweep(eid)
    if parent:
        ids = json.dumps([r.run_id for r in store.children(eid, parent.run_id)], separators=(",", ":"))
        out.append(f"sweep:   {base}/#/experiments/{eid}/runs/{parent.run_id}?{TRAINING}  ({parent.name})")
        experiments = quote(json.dumps([eid]))
        out.append(f"compare: {base}/#/compare-runs?runs={quote(ids)}&experiments={experiments}&{TRAINING}")
    return out


def _port_free(port: int) -> None:
    """Another server on the port would answer /health in place of ours, and its links would be to
    another store: refused in one line instead."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as e:
            print(
                f"error: --port: {port} is taken ({e.strerror}). Fix: give a free port, --port N",
                file=sys.stderr,
            )
            sys.exit(2)


def wait_ready(base: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    """Block until the server answers /health, failing early if it exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow server not ready after {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.ui", description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--outputs-dir", default="outputs", help="where the default sqlite store lives")
    ap.add_argument("--tracking-uri", default=None, help="MLflow store, if not the default one")
    ap.add_argument("--experiment", default=EXPERIMENT)
    args = ap.parse_args(argv)
    uri = track.store_uri(args.outputs_dir, args.tracking_uri)
    if uri.startswith(("http://", "https://")):  # a tracking server already serves the UI
        print(*links(uri, uri.rstrip("/"), args.experiment), sep="\n")
        return
    base = f"http://127.0.0.1:{args.port}"
    _port_free(args.port)
    env = {**os.environ, **SERVER_ENV}
    # Ctrl-C and a kill stop the server. SIGINT explicitly too: a process started from a background
    # job (or under nohup) inherits it ignored, and Python then installs no handler of its own.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    proc = subprocess.Popen(server_command(uri, args.outputs_dir, args.port), env=env)
    try:
        wait_ready(base, proc)
        print(
            f"MLflow UI for {uri}",
            *links(uri, base, args.experiment),
            "Ctrl-C stops it.",
            sep="\n",
            flush=True,
        )
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
