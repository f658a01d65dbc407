"""What crosses processes for one point, typed: the job every rank trains (pickled to spawned
ranks and Slurm tasks) and the outcome Hydra hands back to the sweep (from a Slurm job too)."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import Config
from pipeline.rank import checkpoints
from pipeline.track import RunRef, RunState

if TYPE_CHECKING:  # the ranks unpickle a Job: they import nothing of the driver's side
    from pipeline.plan import Plan


@dataclass
class Job:
    cfg: Config
    # transformers.TrainingArguments' keywords, the DeepSpeed dict among them (plan/settings.py).
    training_args: dict[str, Any]
    flops_per_token: float
    # The run dir: the trained model lands in its model/ (and model_fp32/).
    out: Path
    # The point's MLflow run, for rank 0 to append metrics to; None when nothing is tracked.
    run: RunRef | None = None
    # The Trainer checkpoint a requeued or carried-on job resumes from (checkpoints.for_ranks).
    resume_from: str | None = None
    # The user's data, tokenized (corpus.prepare); None for the built-in sources.
    data: str | None = None

    @classmethod
    def of(
        cls,
        cfg: Config,
        plan: "Plan",
        out: Path,
        run: RunRef | None = None,
        resume_from: str | None = None,
        data: str | None = None,
    ) -> "Job":
        training_args = checkpoints.loading(plan.training_args, resume_from)
        return cls(cfg, training_args, plan.flops_per_token, out, run, resume_from, data)

    @property
    def model_dir(self) -> Path:
        """The trained model as a Hugging Face model directory (from_pretrained loads it)."""
        return self.out / "model"

    @property
    def fp32_dir(self) -> Path:
        return self.out / "model_fp32"

    def saved_models(self) -> list[Path]:
        return [d for d in (self.model_dir, self.fp32_dir) if d.is_dir()]


@dataclass
class Outcome:
    """How a point ended; state None: a dry run, nothing trained."""

    state: RunState | None
    # The closing figures (metrics.StepMetrics.summary) of a FINISHED point.
    summary: dict[str, float] = field(default_factory=dict)
    slurm_job_id: str | None = None
