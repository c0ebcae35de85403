"""Who reads what on several devices: rank detection, per-epoch shards, even evaluation shards.

Lightning's DDP runs one process per device; rsgee feeds each its own share of the data instead of
letting Lightning swap in a ``DistributedSampler`` (``use_distributed_sampler=False``), for three
reasons a practitioner meets:

* **Training** (:class:`EpochSampler`): every epoch is one seeded order of the whole train split (or
  of the real:generated mix), cut into equal rank shards. Its items are ``(index, epoch)`` pairs, so
  the augmentation a sample gets depends on its epoch even in worker processes and after a resume.
* **Resuming mid-epoch** (:class:`ResumableLoader`): the loader's state (epoch, batches served) goes
  into the checkpoint, so a run killed mid-epoch skips exactly the batches it had trained on.
* **Evaluation over the whole split** (:class:`EvenShards`): ranks must run the same number of
  batches (DDP synchronises buffers in forward), so short shards are padded with repeats that carry
  ``counted = False`` and never reach a metric. Each tile is scored exactly once.
"""

from __future__ import annotations

import os
import random
from typing import Iterator

from torch.utils.data import DataLoader, Dataset, Sampler

from rsgee.errors import RsgeeError


def launched_rank() -> int:
    """This process's global rank as the launcher (torchrun, SLURM, Lightning) set it; 0 when alone.

    Known before any process group exists, so that a run's folder is prepared by one process only.
    """
    for variable in ("RANK", "SLURM_PROCID"):
        if os.environ.get(variable, "").isdigit():
            if variable == "SLURM_PROCID" and int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
                continue
            return int(os.environ[variable])
    # Lightning's own launcher starts children with LOCAL_RANK (and NODE_RANK on other nodes)
    node, local = (int(os.environ.get(v, "0") or 0) for v in ("NODE_RANK", "LOCAL_RANK"))
    return local if node == 0 else node * 1_000_000 + local


def is_main_process() -> bool:
    return launched_rank() == 0


def close_process_group() -> None:
    """Tear down the process group of a multi-device command before the interpreter exits.

    Left to interpreter shutdown, gloo's threads can die with "terminate called without an active
    exception" on stderr.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class EpochSampler(Sampler):
    """A seeded global order per epoch, padded to a multiple of the ranks and cut into rank shards.

    Subclasses define :meth:`epoch_order`. Yields ``(index, epoch)``; ``len`` is this rank's share.
    Padding repeats the head of the order (as ``DistributedSampler`` does), so with N items and W
    ranks every item is seen once per epoch and at most W − 1 are seen twice.
    """

    def __init__(self, n_items: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        self.n_items, self.seed, self.rank, self.world_size = n_items, seed, rank, world_size
        self.epoch = 0
        self.skip = 0  # items of this rank's shard to skip at the next iteration (resume)
        self._skip_epoch: int | None = None

    def epoch_order(self, epoch: int) -> list[int]:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, items: int) -> None:
        """Skip the first ``items`` of this rank's shard when ``epoch`` is iterated next."""
        self._skip_epoch, self.skip = epoch, items

    def __len__(self) -> int:
        return -(-self.n_items // self.world_size)

    def shard(self, epoch: int) -> list[int]:
        order = self.epoch_order(epoch)
        padded = order + order[: len(self) * self.world_size - len(order)]
        return padded[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, shard = self.epoch, self.shard(self.epoch)
        if self._skip_epoch == epoch:
            shard = shard[self.skip:]
        self._skip_epoch, self.skip = None, 0
        return iter([(i, epoch) for i in shard])


class ShuffledSampler(EpochSampler):
    """Every item once per epoch, in an order drawn from (seed, epoch)."""

    def epoch_order(self, epoch: int) -> list[int]:
        order = list(range(self.n_items))
        random.Random(f"shuffle:{self.seed}:{epoch}").shuffle(order)
        return order


class ResumableLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` whose position Lightning stores in checkpoints.

    Lightning saves ``state_dict()`` of training loaders that have one and hands it back to
    ``load_state_dict`` on resume; the sampler then skips the batches already trained on.
    """

    def __init__(self, dataset: Dataset, sampler: EpochSampler, **kwargs):
        super().__init__(dataset, sampler=sampler, **kwargs)
        self._served = 0
        self._served_epoch = sampler.epoch

    def __iter__(self):
        self._served, self._served_epoch = 0, self.sampler.epoch
        self._served += self.sampler.skip // self.batch_size if self.sampler._skip_epoch == self.sampler.epoch else 0
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self._served_epoch, "batches": self._served, "batch_size": self.batch_size,
                "world_size": self.sampler.world_size}

    def load_state_dict(self, state: dict) -> None:
        if not state.get("batches"):
            return
        if (state["world_size"], state["batch_size"]) != (self.sampler.world_size, self.batch_size):
            raise RsgeeError(f"the last checkpoint was written mid-epoch on {state['world_size']} device(s) with batch "
                             f"size {state['batch_size']}; resume it with the same --devices, --num-nodes and "
                             "--batch-size (an end-of-epoch checkpoint resumes on any number)")
        self.sampler.resume_at(state["epoch"], state["batches"] * self.batch_size)


class EvenShards(Dataset):
    """This rank's share of a dataset for evaluation, padded to the longest share with uncounted repeats.

    Item ``j`` is ``dataset[rank + j·W]``; past the end it repeats the dataset's first item with
    ``counted = False``. Every dataset item is counted on exactly one rank.
    """

    def __init__(self, dataset: Dataset, rank: int = 0, world_size: int = 1):
        self.dataset, self.rank, self.world_size = dataset, rank, world_size
        self.indices = list(range(rank, len(dataset), world_size))
        self.length = -(-len(dataset) // world_size)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, j: int) -> dict:
        counted = j < len(self.indices)
        sample = dict(self.dataset[self.indices[j] if counted else 0])
        sample["counted"] = counted
        return sample
