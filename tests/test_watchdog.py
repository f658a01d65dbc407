"""The hang watchdog in the job's own process (one local rank): the hang is raised there, and the
watchdog ends with the training it watched, also when that training ended in an error."""

import time
from pathlib import Path

import pytest

from pipeline.errors import Hung
from pipeline.watchdog import Watchdog


def test_a_hang_in_the_jobs_own_process_is_raised_there_and_its_watchdog_ends(tmp_path: Path):
    dog = Watchdog(1, tmp_path, rank=0, in_process=True)
    dog.on_train_begin(None, None, None)
    with pytest.raises(Hung):
        while True:  # a step that never ends
            time.sleep(0.05)
    assert (tmp_path / "hang-rank0.txt").read_text().startswith("rank 0: no step for 1 s")
    dog.close()  # as train.worker does when the Trainer raised (no on_train_end then)
    dog.thread.join(timeout=5)
    assert not dog.thread.is_alive()  # else it would end this process 60 s after the hang
