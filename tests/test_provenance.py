"""Every run says what made it (code, software, machine, command), any run reruns from its id or
dir to the same losses, and two runs are told apart by `python -m pipeline.diff`."""

import json
import subprocess
import sys
from pathlib import Path

from helpers import ROOT, UNSAMPLED, Sweep, mlflow_client, ok, run_cli, run_pipeline, runs


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m pipeline.<module> ARGS` from the project root, as a user runs it."""
    return run_cli([sys.executable, "-m", f"pipeline.{module}", *args], timeout=300)


def losses(outputs: Path, run_id: str) -> list[float]:
    return [m.value for m in mlflow_client(outputs).get_metric_history(run_id, "loss")]


def environment(outputs: Path, run_id: str, into: Path) -> dict:
    return json.loads(
        Path(mlflow_client(outputs).download_artifacts(run_id, "environment.json", str(into))).read_text()
    )


def test_a_run_records_what_made_it_and_reruns_to_the_same_losses(outputs: Path, tmp_path: Path):
    overrides = ("trainer.max_steps=4", UNSAMPLED, "zero=stage2")
    typed = " ".join((f"outputs_dir={outputs}", *overrides))
    ok(run_pipeline(outputs, *overrides))
    (original,) = runs(outputs)
    tags = original.data.tags
    # Named by what it trains; where it is kept stays in the tag of every override.
    assert original.info.run_name == "trainer.max_steps=4,zero=stage2"
    assert tags["zerosweep.overrides"] == typed
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head and tags["zerosweep.git_dirty"] in ("true", "false")
    assert tags["zerosweep.command"] == f"python -m pipeline {typed}"
    assert tags["mlflow.user"] and tags["zerosweep.torch"] and tags["zerosweep.deepspeed"]
    made = environment(outputs, original.info.run_id, tmp_path)
    assert made["overrides"] == typed.split()
    assert {"torch", "deepspeed", "transformers", "mlflow", "hydra-core"} <= set(made["packages"])
    assert made["machine"]["cores"] >= 1 and made["machine"]["host"] and made["code"]["commit"] == head
    assert "PATH" not in json.dumps(made)  # no dump of the environment
    run_dir = Path(tags["zerosweep.output_dir"])

    rerun = ok(cli("rerun", str(run_dir)))
    assert f"rerun of {original.info.run_id}: python -m pipeline outputs_dir={outputs}" in rerun.stderr
    (again,) = [r for r in runs(outputs) if r.info.run_id != original.info.run_id]
    assert again.data.tags["zerosweep.rerun_of"] == original.info.run_id
    assert len(losses(outputs, again.info.run_id)) == 4
    assert losses(outputs, again.info.run_id) == losses(outputs, original.info.run_id)  # exactly

    # The same run, recorded as made by other code and packages: refused in one line, nothing run.
    made["code"]["commit"], made["versions"]["torch"] = "0" * 40, "1.0.0"
    mlflow_client(outputs).log_text(original.info.run_id, json.dumps(made), "environment.json")
    refused = cli("rerun", original.info.run_id, "--outputs-dir", str(outputs))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "code: commit 0000000000" in refused.stderr and "torch 1.0.0 -> " in refused.stderr
    assert "--allow-changes" in refused.stderr and len(runs(outputs)) == 2
    allowed = ok(
        cli("rerun", original.info.run_id, "--outputs-dir", str(outputs), "--allow-changes", "dry_run=true")
    )
    assert "memory plan" in allowed.stdout.lower() or "deepspeed" in allowed.stdout.lower(), allowed.stdout[
        -2000:
    ]

    # A run from before provenance was recorded: reruns from its config, saying the code is unknown.
    (recorded,) = outputs.glob(f"mlartifacts/{original.info.run_id}/artifacts/environment.json")
    recorded.unlink()
    old = ok(cli("rerun", original.info.run_id, "--outputs-dir", str(outputs), "dry_run=true"))
    assert "recorded no provenance: the code it ran on is unknown" in old.stderr

    unknown = cli("rerun", "0123abcd", "--outputs-dir", str(outputs))
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == (
        f"error: run: 0123abcd is not a run dir (with mlflow_run_id) nor a sweep dir, and the store "
        f"sqlite:///{outputs / 'mlflow.db'} has no run 0123abcd. Fix: give a run's dir, a sweep's dir, "
        "or a run id (--outputs-dir or --tracking-uri: its store)"
    )


def test_a_sweep_records_its_provenance_once_and_reruns_as_a_new_sweep(sweep: Sweep, tmp_path: Path):
    parent_id = sweep.info["parent_run_id"]
    parent = sweep.client.get_run(parent_id)
    assert parent.data.tags["mlflow.source.git.commit"] and parent.data.tags["zerosweep.command"].startswith(
        "python -m pipeline -m "
    )
    assert environment(sweep.outputs_dir, parent_id, tmp_path)["overrides"]
    a, b = sorted(
        # the sweep's own points (the shared store also holds the report tests' runs)
        (r for r in runs(sweep.outputs_dir) if r.data.tags.get("mlflow.parentRunId") == parent_id),
        key=lambda r: r.data.params["zero"],
    )
    diff = ok(cli("diff", a.info.run_id, b.info.run_id, "--outputs-dir", str(sweep.outputs_dir))).stdout
    rows = {line.split()[0]: line.split()[1:] for line in diff.splitlines()[1:]}
    assert rows["config.zero.stage"] == ["1", "2"] and rows["config.zero"] == ["stage1", "stage2"]
    assert not any(key.startswith(("package.", "machine.", "code")) for key in rows), (
        diff
    )  # same code, same host
    again = ok(cli("rerun", str(sweep.sweep_dir), "dry_run=true"))
    assert "-m " in again.stderr and "sweep.resume=new" in again.stderr
    assert "dry sweep: 2 points" in again.stdout


def test_a_rerun_gives_a_key_whose_default_changed_since_its_original_value():
    """The original's params are its composed config: today's files composing a key otherwise (a
    default edited since) make that key one more override, in Hydra's grammar, and the composed
    config is the original's again."""
    from pipeline.check import compose
    from pipeline.rerun.__main__ import pinned
    from pipeline.track import flat_params

    overrides = ["zero=stage2"]
    then = flat_params(compose.compose_point(overrides), {"zero": "stage2"})
    assert pinned(overrides, then) == []
    then |= {
        "zero.reduce_bucket_size": "12345",
        "data.text_field": "the text",
        "tracking.uri": "http://a:***@h",
    }
    extra = pinned(overrides, then)
    assert sorted(extra) == ["data.text_field='the text'", "zero.reduce_bucket_size=12345"]  # no tracking.uri
    again = flat_params(compose.compose_point([*overrides, *extra]), {"zero": "stage2"})
    assert {k: again[k] for k in ("zero.reduce_bucket_size", "data.text_field")} == {
        "zero.reduce_bucket_size": "12345",
        "data.text_field": "the text",
    }
