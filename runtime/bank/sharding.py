"""Splitting a resumable, sharded bank step over the processes that torchrun starts.

A bank step (embedding the tiles; later steps such as local features work the same way) is cut
into numbered shards, each written atomically with a completion mark, so any process can tell
whether a shard is done by looking at the files. Under `torchrun --nproc-per-node N -m meanloc
bank build ...` every process reads its rank from torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE), builds the shards `shard % WORLD_SIZE == RANK` that are not done
yet, and rank 0 then waits until every shard is marked complete before it assembles the bank.
Nothing else is shared between ranks: no process group, so no torch import (the onboard install
has none). When a rank fails, torchrun stops the others (or restarts the whole group with
`--max-restarts`); a new run (`--resume`, implied on a torchrun restart) reuses every finished
shard, whichever rank or world size built it.
Python 3.8 compatible.
"""

import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable, List, Mapping, Optional

from meanloc.errors import MeanlocError

# How often rank 0 looks for the other ranks' completion marks, and how often it says so.
POLL_SECONDS = 0.5
REPORT_SECONDS = 60.0


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of one build (a single process by default)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    restart_count: int = 0

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> "Ranks":
        """torchrun's variables (see torch.distributed.run's documentation); none -> one process."""
        environ = os.environ if environ is None else environ
        if "WORLD_SIZE" not in environ:
            return cls()
        try:
            ranks = cls(
                rank=int(environ["RANK"]),
                world_size=int(environ["WORLD_SIZE"]),
                local_rank=int(environ.get("LOCAL_RANK", "0")),
                local_world_size=int(environ.get("LOCAL_WORLD_SIZE", "1")),
                restart_count=int(environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
            )
        except (KeyError, ValueError) as exc:
            raise MeanlocError(
                "incomplete torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {}".format(exc)
            ) from None
        if not (0 <= ranks.rank < ranks.world_size and 0 <= ranks.local_rank < ranks.local_world_size):
            raise MeanlocError("inconsistent torchrun environment: {}".format(ranks))
        return ranks

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def owns(self, shard: int) -> bool:
        return shard % self.world_size == self.rank

    def own_shards(self, n_shards: int) -> List[int]:
        return [shard for shard in range(n_shards) if self.owns(shard)]

    def cpu_threads(self, cpu_count: Optional[int] = None) -> int:
        """An even share of this machine's cores for each of its ranks."""
        return max(1, (cpu_count or os.cpu_count() or 1) // self.local_world_size)

    def pin_gpu(self, environ: Optional[dict] = None) -> Optional[str]:
        """One GPU per rank on this node: restrict CUDA_VISIBLE_DEVICES to the LOCAL_RANK-th
        visible device before any CUDA library starts, so every backend's device 0 is this
        rank's GPU. Returns the device chosen (None for a single process on the node)."""
        environ = os.environ if environ is None else environ
        if self.local_world_size < 2:
            return None
        visible = [d.strip() for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        device = visible[self.local_rank % len(visible)] if visible else str(self.local_rank)
        environ["CUDA_VISIBLE_DEVICES"] = device
        return device


def wait_for_shards(
    shards: Iterable[int],
    is_complete: Callable[[int], bool],
    what: str = "shards",
    poll_s: float = POLL_SECONDS,
    report_s: float = REPORT_SECONDS,
    log: Callable[[str], None] = print,
) -> None:
    """Block until `is_complete(shard)` holds for every shard (rank 0 waiting for the others).

    A rank that dies makes torchrun stop this one too, so there is no timeout here."""
    missing = [shard for shard in shards if not is_complete(shard)]
    last_report = time.monotonic()
    while missing:
        time.sleep(poll_s)
        missing = [shard for shard in missing if not is_complete(shard)]
        if missing and time.monotonic() - last_report >= report_s:
            log("waiting for {} {} from other ranks (e.g. {})".format(len(missing), what, missing[0]))
            last_report = time.monotonic()
