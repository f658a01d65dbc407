"""Sweeps on a real Slurm (launchers/local-slurm.sh): jobs, ranks, requeue, cancel, in MLflow.

Drives the CLI as a user does (`python -m pipeline -m launcher=slurm ...`) and asserts on what
Slurm (sacct) and MLflow recorded.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
import submitit
from mlflow.entities import Run

from helpers import (
    ROOT,
    SAMPLED,
    MlflowServer,
    artifact_text,
    loss_steps,
    mlflow_client,
    pipeline_cmd,
    run_cli,
    run_pipeline,
    runs,
    search_trials,
    start_cli,
    wait_for,
)

pytestmark = pytest.mark.slow
SCRIPT = ROOT / "launchers" / "local-slurm.sh"


@pytest.fixture(scope="session", autouse=True)
def local_slurm() -> Iterator[None]:
    """A real two-node Slurm for the session; left running if it already was."""
    if shutil.which("slurmctld") is None or os.geteuid() != 0:
        pytest.skip("needs root and Debian's Slurm (scripts/system-deps.sh)")
    was_up = "slurmctld: running" in subprocess.run([SCRIPT, "status"], capture_output=True, text=True).stdout
    subprocess.run([SCRIPT, "start"], check=True, timeout=120)
    yield
    if not was_up:
        subprocess.run([SCRIPT, "stop"], check=True, timeout=120)


def start(outputs: Path, *overrides: str) -> subprocess.Popen:
    """`python -m pipeline -m launcher=slurm OVERRIDES outputs_dir=<outputs>` from the project root."""
    cmd = pipeline_cmd(outputs, "-m", "launcher=slurm", *overrides)
    return start_cli(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, rc: int = 0) -> str:
    out, _ = proc.communicate(timeout=420)
    assert proc.returncode == rc, f"exit {proc.returncode}, expected {rc}\n{out[-6000:]}"
    return out


def sweep_dir(outputs: Path) -> Path:
    (found,) = (outputs / "sweeps").iterdir()
    return found


def parent_and_children(store: Path | str, experiment: str = "zerosweep") -> tuple[Run, list[Run]]:
    all_runs = runs(store, experiment)
    (parent,) = [r for r in all_runs if r.data.tags.get("zerosweep.role") == "sweep"]
    children = [r for r in all_runs if r is not parent]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    return parent, children


def sacct(job_ids: list[str], field: str) -> dict[str, str]:
    """One field of each job, as Slurm's accounting has it."""
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", f"JobID,{field}", "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("|")[:2] for line in out.splitlines())


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """The jobs' states once each has ended: submitit reads a task's result as soon as the task
    writes it, and Slurm may still list its job RUNNING for a moment while the step winds down."""

    def ended() -> dict[str, str] | None:
        states = sacct(job_ids, "State")
        return None if {"PENDING", "RUNNING", "COMPLETING"} & set(states.values()) else states

    return wait_for(f"Slurm jobs {', '.join(job_ids)} to end", ended, timeout=60)


def test_a_job_across_two_nodes_trains_as_one_rank_does(tmp_path: Path) -> None:
    """trainer.nnodes=2 trainer.nproc_per_node=2: one job of 4 tasks on zs-node1 and zs-node2 is 4
    ranks meeting at the first node. ZeRO-3, its weights partitioned across the nodes, gives one
    rank's losses at the same global batch (16); one MLflow run per job, not per rank or node, with
    each node's system metrics; each rank's RNG state and ZeRO partition in the checkpoint; the
    saved model generates. (ZeRO-2 trains across two nodes in the node-failure tests below.)"""
    nodes, one = tmp_path / "nodes", tmp_path / "one"
    steps = ("trainer.max_steps=6", "trainer.save_steps=6")
    sweep = start(nodes, "trainer.nnodes=2", "trainer.nproc_per_node=2", "trainer.micro_batch_size=4",
                  "zero=stage3", SAMPLED, *steps)  # fmt: skip
    reference = run_pipeline(one, "trainer.micro_batch_size=16", *steps, "trainer.save_model=false")
    finish(sweep)
    assert reference.returncode == 0, reference.stderr[-3000:]
    parent, (run,) = parent_and_children(nodes)
    assert parent.info.status == "FINISHED"
    (job_id,) = parent.data.tags["zerosweep.slurm_job_ids"].split()
    assert sacct([job_id], "NodeList") == {job_id: "zs-node[1-2]"}
    logs = [sweep_dir(nodes) / ".submitit" / job_id / f"{job_id}_{task}_log.out" for task in range(4)]
    assert all(p.exists() for p in logs), logs
    (single,) = runs(one)
    expected = [m.value for m in mlflow_client(one).get_metric_history(single.info.run_id, "loss")]
    assert len(expected) == 6
    # Each node's system metrics, under its name.
    assert {f"system/zs-node{n}/cpu_utilization_percentage" for n in (1, 2)} <= set(run.data.metrics)
    losses = [m.value for m in mlflow_client(nodes).get_metric_history(run.info.run_id, "loss")]
    assert losses == pytest.approx(expected, abs=1e-4)
    out = Path(run.data.tags["zerosweep.output_dir"])
    names = {p.name for p in (out / "checkpoints" / "checkpoint-6").rglob("*.p*")}
    assert {f"rng_state_{r}.pth" for r in range(4)} <= names, names
    assert {f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(4)} <= names, names
    assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(4)} <= names, names
    generate = ["pipeline.generate", run.info.run_id, "Once", "--outputs-dir", str(nodes)]
    generated = run_cli([sys.executable, "-m", *generate], timeout=300)
    assert generated.returncode == 0 and generated.stdout.strip(), generated.stderr[-3000:]


def test_interrupted_job_resumes_into_the_same_run_through_an_mlflow_server(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    """A 2-point sweep that logs to a team's MLflow server (tracking.uri; artifacts stored by the
    server): params, metrics, system metrics, the plan's files and the trained model land there.
    The points are identical but for save_steps: point 0 is interrupted by Slurm's time-out signal
    after its first checkpoint, requeued, and resumes into its run on the server."""
    server = mlflow_server.uri
    proc = start(tmp_path, f"tracking.uri={server}", "tracking.experiment=requeue",
                 "trainer.max_steps=80", "trainer.save_steps=10,11", SAMPLED)  # fmt: skip
    # A checkpoint is complete once the Trainer wrote its trainer_state.json (the last file it saves):
    # interrupting before that would leave nothing to resume from.
    wait_for(
        "point 0's first complete checkpoint",
        lambda: list((tmp_path / "sweeps").glob("*/0/checkpoints/checkpoint-*/trainer_state.json")),
    )
    sweep = sweep_dir(tmp_path)
    job_id = wait_for("point 0's job", lambda: sorted(p.name for p in (sweep / ".submitit").glob("*_0")))[0]
    submitit.SlurmJob(sweep / ".submitit" / "%j", job_id)._interrupt(timeout=True)
    # Slurm may hold the requeued job for a while: release it as soon as it waits.
    wait_for("the requeue", lambda: _release_if_held(job_id), timeout=120)
    out = finish(proc)
    assert not (tmp_path / "mlflow.db").exists()  # nothing tracked beside the outputs
    parent, children = parent_and_children(server, "requeue")
    assert parent.info.status == "FINISHED" and len(children) == 2, out  # no duplicate run
    by_save = {r.data.params["trainer.save_steps"]: r for r in children}
    interrupted, plain = by_save["10"], by_save["11"]
    assert interrupted.data.tags["zerosweep.slurm_job_id"] == job_id
    assert sacct_restarts(job_id) >= 1 and interrupted.data.tags["zerosweep.requeued_after"]
    assert loss_steps(server, interrupted.info.run_id) == list(range(1, 81))  # contiguous, none twice
    # It resumed from a checkpoint (not from step 0), and "steps" counts the run's steps, not the attempt's.
    resumed = interrupted.data.metrics["resumed_from_step"]
    assert plain.data.metrics["resumed_from_step"] == 0 and resumed > 0 and resumed % 10 == 0
    assert plain.data.metrics["steps"] == interrupted.data.metrics["steps"] == 80
    assert interrupted.data.metrics["final_loss"] == pytest.approx(plain.data.metrics["final_loss"], abs=1e-4)
    client = mlflow_client(server)
    for run in children:
        assert "system/cpu_utilization_percentage" in run.data.metrics
        assert json.loads(
            artifact_text(server, run.info.run_id, "deepspeed.json", tmp_path / run.info.run_id)
        )
        assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} >= {"model/config.json"}
    # Stored by the server, under its --artifacts-destination: the jobs wrote no file of their own there.
    # (The server is the session's: this experiment's folder holds this sweep's runs only.)
    served = mlflow_server.root / "served-artifacts" / parent.info.experiment_id
    assert len(list(served.rglob("deepspeed.json"))) == 2 and list(served.rglob("model/config.json"))


def _release_if_held(job_id: str) -> bool:
    """True once the job has been requeued (pending or running again after it). Slurm holds a
    requeued job back for its credentials' lifetime (cred_expire: 5 s on local-slurm.sh's cluster,
    2 min by default); released, it starts 2 s on: a start within the second of the requeue is
    refused by the node ("Job credential revoked": the credential is no newer, in whole seconds,
    than the revocation of the killed attempt's), and the job ends FAILED."""
    state = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True
    ).stdout
    if state.startswith("PENDING"):
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now+2"], capture_output=True)
    return sacct_restarts(job_id) >= 1


def sacct_restarts(job_id: str, ended: str = "REQUEUED") -> int:
    """How many times Slurm requeued the job (sacct lists each earlier attempt, REQUEUED, or
    NODE_FAIL where its node went down)."""
    out = subprocess.run(
        ["sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", job_id],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(line.startswith(ended) for line in out.splitlines())


def test_a_cancelled_point_is_killed_a_crashed_one_failed_and_the_other_finishes(tmp_path: Path) -> None:
    """Three points: point 1's job is cancelled (scancel): its run is KILLED. Point 2's training
    process dies by SIGKILL (what the OOM killer or a segfault does): its run is FAILED with srun's
    word on how it died. Point 0 finishes; the table says each, the parent is FAILED."""
    # Each step written as it ends: both blows must come while their point trains (60 steps).
    proc = start(tmp_path, "zero=stage1,stage2,stage3", "trainer.max_steps=60", "tracking.buffer_s=0")
    sweep = wait_for("the sweep dir", lambda: list((tmp_path / "sweeps").glob("*")))[0]
    wait_for("point 1's MLflow run", lambda: (sweep / "1" / "mlflow_run_id").exists())
    cancelled = sorted(p.name for p in (sweep / ".submitit").glob("*_1"))[0]
    subprocess.run(["scancel", cancelled], check=True)
    wait_for("point 2's first logged step", lambda: _logged_steps(tmp_path, sweep / "2"))
    crashed = sorted(p.name for p in (sweep / ".submitit").glob("*_2"))[0]
    os.kill(_task_pid(crashed), 9)
    out = finish(proc, rc=1)
    parent, children = parent_and_children(tmp_path)
    assert parent.info.status == "FAILED"
    states = {r.data.params["zero"]: r for r in children}
    assert states["stage1"].info.status == "FINISHED"
    assert states["stage2"].info.status == "KILLED" and states["stage3"].info.status == "FAILED"
    assert states["stage2"].data.tags["zerosweep.slurm_job_id"] == cancelled
    assert "CANCELLED" in artifact_text(tmp_path, states["stage2"].info.run_id, "error.txt", tmp_path)
    error = artifact_text(tmp_path, states["stage3"].info.run_id, "error.txt", tmp_path)
    assert f"Slurm job {crashed} ended FAILED" in error and "died: Killed (SIGKILL)" in error
    table = artifact_text(tmp_path, parent.info.run_id, "sweep_table.txt", tmp_path)
    assert "KILLED" in table and "FAILED" in table and "KILLED" in out and "FAILED" in out
    ended = sacct_states([cancelled, crashed])
    assert ended[cancelled].startswith("CANCELLED") and ended[crashed] == "FAILED"


def _logged_steps(outputs: Path, point: Path) -> list[int]:
    run_file = point / "mlflow_run_id"
    return loss_steps(outputs, run_file.read_text().strip()) if run_file.exists() else []


def _task_pid(job_id: str) -> int:
    """The pid of the Slurm task that runs array job ARRAY_TASK (submitit's python, training in-process)."""
    (pid,) = _task_pids(
        dict(zip(("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"), job_id.split("_"), strict=True))
    )
    return pid


def _task_pids(having: dict[str, str]) -> list[int]:
    """The Slurm tasks (submitit's python, not srun nor the batch shell) with these environment values.
    A child a task forks (subprocess, before its exec) looks the same for a moment: it is left out."""
    found: dict[int, int] = {}  # pid -> parent pid
    for proc in (p for p in Path("/proc").iterdir() if p.name.isdigit()):
        try:
            env = dict(v.split("=", 1) for v in (proc / "environ").read_text().split("\0") if "=" in v)
            argv = (proc / "cmdline").read_text().split("\0")
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        is_task = "python" in Path(argv[0]).name and "submitit.core._submit" in argv
        if is_task and all(env.get(k) == v for k, v in having.items()):
            found[int(proc.name)] = parent
    tasks = [pid for pid, parent in found.items() if parent not in found]
    assert tasks, f"no Slurm task with {having}"
    return tasks


def test_a_node_lost_mid_job_fails_its_run_by_name_and_the_retry_carries_on(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    """The task of a 2-node job's second node dies by SIGKILL after the first checkpoint: no rank is
    left waiting, the run is FAILED with srun's word on which task of which node died of which
    signal, and sweep.retries=1 tries the point again as a new job, from that checkpoint. Its store
    is a team's MLflow server. (A rank a node: several a node are test_a_job_across_two_nodes'.)"""
    server = mlflow_server.uri
    # 40 steps: the job trains 30 more after its first checkpoint (~7 s alone) while the test acts.
    proc = start(tmp_path, "trainer.nnodes=2", "sweep.retries=1",
                 "trainer.max_steps=40", "trainer.save_steps=10",
                 f"tracking.uri={server}", "tracking.experiment=lost_node")  # fmt: skip
    wait_for(
        "the first complete checkpoint",
        lambda: list((tmp_path / "sweeps").glob("*/0/checkpoints/checkpoint-*/trainer_state.json")),
    )
    (first_job,) = [p.name for p in (sweep_dir(tmp_path) / ".submitit").iterdir() if p.name.isdigit()]
    for pid in _task_pids({"SLURM_JOB_ID": first_job, "SLURMD_NODENAME": "zs-node2"}):
        os.kill(pid, 9)
    out = finish(proc)
    parent, (lost, retried) = parent_and_children(server, "lost_node")
    assert parent.info.status == "FINISHED", out
    assert lost.info.status == "FAILED" and retried.info.status == "FINISHED"
    second_job = retried.data.tags["zerosweep.slurm_job_id"]
    assert lost.data.tags["zerosweep.slurm_job_id"] == first_job != second_job
    assert parent.data.tags["zerosweep.slurm_job_ids"] == f"{first_job} {second_job}"
    error = artifact_text(server, lost.info.run_id, "error.txt", tmp_path / "lost")
    assert error.rstrip().splitlines()[-1] == "task 1 on zs-node2 died: Killed (SIGKILL)", error[-2000:]
    assert f"try 2 of 2 as Slurm job {second_job}, from its newest checkpoint" in out
    assert retried.data.tags["zerosweep.carries_on"] == lost.info.run_id
    assert retried.data.metrics["resumed_from_step"] >= 10 and retried.data.metrics["steps"] == 40


def test_a_node_set_down_mid_job_requeues_it_into_the_same_run(tmp_path: Path) -> None:
    """The second node of a 2-node job stops responding after the job's first checkpoint, and an admin
    sets it DOWN: Slurm ends the job NODE_FAIL and requeues it; it resumes from that checkpoint into
    the same run, which says why."""
    proc = start(tmp_path, "trainer.nnodes=2", "trainer.max_steps=40", "trainer.save_steps=10")
    wait_for(
        "the first complete checkpoint",
        lambda: list((tmp_path / "sweeps").glob("*/0/checkpoints/checkpoint-*/trainer_state.json")),
    )
    (job_id,) = [p.name for p in (sweep_dir(tmp_path) / ".submitit").iterdir() if p.name.isdigit()]
    # Its tasks stop, and stay stopped through the SIGCONT that comes before Slurm's SIGTERM until
    # Slurm's SIGKILL ends them (the first node's wait for them in the next collective): the job cannot
    # end on its own, however fast the 30 steps left would be. (sacct may say NODE_FAIL before that.)
    silent = _task_pids({"SLURM_JOB_ID": job_id, "SLURMD_NODENAME": "zs-node2"})

    def silenced() -> bool:
        """Stops those of the tasks still there; True once none is."""
        there = False
        for pid in silent:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                there = True
        return not there

    silenced()
    node = ["scontrol", "update", "nodename=zs-node2"]
    try:
        subprocess.run([*node, "state=down", "reason=zerosweep-test"], check=True)
        wait_for("Slurm to kill the silent node's tasks", silenced, timeout=120)
        wait_for("the requeue", lambda: sacct_restarts(job_id, "NODE_FAIL") >= 1, timeout=120)
    finally:  # ReturnToService brings it back once its slurmd registers; resume it if not yet
        subprocess.run([*node, "state=resume"], capture_output=True)
    out = finish(proc)
    parent, (run,) = parent_and_children(tmp_path)
    assert parent.info.status == run.info.status == "FINISHED", out
    assert run.data.tags["zerosweep.requeued_after"] == "NODE_FAIL"
    assert loss_steps(tmp_path, run.info.run_id) == list(range(1, 41))  # contiguous, none twice
    assert run.data.metrics["resumed_from_step"] >= 10 and run.data.metrics["steps"] == 40


def test_a_resumed_sweep_waits_for_the_jobs_it_queued_before(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    """The driver is killed once its jobs are queued; the same command again waits for those jobs
    (submits none twice) and closes the sweep when they end. Its store is a team's MLflow server."""
    # Submitted held (sbatch --hold) and released once the second driver has found them: still
    # queued when it looks, however loaded the machine (jobs that trained meanwhile raced it: at 40,
    # then 100 steps a loaded machine finished one of them first).
    server = mlflow_server.uri
    args = (
        "zero=stage2,stage3",
        "trainer.max_steps=8",
        "+launcher.additional_parameters.hold=true",
        f"tracking.uri={server}",
        "tracking.experiment=resumed",
    )
    first = start(tmp_path, *args)
    client = mlflow_client(server)

    def queued() -> list[str]:
        exp = client.get_experiment_by_name("resumed")
        parents = exp and client.search_runs([exp.experiment_id], "tags.`zerosweep.role` = 'sweep'")
        return parents[0].data.tags.get("zerosweep.slurm_job_ids", "").split() if parents else []

    job_ids = wait_for("the sweep's Slurm jobs", queued, timeout=120)
    first.kill()  # the driver dies; Slurm keeps its jobs
    first.wait()
    # The same command again at once: sacct (which submitit asks) may not list the jobs yet a second after
    # their submission, as a warm start can be; the driver then asks squeue, and queues none anew.
    second = start(tmp_path, *args)
    lines: list[str] = []

    def read() -> None:
        for line in second.stdout:
            lines.append(line)

    reader = threading.Thread(target=read)
    reader.start()
    said = "queued by an earlier driver"
    wait_for("the second driver to find the jobs", lambda: "".join(lines).count(said) == 2, timeout=120)
    subprocess.run(["scontrol", "release", ",".join(job_ids)], check=True)
    assert second.wait(timeout=420) == 0, "".join(lines)[-6000:]
    reader.join()
    assert "".join(lines).count(said) == 2  # none submitted twice
    parent, children = parent_and_children(server, "resumed")
    assert parent.info.status == "FINISHED" and parent.data.tags["zerosweep.slurm_job_ids"].split() == job_ids
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags["zerosweep.slurm_job_id"] for r in children} == set(job_ids)
    assert sacct_states(job_ids) == {j: "COMPLETED" for j in job_ids}


SEARCH = (
    "search=fastest",
    "launcher=slurm",
    "search.parallel=2",
    "model=llama_tiny",
    "search.zero=[stage2,stage3]",
    "search.offload=[none]",
    "search.micro_batch_size=[4,2,1]",
    "search.gradient_checkpointing=[false]",
    "search.perf=[none]",
    "search.trials=3",
    "search.steps=2",
    "search.name=tiny_fastest",
    "trainer.timing_warmup_steps=1",
    "launcher.gpu_mem_gib=0.015",  # micro batch 4 cannot fit (~20 MiB): skipped, never submitted
    "zero.reduce_bucket_size=100000",
)


def test_a_search_runs_its_trials_as_slurm_jobs_two_at_once(tmp_path: Path) -> None:
    """search=fastest with launcher=slurm: each trial is one Slurm job, two train at once, each a child
    run of the search's parent; a pruned one's job is cancelled; the winner's recipe is written."""
    result = run_pipeline(tmp_path, *SEARCH, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = search_trials(tmp_path)
    (parent,) = [r for r in runs(tmp_path) if r.data.tags.get("zerosweep.role") == "sweep"]
    assert parent.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent.info.run_id}
    started = [r for r in trials if "zerosweep.skipped" not in r.data.tags]
    assert len(started) == 3 and len(trials) > 3  # micro batch 4 was asked for and skipped
    jobs = {r.data.tags["zerosweep.slurm_job_id"]: r for r in started}
    assert set(parent.data.tags["zerosweep.slurm_job_ids"].split()) == set(jobs)
    states = {job_id: state.split()[0] for job_id, state in sacct_states(list(jobs)).items()}
    assert set(states.values()) <= {"COMPLETED", "CANCELLED"}, states
    for job_id, run in jobs.items():  # a pruned trial's job is cancelled, not left to hold its GPU
        pruned, status = "zerosweep.pruned" in run.data.tags, run.info.status
        # Pruned: KILLED with its job cancelled. A trial whose pruning came after its last step stays
        # FINISHED (untagged), its job cancelled or completed.
        finished = {("FINISHED", "COMPLETED"), ("FINISHED", "CANCELLED")}
        expected = {("KILLED", "CANCELLED")} if pruned else finished
        assert (status, states[job_id]) in expected, (job_id, status, states)
    assert not subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip()  # none left
    spans = sorted(_ran(job_id) for job_id in jobs)
    assert any(later[0] < earlier[1] for earlier, later in pairwise(spans)), spans  # two at once
    assert (tmp_path / "conf" / "experiment" / "tiny_fastest.yaml").exists()
    assert f"recipe        {tmp_path / 'conf' / 'experiment' / 'tiny_fastest.yaml'}" in result.stdout


def _ran(job_id: str) -> tuple[str, str]:
    """When the job started and ended, as sacct says (ISO times: they sort as strings)."""
    cmd = ["sacct", "-n", "-X", "-P", "-o", "Start,End", "-j", job_id]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    start, end = out.splitlines()[0].split("|")
    return start, end


def test_a_stopped_slurm_sweep_cancels_its_jobs(tmp_path: Path) -> None:
    """SIGTERM to the driver (what a search does to a trial it prunes): its job is cancelled and its run
    ends KILLED, saying why."""
    proc = start(tmp_path, "trainer.max_steps=400")
    point = wait_for("the sweep dir", lambda: list((tmp_path / "sweeps").glob("*")))[0] / "0"
    wait_for("the point's first logged step", lambda: _logged_steps(tmp_path, point), timeout=120)
    proc.terminate()
    out = finish(proc, rc=143)
    parent, (child,) = parent_and_children(tmp_path)
    job_id = child.data.tags["zerosweep.slurm_job_id"]
    assert sacct_states([job_id])[job_id].startswith("CANCELLED"), out
    assert child.info.status == "KILLED" and parent.info.status == "KILLED"
    error = artifact_text(tmp_path, child.info.run_id, "error.txt", tmp_path)
    assert f"Slurm job {job_id} cancelled: terminated by SIGTERM" in error


@pytest.mark.parametrize(
    ("override", "line"),
    [
        (
            "launcher.partition=nope",
            "error: launcher.partition: Slurm refused the jobs (sbatch: invalid partition",
        ),
        (
            "trainer.nnodes=3",
            "error: trainer.nnodes: Slurm refused the jobs (sbatch: Batch job submission failed",
        ),
    ],
)
def test_a_submission_slurm_refuses_is_one_line_and_the_parent_failed(
    tmp_path: Path, override: str, line: str
):
    """A partition that does not exist, more nodes than the cluster has: sbatch's refusal, in one
    line naming the key, exit 2; the sweep's parent run is closed FAILED, not left RUNNING."""
    out = finish(start(tmp_path, override, "trainer.max_steps=1"), rc=2)
    (error,) = [text for text in out.splitlines() if text.startswith("error:")]
    assert error.startswith(line) and "Traceback" not in out, out[-3000:]
    (parent,) = runs(tmp_path)
    assert parent.info.status == "FAILED" and parent.data.tags["zerosweep.role"] == "sweep"


# Last in the file: its CPU-offload points load DeepSpeedCPUAdam, which a fresh clone compiles after the
# op every training needs; the tests above start meanwhile.
def test_four_point_sweep_is_four_jobs_in_two_arrays_and_nested_runs(tmp_path: Path) -> None:
    """Four points, one job each; the local Slurm's MaxArraySize is 3, so they go out as two arrays."""
    out = finish(start(tmp_path, "zero=stage2,stage3", "offload=none,cpu", "trainer.max_steps=8"))
    parent, children = parent_and_children(tmp_path)
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert "launcher=slurm zero=stage2,stage3 offload=none,cpu" in parent.data.params["sweep.overrides"]
    job_ids = parent.data.tags["zerosweep.slurm_job_ids"].split()
    assert len(set(job_ids)) == 4 and len({j.split("_")[0] for j in job_ids}) == 2
    assert "4 points in 2 job arrays (the cluster's MaxArraySize is 3)" in out
    assert sacct_states(job_ids) == {j: "COMPLETED" for j in job_ids}
    points = {(r.data.params["zero"], r.data.params["offload"]): r for r in children}
    assert set(points) == {(z, o) for z in ("stage2", "stage3") for o in ("none", "cpu")}
    for (zero, offload), r in points.items():
        assert r.info.status == "FINISHED" and r.info.run_name == f"zero={zero},offload={offload}"
        assert r.data.params["zero.stage"] == zero[-1] and r.data.params["trainer.max_steps"] == "8"
        assert r.data.params["offload.device"] == offload
        assert r.data.tags["zerosweep.slurm_job_id"] in job_ids
        assert loss_steps(tmp_path, r.info.run_id) == list(range(1, 9))
        assert r.data.tags["zerosweep.slurm_job_id"] in out and r.info.run_id in out  # the printed table
    # Same seed, same losses, to float rounding (without a GPU, torch's AdamW steps unless offloaded).
    finals = [r.data.metrics["final_loss"] for r in children]
    assert max(finals) - min(finals) < 1e-4, finals
