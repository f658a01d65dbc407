"""Hang detection in each rank: a step that does not end within trainer.hang_timeout_s (a
collective that never returns, a dead peer) has the rank write every thread's Python stack to
<run dir>/hang-rank<R>.txt and stop, so the point fails as a hang instead of waiting forever."""

import ctypes
import faulthandler
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

from pipeline.errors import Hung

# A rank's exit status after a hang (the job's error says "hang" from the stack files).
HANG_EXIT = 75


class Watchdog(TrainerCallback):
    def __init__(
        self,
        timeout_s: int,
        out: Path,
        rank: int,
        in_process: bool,
        flush: Callable[[], None] | None = None,
        world: int = 1,
    ) -> None:
        self.timeout_s = timeout_s
        self.poll = min(5.0, timeout_s / 4)
        # Called before the rank is stopped: its buffered metrics reach the store first.
        self.flush = flush
        self.rank, self.world, self.out = rank, world, out
        self.stacks = out / f"hang-rank{rank}.txt"
        # In the job's own process (one rank here) the hang is raised there; a rank of its own stops.
        self.in_process = in_process
        self._last = time.monotonic()
        self._done = threading.Event()
        self._main = threading.main_thread().ident
        self.thread = threading.Thread(target=self._watch, name="zerosweep-watchdog", daemon=True)

    def on_train_begin(self, args, state, control, **kw):
        self._last = time.monotonic()
        self.thread.start()

    def on_step_end(self, args, state, control, **kw):
        self._last = time.monotonic()
        if os.environ.get("ZEROSWEEP_TEST_HANG_AT_STEP") == f"{self.rank}:{state.global_step}":
            while True:  # test-only: this rank stops stepping; its peers wait in the next collective
                time.sleep(0.1)

    def on_train_end(self, args, state, control, **kw):
        self.close()

    def close(self) -> None:
        """Stop watching. Also when training ends in an error (the Trainer then skips on_train_end):
        in the job's own process a watchdog left running would raise into the next point of a
        local sweep, or end the process 60 s after the hang it reported."""
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(self.poll):
            if time.monotonic() - self._last > self.timeout_s:
                with open(self.stacks, "w") as f:
                    f.write(f"rank {self.rank}: no step for {self.timeout_s} s; every thread's stack:\n")
                    f.flush()
                    faulthandler.dump_traceback(f, all_threads=True)
                if self.flush:
                    self.flush()
                self._await_peers()
                self._stop()
                return

    def _await_peers(self) -> None:
        """Every rank of a hung job stops stepping, and each one's watchdog notices within one of its
        polls: this rank stopping sooner would end the job (the launcher stops the others, a peer's
        collective fails) before a slower peer wrote its stack."""
        deadline = time.monotonic() + 2 * self.poll
        while len(stack_files(self.out)) < self.world and time.monotonic() < deadline:
            time.sleep(0.1)

    def _stop(self) -> None:
        if self.in_process:  # raised in the main thread as soon as it runs Python again
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._main), ctypes.py_object(Hung))
            if not self._done.wait(60):  # blocked in C for good: nothing else can end it
                os._exit(HANG_EXIT)
        else:
            os._exit(HANG_EXIT)


def stack_files(out: Path) -> list[Path]:
    """The stack files the ranks of the job in `out` wrote on a hang, rank 0's first."""
    return sorted(out.glob("hang-rank*.txt"))


def forget(out: Path) -> None:
    """Stack files of an earlier try in this dir would make any later failure read as a hang."""
    for f in stack_files(out):
        f.unlink()


def collect(out: Path) -> Hung | None:
    """The ranks' stack files after a job failed, as the Hung error to report, if it hung."""
    files = stack_files(out)
    if not files:
        return None
    stacks = "\n".join(f"== {f.name}\n{f.read_text()}" for f in files)
    return Hung(f"hang: {stacks.splitlines()[1].split(';')[0]}", stacks)
