"""The search, top to bottom: check the command line, open (or reopen) the search's parent run,
hand Optuna what was measured before, then ask -> check -> train -> tell until search.trials points
are measured or the space is spent (up to search.parallel trials training at once, each told as it
ends); rank them, write the winner's recipe, close the parent."""

import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import optuna
from hydra._internal.utils import get_args_parser

from pipeline import track
from pipeline.check import compose, ds_recipe, inputs
from pipeline.config import Config
from pipeline.errors import ConfigError, Terminated, why_stopped
from pipeline.sweep.search import study as studies
from pipeline.sweep.search import trial as trials
from pipeline.sweep.search import winner
from pipeline.sweep.search.ledger import Ledger, Measured
from pipeline.sweep.search.space import Point, Space
from pipeline.track import RunState

# Optuna may propose points already decided (TPE on a small categorical space); after this many in
# a row the space is taken as spent.
MAX_REPEATS = 50
# What every trial trains with, besides its point: short, timed each step, nothing saved.
TRIAL_KEYS = ("trainer.max_steps", "trainer.logging_steps", "trainer.save_model", "trainer.save_steps")
TRIAL_KEYS += ("trainer.eval_steps", "trainer.export_fp32", "tracking.run_name", "tracking.buffer_s")
TRIAL_KEYS += ("hydra.",)


def main(argv: list[str]) -> None:
    args = get_args_parser().parse_args(argv)
    try:
        search = Search.checked(args.overrides, args.multirun)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        search.run()
    except KeyboardInterrupt as stop:
        search.close(stopped=True)
        print(f"stopped: {why_stopped(stop)}; rerun the same command to carry on", file=sys.stderr)
        sys.exit(143 if isinstance(stop, Terminated) else 130)
    search.close(stopped=False)


@dataclass
class Search:
    cfg: Config
    given: list[str]  # the command line's overrides
    overrides: list[str]  # the user's, without search.* and what a trial sets: what every trial starts from
    space: Space
    ledger: Ledger | None = None
    results: list[Measured] = field(default_factory=list)
    running: list["Open"] = field(default_factory=list)  # the trials training now

    @classmethod
    def checked(cls, overrides: list[str], multirun: bool) -> "Search":
        """Everything that would stop the search, before anything starts (one line, exit 2)."""
        if multirun:
            raise ConfigError("search", "runs its own trials, it is not a sweep", "drop -m")
        cfg = compose.compose_point(overrides)
        if cfg.launcher.name == "local" and cfg.search.parallel > 1:
            raise ConfigError(
                "search.parallel",
                "trials here run one after another (at once they would share this machine's GPUs and"
                " skew each other's step times)",
                "use launcher=slurm to run several at once as Slurm jobs, or search.parallel=1",
            )
        if any(o.lstrip("+").startswith("experiment=") for o in overrides):
            raise ConfigError(
                "experiment", "a search starts from groups and keys", "give the recipe's choices instead"
            )
        if not cfg.tracking.enabled:
            raise ConfigError("tracking.enabled", "a search keeps its trials in MLflow", "leave tracking on")
        space = Space.of(cfg)
        inputs.check(cfg)  # the user's model and data
        track.prepare(cfg)
        base = [
            o
            for o in overrides
            if not o.lstrip("+~").startswith(("search",) + space_keys(space) + TRIAL_KEYS)
        ]
        return cls(cfg, list(overrides), base, space)

    @property
    def warmup(self) -> int:
        return self.cfg.trainer.timing_warmup_steps

    def run(self) -> None:
        key = "search: " + " ".join(o for o in self.given if not o.startswith("search.trials="))
        experiment_id = track.prepare(self.cfg)
        self.ledger = Ledger.open(
            track.Store.of(self.cfg), experiment_id, key, self.cfg.outputs_dir, self.overrides
        )
        study = studies.create(self.space, self.cfg.trainer.seed, self.cfg.search.prune_margin)
        self._carry_on(study)
        prior = self._first_fit()
        if prior is not None and not self._decided(prior):
            study.enqueue_trial(prior)
        try:
            self._walk(study)
        except BaseException:  # Ctrl-C or a kill of the search: its trials go with it
            trials.stop([each.training for each in self.running])
            raise

    def _walk(self, study: optuna.Study) -> None:
        """Ask -> check -> start until search.parallel trials train (or the budget or the space has
        room for no more), then tell Optuna each one as it ends; until none trains."""
        repeats = 0
        while True:
            while repeats < MAX_REPEATS and self._room():
                trial = study.ask(studies.distributions(self.space))
                point = dict(trial.params)
                if self._decided(point):  # told again what it gave, not counted
                    studies.tell(study, trial, self._decided(point), 0)
                    repeats += 1
                    continue
                training = next((each for each in self.running if each.point == point), None)
                if training is not None:  # asked again while it trains: told what it gives
                    training.twins.append(trial)
                    repeats += 1
                    continue
                repeats = 0
                started = self._try(point, trial)
                if isinstance(started, Measured):  # skipped, or reused
                    self._tell(study, trial, started, 0)
                else:
                    self.running.append(started)
            if not self.running:
                return
            for ended in self._ended():
                result = trials.measured(ended.training, ended.point, ended.name)
                self._tell(study, ended.trial, result, ended.training.reported, ended.twins)
            repeats = 0

    def _room(self) -> bool:
        """Another trial may start: fewer than search.parallel train, the budget is not spent by the
        trials measured and training, and the space has a point neither decided nor training."""
        busy = len(self.running)
        budget = self._measured() + busy < self.cfg.search.trials
        return busy < self.cfg.search.parallel and budget and len(self._done()) + busy < self.space.size

    def _ended(self) -> list["Open"]:
        """Looks at every training trial each POLL_S until some have ended; returns those."""
        while True:
            looks = [(each, each.training.poll()) for each in self.running]
            ended = [each for each, training in looks if not training]
            if ended:
                self.running = [each for each, training in looks if training]
                return ended
            time.sleep(trials.POLL_S)

    def _tell(
        self,
        study: optuna.Study,
        trial: optuna.Trial,
        result: Measured,
        reported: int,
        twins: Sequence[optuna.Trial] = (),
    ) -> None:
        """A point decided: kept, told to Optuna (and its twins), said."""
        self.results.append(result)
        studies.tell(study, trial, result, reported)
        for twin in twins:
            studies.tell(study, twin, result, 0)
        self._say(result)

    def _say(self, result: Measured) -> None:
        said = f"trial {self._measured()}/{self.cfg.search.trials}" if result.measured else "point"
        print(f"{said} {result.name}: {_said(result)}", flush=True)

    def _carry_on(self, study: optuna.Study) -> None:
        """A rerun of a search that stopped: the points it decided stay decided."""
        for run, point in self.ledger.earlier():
            if not self.space.contains(point):
                continue
            result = self.ledger.outcome(run, point, self.space.name(point), self.warmup)
            if result.state in _KEPT and not self._decided(point):
                result.how = result.how or "earlier run of this search"
                self.results.append(result)
                studies.add(study, self.space, result)
        if self.results:
            print(f"carrying on in search {self.ledger.parent}: {len(self.results)} points decided before")

    def _try(self, point: Point, trial: optuna.Trial) -> "Measured | Open":
        """A point: never started if it cannot run or fit; reused if measured before on this host;
        else started (it trains while the driver asks for more, up to search.parallel)."""
        name = self.space.name(point)
        fixed = [f"trainer.max_steps={self.warmup + self.cfg.search.steps}", "trainer.logging_steps=1"]
        fixed += ["trainer.save_model=false", "trainer.save_steps=0", "trainer.eval_steps=0"]
        fixed += ["tracking.buffer_s=1"]  # each second, not every 10: the pruner reads them live
        overrides = self.overrides + self.space.overrides(point) + fixed
        cfg = compose.compose_point(overrides)
        key = track.point_key(cfg, track.flat_params(cfg, {}))
        tags = self.ledger.trial_tags(point, key)
        why_not = trials.refusal(cfg)
        if why_not:
            params = {**track.flat_params(cfg, {}), **{f"search.{k}": str(v) for k, v in point.items()}}
            run_id = track.record_skipped(cfg, name, params, {**tags, **track.owner_tags()}, why_not)
            return Measured(point, name, RunState.SKIPPED, run_id, why_not)
        before = self.ledger.measured_before(key)
        if before is not None:
            result = self.ledger.outcome(before, point, name, self.warmup)
            result.how = f"reused: measured before in run {before.run_id}"
            return result
        out = self.ledger.sweep_dir / f"trial-{len(list(self.ledger.sweep_dir.glob('trial-*')))}"
        cmd = trials.command(overrides, self.ledger.sweep_dir, out, name)

        def prune(value: float, step: int) -> bool:
            trial.report(value, step)
            return trial.should_prune()

        training = trials.Training.start(cmd, out, self.ledger, tags, self.warmup, prune)
        return Open(point, name, trial, training)

    def _first_fit(self) -> Point | None:
        """The likely fastest point that fits, to start with (what the memory plan knows)."""
        return next(self.fitting(), None)

    def fitting(self) -> Iterator[Point]:
        """The space's points that the rules and the memory plan let start, likely fastest first."""
        for point in self.space.by_preference():
            overrides = self.overrides + self.space.overrides(point)
            if trials.refusal(compose.compose_point(overrides)) is None:
                yield point

    def _decided(self, point: Point) -> Measured | None:
        return next((r for r in self.results if r.point == point and r.state in _DECIDED), None)

    def _done(self) -> list[Measured]:
        return [r for r in self.results if r.state in _DECIDED]

    def _measured(self) -> int:
        return sum(r.measured for r in self.results)

    def close(self, stopped: bool) -> None:
        """Close the parent run (KILLED if stopped) with the points ranked and the report; then the
        winner's recipe and command line."""
        if self.ledger is None:
            return
        sweep = self.ledger.sweep
        heading = f"search {sweep.sweep_dir}: {self._measured()} trials, MLflow parent run {sweep.parent}"
        state = RunState.KILLED if stopped else RunState.FINISHED
        sweep.close(heading, winner.ranking(self.results), winner.RANKING, "search_ranking", state)
        best = next(
            (r for r in self.results if r.state == RunState.FINISHED and r.step_s == _best(self.results)),
            None,
        )
        if best is not None:
            self._crown(best)
        elif not stopped:
            print("no point finished: nothing to recommend (see the table's how column)", file=sys.stderr)
        jobs = self.ledger.slurm_jobs()
        if jobs:  # each trial's driver tagged its own job alone
            sweep.store.tag(sweep.parent, {track.SLURM_JOB_IDS: " ".join(jobs)})

    def _crown(self, best: Measured) -> None:
        """The winner as a command line and a recipe, said and kept on the parent run."""
        name = self.cfg.search.name or f"fastest_{_model_name(self.cfg, self.overrides)}"
        user = winner.kept(self.overrides)
        command = " ".join(["python -m pipeline", *user, *self.space.overrides(best.point)])
        header = (
            f"Found by search=fastest (MLflow parent run {self.ledger.parent}, trial run {best.run_id}):\n"
        )
        header += (
            f"{best.step_s * 1000:.1f} ms/step, {best.metrics.get('avg_tokens_per_s', 0):,.0f} tokens/s.\n"
        )
        header += f"Trains: {winner.train_command(self.cfg.outputs_dir, name)}\nSame as: {command}"
        # A recipe stands alone: a deepspeed_config's recipe goes in as its own overrides.
        standalone = ds_recipe.inlined(user, self.cfg.outputs_dir)
        text = winner.recipe(standalone, self.space.overrides(best.point), header)
        path = winner.write_recipe(self.cfg.outputs_dir, name, text, self.ledger.sweep_dir)
        store, parent = self.ledger.store, self.ledger.parent
        store.tag(parent, {track.SEARCH_WINNER: best.run_id})
        store.log_metrics(parent, {"best_step_time_s": best.step_s}, 0)
        store.log_text(parent, command + "\n", "winner_command.txt")
        store.log_text(parent, text, f"{name}.yaml")
        print(f"\nfastest: {best.name} ({best.step_s * 1000:.1f} ms/step), MLflow run {best.run_id}")
        print(f"  command line  {command}")
        print(f"  recipe        {path}")
        print(f"  train it      {winner.train_command(self.cfg.outputs_dir, name)}")


@dataclass
class Open:
    """A point Optuna asked for, training; twins: the same point asked for again meanwhile, told what
    it gives (not counted)."""

    point: Point
    name: str
    trial: optuna.Trial
    training: trials.Training
    twins: list[optuna.Trial] = field(default_factory=list)


# Decided for good: a rerun of the search keeps them.
_KEPT = (RunState.FINISHED, RunState.PRUNED, RunState.SKIPPED)
# Not asked for again in this run of the search (a rerun tries FAILED and KILLED points again).
_DECIDED = (*_KEPT, RunState.FAILED, RunState.KILLED)


def space_keys(space: Space) -> tuple[str, ...]:
    """The overrides a trial's point sets, which the user's command line yields to."""
    keys = ["zero=", "offload=", "perf=", "trainer.micro_batch_size=", "trainer.gradient_accumulation_steps="]
    keys += ["trainer.gradient_checkpointing="]
    if any(b is not None for b in space.choices["bucket_size"]):
        keys += ["zero.reduce_bucket_size=", "zero.allgather_bucket_size="]
    return tuple(keys)


def _best(results: list[Measured]) -> float | None:
    return min((r.step_s for r in results if r.step_s is not None), default=None)


def _model_name(cfg: Config, overrides: list[str]) -> str:
    """The model's config option (llama_tiny), or a pretrained model's folder name."""
    raw = cfg.model.name_or_path.rstrip("/").rsplit("/", 1)[-1] if cfg.model.name_or_path else None
    raw = raw or compose.choices(overrides)["model"]
    return "".join(c if c.isalnum() else "_" for c in raw)


def _said(result: Measured) -> str:
    if result.state == RunState.FINISHED:
        step, startup = result.step_s * 1000, result.metrics.get("search_startup_s")
        where = f", start-up {startup:.1f} s" if startup is not None else ""
        return f"{step:.1f} ms/step{where}" + (f" ({result.how})" if result.how else "")
    return f"{result.state}: {result.how}"
