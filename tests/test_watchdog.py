"""The hang watchdog in the job's own process (one local rank): the hang is raised there, and the
watchdog ends with the training it watched, also when that training ended in an error."""

import threading
import time
from pathlib import Path

import pytest

from pipeline.errors import Hung
from pipeline.rank.watchdog import Watchdog


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


def test_a_hung_rank_stops_only_once_its_peers_wrote_their_stacks(tmp_path: Path):
    """Of two hung ranks, the first to notice waits for the other's stack file before it stops
    (stopping would end the job before the slower one wrote it: the full suite once found a
    2-rank hang reported with rank 0's stack alone)."""
    dog = Watchdog(2, tmp_path, rank=0, in_process=True, world=2)  # polls every 0.5 s
    peer_wrote = threading.Event()

    def peer() -> None:  # rank 1's watchdog, noticing the hang 0.3 s later than rank 0's
        while not (tmp_path / "hang-rank0.txt").exists():
            time.sleep(0.01)
        time.sleep(0.3)
        (tmp_path / "hang-rank1.txt").write_text("rank 1: no step for 2 s")
        peer_wrote.set()

    threading.Thread(target=peer, daemon=True).start()
    dog.on_train_begin(None, None, None)
    with pytest.raises(Hung):
        while True:
            time.sleep(0.01)
    assert peer_wrote.is_set(), "rank 0 stopped before rank 1 wrote its stack"
    dog.close()
