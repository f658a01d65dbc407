"""The story of one job: plan it, check this machine, train its ranks, track it, summarise it."""
import sys
import traceback
from pathlib import Path
from typing import Any, Dict

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pipeline import launch, plan, preflight, summary, sweep, track


def run(cfg: DictConfig) -> Dict[str, Any]:
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    on_gpu = torch.cuda.is_available()
    the_plan = plan.make(cfg, out, use_cpu=not on_gpu)
    preflight.check(cfg, the_plan.memory["nvme"])
    files = summary.write_plan(out, the_plan)
    if cfg.dry_run:
        summary.print_plan(the_plan, files)
        return {}
    multirun = hc.mode == RunMode.MULTIRUN
    parent = sweep.sweep_info(hc.sweep.dir) if multirun else None
    name = cfg.tracking.run_name or (sweep.child_name(list(hc.overrides.task), parent["varying"]) if parent
                                     else ",".join(hc.overrides.task) or "default")
    in_slurm = launch.in_slurm_task(cfg)
    requeued = in_slurm and launch.requeued()
    run_id, logged_step = None, 0
    if cfg.tracking.enabled and launch.is_main_task():
        run_id = track.saved_run_id(out) if requeued else None
        if run_id:  # a requeued job carries on in the run it started
            logged_step = track.resume(cfg, run_id)
        else:
            tags = job_tags(hc)
            if parent:
                tags["mlflow.parentRunId"] = parent["parent_run_id"]
            tags.update({"zerosweep.slurm_job_id": launch.slurm_job_id()} if in_slurm else track.owner_tags())
            run_id = track.start_run(cfg, track.prepare(cfg), name, track.flat_params(cfg, hc.runtime.choices), tags)
            track.save_run_id(out, run_id)
    job = {"cfg": OmegaConf.to_container(cfg, resolve=True), "training_args": the_plan.training_args,
           "flops_per_token": the_plan.flops_per_token, "tracking_uri": track.tracking_uri(cfg), "run_id": run_id,
           "logged_step": logged_step, "resume_from": launch.newest_checkpoint(out) if requeued else None}
    try:
        with track.system_metrics(cfg, run_id):
            result = launch.run_in_slurm(job) if in_slurm else launch.run_local(job, cfg.trainer.nproc_per_node)
    except SystemExit:
        raise  # submitit's exit after checkpoint + requeue: the run stays RUNNING and resumes
    except BaseException as e:
        if run_id:
            track.fail(cfg, run_id, traceback.format_exc(), "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        if multirun and isinstance(e, Exception):
            # One failed point must not stop the others; the sweep's end reports it and exits non-zero.
            print(f"point {name} FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            return {"state": "FAILED"}
        raise
    hydra_config = out / ".hydra" / "config.yaml"
    if run_id:
        track.finish(cfg, run_id, result, [files["deepspeed"], files["training_args"], files["memory"], hydra_config])
    summary.write_result(out, result)
    summary.print_result(name, result, files, hydra_config, run_id, ui_command(cfg), on_gpu)
    return {"state": "FINISHED", **result}


def job_tags(hc) -> Dict[str, str]:
    tags = {"zerosweep.overrides": " ".join(hc.overrides.task), "zerosweep.output_dir": hc.runtime.output_dir}
    if hc.mode == RunMode.MULTIRUN:
        tags.update({"zerosweep.sweep_dir": str(Path(hc.sweep.dir).absolute()), "zerosweep.job_num": str(hc.job.num)})
    return tags


def ui_command(cfg: DictConfig) -> str:
    if cfg.tracking.uri:
        return f"python -m pipeline.ui --tracking-uri {cfg.tracking.uri}"
    return f"python -m pipeline.ui --outputs-dir {Path(cfg.outputs_dir).absolute()}"
