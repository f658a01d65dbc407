"""A multi-rank point's failure names its cause: the rank that died, not the peers its death broke."""

import os
import signal

import pytest
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from pipeline.launch.local import on_ranks, ranks_failed


def _one_rank_killed() -> None:
    """Rank 1 is SIGKILLed as rank 0 waits on it in an all-reduce, which fails on the broken link
    at once (gloo: "Connection reset by peer")."""
    dist.init_process_group("gloo")
    dist.barrier()
    if dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.all_reduce(torch.ones(1))


def test_a_rank_killed_outright_is_named_before_the_peer_it_broke():
    with pytest.raises(ChildFailedError) as failed:
        on_ranks(2, _one_rank_killed)
    assert ranks_failed(failed.value) == "ranks failed: rank 1 died: killed by SIGKILL"
