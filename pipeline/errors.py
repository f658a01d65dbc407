"""The one error type users see before anything starts: one line, the key, the fix."""

import signal


class ConfigError(Exception):
    """A configuration the pipeline refuses, reported as `key: problem. Fix: ...`."""

    def __init__(self, key: str, problem: str, fix: str) -> None:
        super().__init__(f"{key}: {problem}. Fix: {fix}")
        self.key = key
        self.problem = problem


class Terminated(KeyboardInterrupt):
    """A kill signal (SIGTERM), handled as Ctrl-C is: the runs it stops end KILLED, saying why."""


def raise_terminated(signum: int, frame: object) -> None:
    """SIGTERM's handler: raised as Terminated, so what finally blocks close (runs, buffered
    metrics) is closed before the process ends."""
    raise Terminated(f"terminated by {signal.Signals(signum).name}")


def why_stopped(stop: KeyboardInterrupt) -> str:
    return str(stop) or "interrupted (Ctrl-C)"


class Hung(RuntimeError):
    """No step for trainer.hang_timeout_s: the ranks' Python stacks say where they waited."""

    def __init__(self, message: str = "hang", stacks: str = "") -> None:
        super().__init__(message)
        self.stacks = stacks
