"""Per-step measurements inside the Trainer: loss, step time, tokens/s, peak memory."""

import math
import os
import statistics
import time
from collections.abc import Callable

import psutil
import torch
import torch.distributed as dist
from transformers import TrainerCallback

from pipeline.config import GIB
from pipeline.job import Summary

LogFn = Callable[[dict[str, float], int], None]


class Diverged(RuntimeError):
    """The loss went nan or inf: the run must not look like it trained."""


class StepMetrics(TrainerCallback):
    """Times each optimizer step and forwards the Trainer's logs, with throughput, to log_fn."""

    def __init__(
        self,
        tokens_per_step: int,
        flops_per_token: float,
        warmup: int,
        log_fn: LogFn | None,
        stop_on_nan: bool = True,
        fp16: bool = False,
    ) -> None:
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.warmup = warmup
        self.log_fn = log_fn
        self.step_times: list[float] = []
        self.losses: list[float] = []
        self._t0 = 0.0
        # The Trainer's step when this process started (a resumed checkpoint's, else 0) and its last.
        self.first_step = self.last_step = 0
        # The largest host RSS of this rank seen at a step's end during this run (the process's own
        # high-water mark would carry over from earlier points of a local sweep): offloaded and
        # pinned optimizer states live there, against the plan's host figure.
        self.peak_host = 0
        # Every rank's peak_host on this node, summed once training ended (node_host), as the
        # plan's host figure counts a node: rank 0's alone is half of it on 2 GPUs.
        self.node_host: int | None = None
        # The first step whose loss was nan or inf; training stops there unless told to go on.
        self.diverged_at: int | None = None
        self.stop_on_nan = stop_on_nan
        # The latest evaluation's loss and perplexity, and its step, when the point has an eval set.
        self.evaluation: dict[str, float] = {}
        self.evaluated_at: int | None = None
        # fp16: the steps DeepSpeed's loss scaler skipped on an overflow (counted), and its scale
        # (logged as loss_scale beside the loss): a run that overflows often shows it.
        self.fp16 = fp16
        self.overflow_skips = 0
        self._loss_scale: float | None = None

    def on_train_begin(self, args, state, control, **kw):
        self.first_step = self.last_step = state.global_step
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        # Step end to step end: a step's time includes loading its batch and the previous step's
        # logging, which a user waits for too (and which the reference benchmark counts).
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.step_times.append(now - self._t0)
        self._t0 = now
        self.last_step = state.global_step
        self.peak_host = max(self.peak_host, psutil.Process().memory_info().rss)
        if self.fp16:
            self._count_overflow(kw.get("optimizer"))

    def _count_overflow(self, optimizer: object) -> None:
        """accelerate's DeepSpeed optimizer wrapper says whether DeepSpeed skipped this step; the
        ZeRO (or FP16) optimizer it wraps holds the loss scale."""
        if getattr(optimizer, "step_was_skipped", False):
            self.overflow_skips += 1
        scale = getattr(getattr(optimizer, "optimizer", None), "loss_scale", None)
        self._loss_scale = float(scale) if isinstance(scale, (int, float)) else self._loss_scale

    def on_evaluate(self, args, state, control, **kw):
        # An evaluation runs between two steps: keep its time out of the next step's.
        self._t0 = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        if "loss" in logs:
            self.losses.append(float(logs["loss"]))
            if not math.isfinite(self.losses[-1]) and self.diverged_at is None:
                self.diverged_at = state.global_step
                control.should_training_stop = self.stop_on_nan
        if "eval_loss" in logs:
            logs["eval_perplexity"] = math.exp(
                min(float(logs["eval_loss"]), 700.0)
            )  # exp overflows past ~709
            self.evaluation = {k: float(logs[k]) for k in ("eval_loss", "eval_perplexity")}
            self.evaluated_at = state.global_step
        if self.log_fn:
            values = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and k != "epoch"}
            if self.step_times and "loss" in logs:
                values.update(
                    step_time_s=self.step_times[-1], tokens_per_s=self.tokens_per_step / self.step_times[-1]
                )
            if self.fp16 and "loss" in logs:
                values["overflow_skips"] = self.overflow_skips
                if self._loss_scale is not None:
                    values["loss_scale"] = self._loss_scale
            self.log_fn(values, state.global_step)

    def node_host_peak(self) -> None:
        """Sum the ranks' host peaks per node (every rank calls it, after training)."""
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return
        peaks: list[int] = [0] * dist.get_world_size()
        dist.all_gather_object(peaks, self.peak_host)
        nodes = dist.get_world_size() // int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
        self.node_host = sum(peaks) // max(1, nodes)

    def peak_memory(self) -> int:
        """Peak GPU memory allocated on this rank; without a GPU, the peak host RSS seen."""
        return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else self.peak_host

    def summary(self) -> Summary:
        timed = self.step_times[self.warmup :] or self.step_times
        step_s = statistics.mean(timed) if timed else float("nan")
        tokens_s = self.tokens_per_step / step_s if timed else float("nan")
        return Summary(
            final_loss=self.losses[-1] if self.losses else float("nan"),
            avg_step_time_s=step_s,
            avg_tokens_per_s=tokens_s,
            model_tflops=self.flops_per_token * tokens_s / 1e12,
            peak_memory_gib=self.peak_memory() / GIB,
            peak_host_gib=(self.node_host or self.peak_host) / GIB,
            steps=self.last_step,
            resumed_from_step=self.first_step,
            final_eval_loss=self.evaluation.get("eval_loss"),  # the last evaluation: at the end
            final_eval_perplexity=self.evaluation.get("eval_perplexity"),
            overflow_skips=self.overflow_skips if self.fp16 else None,
        )
