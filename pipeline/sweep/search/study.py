"""Optuna's side of the search: a study over the space's knobs (categorical), TPE sampling, a
pruner that stops a trial slower than the best so far, and the points measured before handed in
as finished trials."""

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from pipeline.sweep.search.ledger import Measured
from pipeline.sweep.search.space import Space
from pipeline.track import RunState

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the driver prints one line per trial itself


class SlowerThanBest(BasePruner):
    """Prune a trial whose mean step time after n timed steps is more than `margin` above the best
    finished trial's after n steps: it cannot beat the best so far. Optuna's PercentilePruner at
    percentile 0 compares the same way but with no margin, and step times jitter by several percent
    (on a shared CPU, ~10%); a margin keeps a near-tie running to the end."""

    def __init__(self, margin: float) -> None:
        self.margin = margin

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        best = [t.intermediate_values[step] for t in done if step in t.intermediate_values]
        return bool(best) and trial.intermediate_values[step] > min(best) * (1 + self.margin)


def create(space: Space, seed: int, margin: float) -> optuna.Study:
    # TPE from the 4th trial on: a search is ~12 trials, TPE's default 10 random ones would be most.
    # constant_liar: trials still training (search.parallel) count as bad ones, so that the next
    # point asked for is not one of them again.
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=3, constant_liar=True)
    return optuna.create_study(direction="minimize", sampler=sampler, pruner=SlowerThanBest(margin))


def distributions(space: Space) -> dict[str, CategoricalDistribution]:
    return {knob: CategoricalDistribution(options) for knob, options in space.choices.items()}


def add(study: optuna.Study, space: Space, result: Measured) -> None:
    """A point measured before (an interrupted run of this search, or another search), as a
    finished Optuna trial: a value, or pruned (stopped early, or never started: worst)."""
    intermediate = dict(enumerate(result.running, start=1))
    if result.state == RunState.FINISHED and result.step_s is not None:
        state, value = TrialState.COMPLETE, result.step_s
    else:
        state, value = TrialState.PRUNED, None
    trial = optuna.trial.create_trial(
        params=result.point,
        distributions=distributions(space),
        value=value,
        state=state,
        intermediate_values=intermediate,
    )
    study.add_trial(trial)


def tell(study: optuna.Study, trial: optuna.Trial, result: Measured, reported: int) -> None:
    """A point just decided: its steps past the `reported` ones as intermediate values, then its
    value or its pruning."""
    for step, value in enumerate(result.running[reported:], start=reported + 1):
        trial.report(value, step)
    if result.state == RunState.FINISHED and result.step_s is not None:
        study.tell(trial, result.step_s)
    elif result.state in (RunState.FAILED, RunState.KILLED):
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, state=TrialState.PRUNED)
