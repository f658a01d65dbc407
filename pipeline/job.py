"""What crosses processes for one point, typed: the job every rank trains (pickled to spawned
ranks and Slurm tasks) and the outcome Hydra hands back to the sweep (from a Slurm job too)."""

from dataclasses import dataclass, field
from typing import Any

from pipeline.config import Config
from pipeline.plan import Plan
from pipeline.track import RunRef, RunState


@dataclass
class Job:
    cfg: Config
    # transformers.TrainingArguments' keywords, the DeepSpeed dict among them (plan.py).
    training_args: dict[str, Any]
    flops_per_token: float
    # The point's MLflow run, for rank 0 to append metrics to; None when nothing is tracked.
    run: RunRef | None = None
    # The Trainer checkpoint a requeued job resumes from.
    resume_from: str | None = None

    @classmethod
    def of(cls, cfg: Config, plan: Plan, run: RunRef | None = None, resume_from: str | None = None) -> "Job":
        return cls(cfg, plan.training_args, plan.flops_per_token, run, resume_from)


@dataclass
class Outcome:
    """How a point ended; state None: a dry run, nothing trained."""

    state: RunState | None
    # The closing figures (metrics.StepMetrics.summary) of a FINISHED point.
    summary: dict[str, float] = field(default_factory=dict)
    slurm_job_id: str | None = None
