"""``counters.ids.random_hex``: the random part of transaction and reservation ids, drawn from
the OS a few thousand bytes at a time (no syscall per id on the hot lane)."""

from __future__ import annotations

import os

import pytest

from counters import ids
from counters.ids import random_hex


def test_ids_have_their_length_and_never_repeat_across_draws() -> None:
    """Ids of mixed sizes, across several refills of the pool, are hex of twice their bytes
    and all distinct (a refill appends new bytes; nothing is handed out twice)."""
    sizes = [12, 16, 1, 64] * 1_000  # ~93 KB: fifteen refills
    drawn = [random_hex(n) for n in sizes]
    assert [len(d) for d in drawn] == [2 * n for n in sizes]
    assert all(int(d, 16) >= 0 for d in drawn)
    long = [d for d in drawn if len(d) >= 24]
    assert len(set(long)) == len(long)


def test_a_forked_worker_draws_its_own_bytes() -> None:
    """uvicorn forks no workers today (it spawns them), but a fork must not hand the child the
    parent's pool: both would give out the same transaction ids."""
    random_hex(16)  # the pool is filled
    assert ids._RANDOM
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, to the parent
        try:
            os.write(write, random_hex(16).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert len(child) == 32 and child != random_hex(16)


@pytest.mark.parametrize("nbytes", [0, -1, 65])
def test_a_size_outside_one_to_64_bytes_is_refused(nbytes: int) -> None:
    """``_RANDOM[-0:]`` is the whole pool: a size of 0 would hand out (and empty) all of it."""
    with pytest.raises(ValueError, match="1 to 64 bytes"):
        random_hex(nbytes)
