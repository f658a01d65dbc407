"""hydra-submitit-launcher's Slurm launcher, where it falls short for sweeps.

Its launch() raises at the first point Slurm cancelled or that died without a result, so the
sweep's end (table, parent run status) never comes and the point's MLflow run stays RUNNING.
Here every point yields a result: a lost job's run is marked KILLED/FAILED with the end of its
Slurm log, and the parent run is tagged with the sweep's Slurm job ids. Requeue on preemption
and time-out is the plugin's own (its checkpoint() resubmits the point; the job resumes from
its newest Trainer checkpoint into the same run: pipeline/app.py).
"""
import logging
from pathlib import Path
from typing import Sequence

import submitit
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as PluginSlurmLauncher
from omegaconf import OmegaConf

from pipeline import sweep, track

log = logging.getLogger(__name__)


class SlurmLauncher(PluginSlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params["max_num_timeout"])
        # Container-typed fields cannot take an interpolation in conf/launcher/slurm.yaml: copied here.
        extra = {k: OmegaConf.to_container(self.config.launcher[k]) for k in ("additional_parameters", "setup")}
        queue_keys = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in queue_keys else f"slurm_{k}": v for k, v in {**self.params, **extra}.items()
                                      if k not in ("submitit_folder", "max_num_timeout")})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        args = [(list(o), "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{initial_job_idx + i}",
                 Singleton.get_state()) for i, o in enumerate(job_overrides)]
        jobs = executor.map_array(self, *zip(*args))
        ids = [j.job_id for j in jobs]
        log.info(f"Slurm jobs {' '.join(ids)}; submitit logs in {sweep_dir}/.submitit/")
        sweep.tag_parent(str(sweep_dir), {"zerosweep.slurm_job_ids": " ".join(ids)})
        return [self._result(job, overrides) for job, overrides in zip(jobs, job_overrides)]

    def _result(self, job: submitit.Job, overrides: Sequence[str]) -> JobReturn:
        """The point's result; a job that ended without one (scancel, node failure, OOM kill) is
        reported in its MLflow run and as a KILLED or FAILED point instead of stopping the sweep."""
        try:
            return job.results()[0]
        except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as e:
            # Ended by the scheduler (scancel, time limit, preemption): KILLED; crashed (signal,
            # OOM kill, node failure, an error before a result): FAILED.
            state = "KILLED" if job.state.split()[0] in ("CANCELLED", "TIMEOUT", "PREEMPTED") else "FAILED"
            log.error(f"point {' '.join(overrides)} (Slurm job {job.job_id}) {state}: it ended {job.state}")
            run_id = sweep.child_run_id(str(self.config.hydra.sweep.dir), job.job_id)
            if run_id:
                # submitit's message carries the job's log; the reason goes last, where error.txt keeps it.
                track.fail(self.config, run_id, f"{e}\nSlurm job {job.job_id} ended {job.state} without a result", state)
            # COMPLETED with a state, as app.run reports a failed point: Hydra re-raises FAILED ones.
            return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED,
                             _return_value={"state": state, "slurm_job_id": job.job_id})

