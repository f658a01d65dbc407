"""hydra-submitit-launcher's Slurm launcher, where it falls short for sweeps (its launch(), which
hydra_plugins/zerosweep_launchers hands over to here: Hydra imports that module at every start,
this one only when a sweep launches).

Its launch() raises at the first point Slurm cancelled or that died without a result, so the
sweep's end (table, parent run status) never comes and the point's MLflow run stays RUNNING.
Here every point yields a result: a lost job's run is marked KILLED/FAILED with the end of its
Slurm log, and the parent run is tagged with the sweep's Slurm job ids. Requeue on preemption
and time-out is the plugin's own (its checkpoint() resubmits the point; the job resumes from
its newest Trainer checkpoint into the same run: pipeline/launch/slurm.py).
"""

import contextlib
import copy
import io
import json
import logging
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import submitit
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf, open_dict

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from pipeline import track
from pipeline.errors import ConfigError, Hung, why_stopped
from pipeline.job import Outcome
from pipeline.rank import watchdog
from pipeline.sweep.info import SweepInfo
from pipeline.track import RunState

log = logging.getLogger(__name__)


# sacct's states of a job that has not ended (a requeued one included).
QUEUED = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING"}
QUEUED |= {"RESIZING", "SUSPENDED"}


def _wait_gone(job_ids: list[str], timeout_s: float = 120) -> None:
    """Until Slurm has none of these jobs: a cancelled job's tasks get SIGTERM, which submitit lets
    pass, and KillWait seconds before SIGKILL, in which a run may still finish; its state is read
    after that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listed = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids)], capture_output=True, text=True)
        if not listed.stdout.strip():
            return
        time.sleep(1)


def max_array_size() -> int:
    """The cluster's MaxArraySize (`scontrol show config`): an array's indices stay below it."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"^MaxArraySize\s*=\s*(\d+)", config, re.MULTILINE)
    return int(found.group(1)) if found else 1001  # Slurm's default


def dead_tasks(job: submitit.Job) -> str:
    """srun's own word on the job's tasks that died (the batch step's stderr): which tasks, on which
    node, of which signal, e.g. "tasks 2-3 on zs-node2 died: Killed (SIGKILL)"; '' if none. The line
    may follow a progress bar's last redraw, which ends without a newline."""
    try:
        text = job.stderr() or ""
    except OSError:
        return ""
    died = re.findall(r"srun: error: (\S+): (tasks? [\d,-]+): (.+)$", text, re.MULTILINE)
    return "; ".join(f"{tasks} on {node} died: {what}{_signal_name(what)}" for node, tasks, what in died)


# Each signal by how srun (strsignal) says it: "Killed" -> SIGKILL.
SIGNAL_NAMES = {signal.strsignal(s): s.name for s in signal.Signals if signal.strsignal(s)}


def _signal_name(what: str) -> str:
    """(SIGKILL) after srun's "Killed"."""
    return f" ({SIGNAL_NAMES[what]})" if what in SIGNAL_NAMES else ""


# The key to change for what sbatch says it refuses, by a word of its message.
SBATCH_REFUSES = (
    ("partition", "launcher.partition", "choose one that sinfo lists"),
    ("node count", "trainer.nnodes", "ask for no more nodes than the partition has (sinfo)"),
    ("node configuration", "trainer.nnodes", "ask for nodes the partition has (sinfo: cores, GPUs, memory)"),
    ("account", "launcher.account", "give an account sacctmgr lists for you"),
    ("qos", "launcher.qos", "give a QOS of your account (sacctmgr show assoc)"),
    ("time limit", "launcher.timeout_min", "stay within the partition's time limit (sinfo)"),
    ("memory", "launcher.mem_gb", "ask for no more memory than the nodes have (sinfo -o %m)"),
    ("gres", "trainer.nproc_per_node", "ask for no more GPUs per node than the nodes have (sinfo -o %G)"),
)


def refusal(sbatch: str) -> ConfigError:
    """What sbatch refused, as the one line that names the key to change."""
    said = [line.removeprefix("sbatch: error: ") for line in sbatch.splitlines() if line.strip()]
    first = said[0] if said else sbatch.strip()
    for word, key, fix in SBATCH_REFUSES:
        if word in sbatch.lower():
            return ConfigError(key, f"Slurm refused the jobs (sbatch: {first})", fix)
    return ConfigError("launcher", f"Slurm refused the jobs (sbatch: {first})", "see docs/slurm.md")


# How often the driver asks Slurm about a job that has not written its result: submitit alone asks
# at ever longer intervals (half the time since the last submission, up to 10 minutes), so a job
# cancelled, killed or on a lost node was noticed minutes late. One sacct call covers all the jobs
# submitit watches.
SACCT_POLL_S = 5


def _ended(job: submitit.Job) -> None:
    """Until the job has its result, or Slurm says it ended without one. submitit then waits 15 s
    more for each task's result file, for a network filesystem's late view of it: not on a local
    disk (a job of several tasks reads each task's own, so each is told)."""
    if not track.network_filesystem(job.paths.folder):
        for task in (job, *map(job.task, range(job.num_tasks))):
            task._results_timeout_s = 1  # submitit's knob (its own tests set it so)
    asked = time.monotonic()
    while not job.done():
        time.sleep(1)
        if time.monotonic() - asked >= SACCT_POLL_S:
            asked = time.monotonic()
            if job.watcher.is_done(job.job_id, mode="force"):  # done(force_check) skips a job's tasks
                return


# How long a job that ended so may take to show in the queue again, if Slurm requeued it (_requeued).
REQUEUE_WAIT_S = {"NODE_FAIL": 30, "FAILED": 3}


def _requeued(job: submitit.Job, wait_s: float) -> bool:
    """Slurm puts a batch job back in the queue when its node failed (JobRequeue=1, its default), a
    few seconds after sacct first says NODE_FAIL, and when submitit's checkpoint on a time-out signal
    asked for it, where a loaded node's sacct may first say FAILED (the requeue killed its tasks): is
    it back (pending or running again)?"""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if {"PENDING", "CONFIGURING", "RUNNING"} & _in_queue(job.job_id):
            return True
        time.sleep(1)
    return False


def _in_queue(job_id: str) -> set[str]:
    """The job's states as Slurm's queue lists them now (squeue), where sacct may lag behind."""
    listed = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return set(listed.stdout.split())


def _call(num: int, overrides: Sequence[str], state: dict) -> tuple:
    """What submitit pickles for point num: the Hydra launcher's __call__ arguments."""
    return (list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", state)


def _retry(result: JobReturn) -> bool:
    """The point asks for a new job (Outcome.retry): it failed where it could not try again in place."""
    return result.status == JobStatus.COMPLETED and getattr(result.return_value, "retry", False)


class SweepLaunch:
    """One launch of a sweep's points: submitted as one job array (or found still queued by an earlier
    driver), waited for, and each given a result. The Hydra launcher itself is what submitit pickles
    into each job (its __call__ runs the point there)."""

    def __init__(self, launcher: SlurmLauncher) -> None:
        assert launcher.config is not None
        self.launcher = launcher
        self.config = launcher.config
        self.params = launcher.params

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        state = Singleton.get_state()
        info = SweepInfo.load(sweep_dir)
        store = track.Store(info.tracking_uri) if info else None
        queued = self._still_queued(store, info) if info else {}
        numbered = list(enumerate(job_overrides, initial_job_idx))
        fresh = {n: list(o) for n, o in numbered if tuple(o) not in queued}
        points = {n: self._point_dir(sweep_dir, n) for n in fresh}
        for point in points.values():
            watchdog.forget(point)
        try:
            new = iter(self._submit([_call(n, o, state) for n, o in fresh.items()]))
        except ConfigError as refused:  # nothing was queued: the sweep ends here, its parent FAILED
            print(f"error: {refused}", file=sys.stderr)
            if info:
                store.end(info.parent_run_id, RunState.FAILED, f"Slurm refused the sweep's jobs: {refused}")
            sys.exit(2)
        jobs = [queued.get(tuple(o)) or (next(new), points[n]) for n, o in numbered]
        ids = [job.job_id for job, _ in jobs]
        log.info(f"Slurm jobs {' '.join(ids)}; submitit logs in {sweep_dir}/.submitit/")
        for o, (job, _) in zip(job_overrides, jobs, strict=True):
            if tuple(o) in queued:
                log.info(
                    f"point {' '.join(o)}: waiting for Slurm job {job.job_id}, queued by an earlier driver"
                )
        submitted = [job for job, _ in jobs]
        self._record(submitted, store, info)
        try:
            results = [
                self._result(job, o, point, store, info)
                for (job, point), o in zip(jobs, job_overrides, strict=True)
            ]
            tries = 1 + int(self.config.sweep.retries)
            for attempt in range(2, tries + 1):  # points that can only be tried again as a new job
                again = [i for i, result in enumerate(results) if _retry(result)]
                if not again:
                    break
                calls = [_call(*numbered[i], state) for i in again]
                for i, job in zip(again, self._submit(calls), strict=True):
                    log.info(
                        f"point {' '.join(job_overrides[i])}: try {attempt} of {tries} as Slurm job "
                        f"{job.job_id}, from its newest checkpoint"
                    )
                    jobs[i] = (job, jobs[i][1])
                    results[i] = None
                    submitted.append(job)
                self._record(submitted, store, info)
                results = [
                    result or self._result(job, o, point, store, info)
                    for result, (job, point), o in zip(results, jobs, job_overrides, strict=True)
                ]
            return results
        except KeyboardInterrupt as stop:
            self._cancel([job for job, _ in jobs], store, info, why_stopped(stop))
            raise

    @staticmethod
    def _record(jobs: list[submitit.Job], store: track.Store | None, info: SweepInfo | None) -> None:
        """Every job the sweep submitted, on its parent run, with the map of the jobs to their
        submitit folders: a resumed sweep waits for those an earlier driver queued that are still
        pending or running instead of submitting them again."""
        if info:
            folders = {job.job_id: str(job.paths.folder) for job in jobs}
            tags = {track.SLURM_JOB_IDS: " ".join(folders), track.SLURM_JOBS: json.dumps(folders)}
            store.tag(info.parent_run_id, tags)

    def _submit(self, calls: list[tuple]) -> list[submitit.Job]:
        """The points as job arrays: one, or as many as the cluster's MaxArraySize needs (an array
        larger than it is refused by sbatch). array_parallelism holds within each array."""
        size = max_array_size()
        if len(calls) > size:
            arrays = -(-len(calls) // size)
            log.info(f"{len(calls)} points in {arrays} job arrays (the cluster's MaxArraySize is {size})")
        executor = self._executor()
        chunks = [calls[i : i + size] for i in range(0, len(calls), size)]
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's refusal too
                return [
                    job
                    for chunk in chunks
                    for job in executor.map_array(self.launcher, *zip(*chunk, strict=True))
                ]
        except submitit.core.utils.FailedJobError as e:
            raise refusal(str(e)) from None

    def _still_queued(
        self, store: track.Store, info: SweepInfo
    ) -> dict[tuple[str, ...], tuple[submitit.Job, Path]]:
        """The sweep's jobs that an earlier driver submitted and Slurm still has, by their overrides,
        with their point dirs (in the earlier driver's sweep dir: <sweep dir>/.submitit/<job id>/)."""
        tags = store.get(info.parent_run_id).tags
        found = {}
        for job_id, folder in json.loads(tags.get(track.SLURM_JOBS, "{}")).items():
            job = submitit.SlurmJob(folder=Path(folder).parent / "%j", job_id=job_id)
            # submitit asks sacct, which lists a job a moment after its submission: UNKNOWN until then.
            state = {job.state.split()[0]}
            if state == {"UNKNOWN"}:
                state = _in_queue(job_id)
            if state & QUEUED:
                overrides, _, num = job.submission().args[:3]
                found[tuple(overrides)] = (job, self._point_dir(Path(folder).parents[1], num))
        return found

    def _point_dir(self, sweep_dir: Path, num: int) -> Path:
        """Job num's output dir as Hydra makes it (hydra.sweep.subdir: its number, or a search's trial-N)."""
        config = copy.deepcopy(self.config)
        with open_dict(config):
            config.hydra.job.num = num
        return sweep_dir / str(config.hydra.sweep.subdir)

    @staticmethod
    def _cancel(
        jobs: list[submitit.Job], store: track.Store | None, info: SweepInfo | None, why: str
    ) -> None:
        """Ctrl-C or a kill of this driver (a search so stops a trial it prunes): its jobs are
        cancelled (scancel), so none holds a GPU unwatched, and their runs still open end KILLED.
        A driver that dies without a word (SIGKILL, a lost login node) leaves them to the same
        command run again (_still_queued)."""
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C or kill must not cut this short
            signal.signal(sig, signal.SIG_IGN)
        for job in jobs:
            if not job.done(force_check=True):
                job.cancel(check=False)  # scancel
        _wait_gone([job.job_id for job in jobs])
        for job in jobs:
            run_id = store and store.child_of_slurm_job(info.experiment_id, info.parent_run_id, job.job_id)
            if run_id and store.get(run_id).state == RunState.RUNNING:
                store.end(run_id, RunState.KILLED, f"Slurm job {job.job_id} cancelled: {why}")

    def _executor(self) -> submitit.AutoExecutor:
        """submitit's executor with the launcher's parameters: the plugin's queue keys as they are,
        the rest as slurm_* (submitit's names for them)."""
        params = dict(self.params)
        executor = submitit.AutoExecutor(
            cluster="slurm",
            folder=params.pop("submitit_folder"),
            slurm_max_num_timeout=params.pop("max_num_timeout"),
        )
        # Container-typed fields cannot take an interpolation in conf/launcher/slurm.yaml: copied here.
        for key in ("additional_parameters", "setup"):
            params[key] = OmegaConf.to_container(self.config.launcher[key])
        queue_keys = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in queue_keys else f"slurm_{k}": v for k, v in params.items()})
        return executor

    def _result(
        self,
        job: submitit.Job,
        overrides: Sequence[str],
        point: Path,
        store: track.Store | None,
        info: SweepInfo | None,
    ) -> JobReturn:
        """The point's result; a job that ended without one (scancel, node failure, OOM kill) is
        reported in its MLflow run and as a KILLED or FAILED point instead of stopping the sweep."""
        try:
            _ended(job)
            return job.results()[0]
        except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as e:
            ended = job.state.split()[0]
            if ended in REQUEUE_WAIT_S and _requeued(job, REQUEUE_WAIT_S[ended]):
                log.info(f"Slurm job {job.job_id} ended {ended} and was requeued: waiting for it again")
                job.watcher.clear()  # submitit stops polling a job it saw end
                return self._result(job, overrides, point, store, info)
            # Ended by the scheduler (scancel, time limit, preemption): KILLED; crashed (signal,
            # OOM kill, node failure, an error before a result): FAILED.
            ended_by_slurm = ended in ("CANCELLED", "TIMEOUT", "PREEMPTED")
            state = RunState.KILLED if ended_by_slurm else RunState.FAILED
            _wait_gone([job.job_id], timeout_s=30)  # srun writes its word on the tasks as the job ends
            died = dead_tasks(job)
            for _ in range(10 if not ended_by_slurm and not died else 0):  # on a loaded node, a little later
                time.sleep(1)
                died = dead_tasks(job)
                if died:
                    break
            log.error(
                f"point {' '.join(overrides)} (Slurm job {job.job_id}) {state}: it ended {job.state}"
                + (f"; {died}" if died else "")
            )
            if info:
                why = f"{e}\nSlurm job {job.job_id} ended {job.state} without a result"
                self._close_run(
                    store, info, job, f"{why}\n{died}" if died else why, state, watchdog.collect(point)
                )
            # COMPLETED with a state, as app.run reports a failed point: Hydra re-raises FAILED ones.
            outcome = Outcome(state, slurm_job_id=job.job_id, retry=not ended_by_slurm)
            return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=outcome)

    @staticmethod
    def _close_run(
        store: track.Store, info: SweepInfo, job: submitit.Job, error: str, state: RunState, hung: Hung | None
    ) -> None:
        """The point's run, if the job got as far as creating one, with submitit's message (it carries
        the job's log); the reason goes last, where error.txt keeps it. A hang's ranks left their
        stacks in the point's dir: they go to the run (hang.txt) and the reason is the hang."""
        run_id = store.child_of_slurm_job(info.experiment_id, info.parent_run_id, job.job_id)
        if run_id:
            if hung:
                store.log_text(run_id, hung.stacks, "hang.txt")
                error = f"{error}\n{hung}"
            store.end(run_id, state, error)
