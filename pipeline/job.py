"""What crosses processes for one point, typed: the job every rank trains (pickled to spawned
ranks and Slurm tasks), the summary a rank reports, and the outcome Hydra hands back to the sweep
(from a Slurm job too)."""

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
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
    # The ranks this attempt trains with (Placement.ranks): a requeued Slurm job may have other than
    # the config's world size, and its steps take the batch per rank on each of them.
    ranks: int
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
        ranks: int,
        run: RunRef | None = None,
        resume_from: str | None = None,
        data: str | None = None,
    ) -> "Job":
        training_args = checkpoints.loading(plan.training_args, resume_from)
        return cls(cfg, training_args, plan.flops_per_token, out, ranks, run, resume_from, data)

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step on this attempt's ranks."""
        return self.cfg.batch_per_rank * self.ranks

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.cfg.data.seq_len

    @property
    def model_dir(self) -> Path:
        """The trained model as a Hugging Face model directory (from_pretrained loads it)."""
        return self.out / "model"

    @property
    def fp32_dir(self) -> Path:
        return self.out / "model_fp32"

    @property
    def adapter_dir(self) -> Path:
        """peft=lora|qlora: the adapter (PeftModel.from_pretrained loads it on its base)."""
        return self.out / "adapter"

    def saved_models(self) -> list[Path]:
        return [d for d in (self.model_dir, self.fp32_dir, self.adapter_dir) if d.is_dir()]


@dataclass
class Summary:
    """A run's closing figures: what rank 0 reports, the run logs as MLflow metrics of these names
    (and summary.json), the console prints, and the sweep table and the search read back."""

    final_loss: float
    avg_step_time_s: float  # the timed steps (after trainer.timing_warmup_steps)
    avg_tokens_per_s: float
    model_tflops: float
    peak_memory_gib: float  # GPU memory allocated on rank 0; without a GPU, its host RSS
    peak_host_gib: float  # host RSS of a node's ranks together
    steps: int  # the run's, across a requeue
    resumed_from_step: int  # the checkpoint's step this attempt started from (0: none)
    # The last evaluation (at the end), when the point has an eval set.
    final_eval_loss: float | None = None
    final_eval_perplexity: float | None = None
    # Steps whose metrics the store refused for good (track.MetricLogger), where there were any.
    lost_metric_steps: int | None = None
    # fp16: the steps DeepSpeed's loss scaler skipped on an overflow.
    overflow_skips: int | None = None

    def metrics(self) -> dict[str, float]:
        """As MLflow metrics and summary.json's keys (an eval the run did not make is left out; the
        step counts stay whole numbers)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def of(cls, metrics: Mapping[str, float]) -> "Summary":
        """From a run's metrics (a run that ended before its summary reads as nan)."""
        values = {f.name: metrics.get(f.name) for f in dataclasses.fields(cls)}
        for f in dataclasses.fields(cls):
            if values[f.name] is None and f.default is dataclasses.MISSING:
                values[f.name] = math.nan
        values["steps"] = _count(values["steps"])
        values["resumed_from_step"] = _count(values["resumed_from_step"])
        return cls(**values)


def _count(value: float) -> int:
    return int(value) if math.isfinite(value) else 0


@dataclass
class Outcome:
    """How a point ended; state None: a dry run, nothing trained."""

    state: RunState | None
    # The closing figures (metrics.StepMetrics.summary) of a FINISHED point.
    summary: Summary | None = None
    slurm_job_id: str | None = None
    # It failed while it trained, where it could not be tried again in place (a Slurm job of several
    # tasks, or one lost with its node): the sweep's driver may submit it again as a new job.
    retry: bool = False
