"""Secrets never leave the machine (issue 31): a tracking URI with a password works, and the password
is masked wherever the URI is logged or printed; the environment's secrets are never recorded."""

import base64
import http.server
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from secrets import token_hex

import pytest
from mlflow import MlflowClient

from pipeline import track
from pipeline.check.compose import compose_point
from pipeline.errors import ConfigError
from pipeline.track.store import _answers
from pipeline.ui import links

from helpers import free_port, ok, run_pipeline

# Made afresh each session, never written in this file: a run records the uncommitted diff of the
# tree (git_diff.patch), which may hold this file.
PASSWORD = f"pw{token_hex(8)}"
SECRETS = {name: token_hex(12) for name in ("HF_TOKEN", "MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY")}


def with_password(uri: str) -> str:
    """http://127.0.0.1:PORT as http://alice:PASSWORD@127.0.0.1:PORT."""
    return uri.replace("://", f"://alice:{PASSWORD}@", 1)


def test_the_start_up_check_sends_the_password_and_never_prints_it(tmp_path, monkeypatch, mlflow_server):
    """Nothing listens: refused in one line with the password masked, also where the URI came from
    the environment (${oc.env:...}). The live server: passed, its credentials sent as basic auth."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("ZEROSWEEP_TEST_URI", with_password(nowhere))
    for given in (with_password(nowhere), "${oc.env:ZEROSWEEP_TEST_URI}"):
        cfg = compose_point([f"outputs_dir={tmp_path}", f"tracking.uri={given}"])
        with pytest.raises(ConfigError) as refused:
            track.prepare(cfg)
        said = str(refused.value)
        assert f"no MLflow server answers at {nowhere.replace('://', '://alice:***@')}" in said
        assert PASSWORD not in said and "0.0.0.0" not in said
    cfg = compose_point(
        [
            f"outputs_dir={tmp_path}",
            f"tracking.uri={with_password(mlflow_server.uri)}",
            "tracking.experiment=secrets-check",
        ]
    )
    experiment_id = track.prepare(cfg)
    assert MlflowClient(mlflow_server.uri).get_experiment(experiment_id).name == "secrets-check"
    shown = links(cfg.tracking.uri, cfg.tracking.uri, "secrets-check")  # `pipeline.ui --tracking-uri`
    assert shown[0].startswith(f"runs:    {mlflow_server.uri.replace('://', '://alice:***@')}/#/")
    assert PASSWORD not in "".join(shown)


def test_the_health_probe_sends_the_uris_user_and_password_as_basic_auth():
    """As MLflow's client does (requests): a server behind basic auth answers the probe."""
    heard: list[tuple[str, str | None]] = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            heard.append((self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with http.server.HTTPServer(("127.0.0.1", 0), Health) as server:
        threading.Thread(target=server.handle_request, daemon=True).start()
        _answers(with_password(f"http://127.0.0.1:{server.server_address[1]}/"))
    token = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert heard == [("/health", f"Basic {token}")]


def test_no_secret_reaches_the_store_the_artifacts_the_outputs_or_the_terminal(tmp_path, mlflow_server):
    """One training and one 2-point sweep, with a password in the tracking URI and secrets in the
    environment, against a real server: none of them in its store and artifacts, the outputs dir,
    the CLI's output, or the params, tags and run names read back."""
    uri = with_password(mlflow_server.uri)
    commands = [
        (tmp_path / "single", f"tracking.uri={uri}", "trainer.max_steps=2", "tracking.experiment=secrets"),
        (
            tmp_path / "sweep",
            "-m",
            "zero=stage1,stage2",
            f"tracking.uri={uri}",
            "trainer.max_steps=2",
            "tracking.experiment=secrets-sweep",
        ),
    ]
    with ThreadPoolExecutor(2) as pool:  # experiments of their own: neither waits on the other
        results = list(pool.map(lambda args: ok(run_pipeline(*args, env=SECRETS)), commands))
    secrets = [PASSWORD, *SECRETS.values()]
    leaks: list[str] = []

    def clean(where: str, data: bytes | str) -> None:
        """Collects every place a secret is found in, to name them all at once."""
        data = data.decode(errors="replace") if isinstance(data, bytes) else data
        leaks.extend(f"{s} in {where}" for s in secrets if s in data)

    for result in results:
        clean("the CLI's stdout", result.stdout)
        clean("the CLI's stderr", result.stderr)
    for path in sorted(p for p in mlflow_server.root.rglob("*") if p.is_file()):
        clean(str(path), path.read_bytes())
    # The run dirs' own Hydra files and the sweep's sweep.json keep the URI as typed: they stay on
    # this machine (the user's own command line, as their shell history has it), and the points and
    # `pipeline.report` reach the store through them. What was logged of them is checked above (the
    # server's artifacts).
    kept = [
        p for p in tmp_path.rglob("*") if ".hydra" in p.parts or p.name in ("multirun.yaml", "sweep.json")
    ]
    assert any(PASSWORD in p.read_text() for p in kept if p.is_file())
    for path in sorted(p for p in tmp_path.rglob("*") if p.is_file() and p not in kept):
        clean(str(path), path.read_bytes())

    client = MlflowClient(mlflow_server.uri)
    shown = mlflow_server.uri.replace("://", "://alice:***@")
    names = []
    for experiment, count in (("secrets", 1), ("secrets-sweep", 3)):
        found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        assert len(found) == count and all(r.info.status == "FINISHED" for r in found)
        for run in found:
            names.append(run.info.run_name)
            clean(f"run {run.info.run_name}", json.dumps([run.info.run_name, run.data.params, run.data.tags]))
            if "tracking.uri" in run.data.params:
                assert run.data.params["tracking.uri"] == shown
    assert not leaks, "\n".join(leaks)
    assert any(shown in name for name in names)  # the single run's and the sweep parent's names
    assert f"--tracking-uri {shown}" in results[0].stdout
