"""The story of one job: plan it, check this machine, train its ranks, track it, summarise it."""
import json
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
    run_id = None
    if cfg.tracking.enabled:
        tags = job_tags(hc)
        if parent:
            tags["mlflow.parentRunId"] = parent["parent_run_id"]
        run_id = track.start_run(cfg, track.prepare(cfg), name, track.flat_params(cfg, hc.runtime.choices), tags)
    job = {"cfg": OmegaConf.to_container(cfg, resolve=True), "training_args": the_plan.training_args,
           "flops_per_token": the_plan.flops_per_token, "tracking_uri": track.tracking_uri(cfg), "run_id": run_id}
    try:
        result = launch.run_local(job, cfg.trainer.nproc_per_node)
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
    (out / "summary.json").write_text(json.dumps(result) + "\n")
    summary.print_result(name, result, files, hydra_config, run_id, ui_command(cfg), on_gpu)
    return {"state": "FINISHED", **result}


def job_tags(hc) -> Dict[str, str]:
    tags = {"zerosweep.overrides": " ".join(hc.overrides.task), "zerosweep.output_dir": hc.runtime.output_dir}
    if hc.mode == RunMode.MULTIRUN:
        tags.update({"zerosweep.sweep_dir": str(Path(hc.sweep.dir).absolute()), "zerosweep.job_num": str(hc.job.num)})
    return tags


def ui_command(cfg: DictConfig) -> str:
    return f"mlflow ui --backend-store-uri {track.tracking_uri(cfg)}"
