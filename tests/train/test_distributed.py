"""Rank shards: every tile once per epoch over all ranks, exact mixes, evaluation scored once, mid-epoch resume."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from rsgee.errors import RsgeeError
from rsgee.train.distributed import EvenShards, ResumableLoader, ShuffledSampler, launched_rank
from rsgee.train.segmentation import MixSampler, epoch_counts
from rsgee.train.trainer import resolve_launch


@pytest.mark.parametrize("n, world", [(5, 2), (9, 3), (4, 4), (7, 1)])
def test_shuffled_shards_cover_every_item_each_epoch(n, world):
    for epoch in range(3):
        shards = []
        for rank in range(world):
            sampler = ShuffledSampler(n, seed=1, rank=rank, world_size=world)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        assert len({len(s) for s in shards}) == 1 and len(shards[0]) == -(-n // world)  # equal batches on every rank
        items = Counter(i for shard in shards for i, e in shard)
        assert set(items) == set(range(n)) and sum(items.values()) - n == (-n) % world  # padding repeats at most W−1
        assert {e for shard in shards for _, e in shard} == {epoch}
    first = [i for i, _ in ShuffledSampler(n, seed=1)]
    second = ShuffledSampler(n, seed=1)
    second.set_epoch(1)
    assert sorted(first) == list(range(n)) and (n < 3 or [i for i, _ in second] != first)


@pytest.mark.parametrize("mix, world", [((1, 1), 2), ((2, 1), 2), ((1, 1), 3), ((1, 2), 4)])
def test_the_mix_is_exact_over_all_ranks_together(mix, world):
    n_real = n_gen = 11
    shards = [list(MixSampler(n_real, n_gen, mix, seed=0, rank=r, world_size=world)) for r in range(world)]
    everything = [i for shard in shards for i, _ in shard]
    real, generated = sum(i < n_real for i in everything), sum(i >= n_real for i in everything)
    assert real * mix[1] == generated * mix[0] and len(set(everything)) == len(everything)  # exact, no repeats
    assert len({len(s) for s in shards}) == 1
    assert (real, generated) == epoch_counts(mix, n_real, n_gen, world)


def test_epoch_counts_lower_k_until_the_epoch_splits_evenly():
    assert epoch_counts((1, 1), 11, 11, 1) == (11, 11)
    assert epoch_counts((1, 1), 11, 11, 4) == (10, 10)  # 20 tiles on 4 ranks; 22 would not split
    assert epoch_counts((2, 1), 10, 10, 2) == (8, 4)
    assert epoch_counts((1, 0), 11, 0, 4) == (11, 0)  # one kind only: padded by the sampler, nothing dropped
    real_only = [list(MixSampler(11, 0, (1, 0), rank=r, world_size=4)) for r in range(4)]
    assert {i for shard in real_only for i, _ in shard} == set(range(11)) and {len(s) for s in real_only} == {3}
    with pytest.raises(RsgeeError, match="on 8 device"):
        epoch_counts((1, 1), 1, 1, 8)


def test_even_shards_score_every_item_exactly_once():
    data = [{"value": torch.tensor(i)} for i in range(7)]
    shards = [EvenShards(data, rank, 3) for rank in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    counted = Counter(int(s[j]["value"]) for s in shards for j in range(len(s)) if s[j]["counted"])
    assert counted == Counter(range(7))
    assert [s[j]["counted"] for s in shards for j in range(3)].count(False) == 2


class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, key):
        index, epoch = key
        return torch.tensor([index, epoch])


def test_a_loader_resumed_mid_epoch_serves_exactly_the_remaining_batches():
    def loader():
        return ResumableLoader(Items(), ShuffledSampler(10, seed=4), batch_size=2)

    full = loader()
    full.sampler.set_epoch(3)
    everything = [b.tolist() for b in full]
    first = loader()
    first.sampler.set_epoch(3)
    served = []
    for batch in first:
        served.append(batch.tolist())
        if len(served) == 2:
            state = first.state_dict()
            break
    assert state == {"epoch": 3, "batches": 2, "batch_size": 2, "world_size": 1}
    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(3)
    rest = [b.tolist() for b in resumed]
    assert served + rest == everything
    assert resumed.state_dict()["batches"] == 5  # a checkpoint after the resume still counts the whole epoch
    resumed.sampler.set_epoch(4)
    assert len(list(resumed)) == 5  # the skip applied to its own epoch only


def test_an_end_of_epoch_state_does_not_skip_the_next_epoch():
    loader = ResumableLoader(Items(), ShuffledSampler(10, seed=4), batch_size=5)
    list(loader)
    fresh = ResumableLoader(Items(), ShuffledSampler(10, seed=4), batch_size=5)
    fresh.load_state_dict(loader.state_dict())
    fresh.sampler.set_epoch(1)
    assert len(list(fresh)) == 2


def test_a_mid_epoch_state_from_another_world_size_is_refused():
    other = ResumableLoader(Items(), ShuffledSampler(10, seed=4, rank=0, world_size=2), batch_size=2)
    with pytest.raises(RsgeeError, match="same --devices"):
        other.load_state_dict({"epoch": 0, "batches": 1, "batch_size": 2, "world_size": 1})


def test_rank_from_the_launchers_environment(monkeypatch):
    for variable in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(variable, raising=False)
    assert launched_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launched_rank() == 1
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")
    assert launched_rank() != 0  # the first process of the second node is not the main one
    monkeypatch.setenv("RANK", "0")
    assert launched_rank() == 0


def test_launch_follows_torchrun_and_refuses_contradictions(monkeypatch):
    assert resolve_launch("cpu", "auto", "auto").world_size == 1
    assert resolve_launch("cpu", 2, 1).devices == 2
    monkeypatch.setattr(torch.distributed, "is_torchelastic_launched", lambda: True)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    launch = resolve_launch("cpu", "auto", "auto")
    assert (launch.devices, launch.num_nodes, launch.external) == (2, 2, "torchrun")
    with pytest.raises(RsgeeError, match="torchrun started 2 process"):
        resolve_launch("cpu", 4, "auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_a_gpu_without_one_is_one_line():
    with pytest.raises(RsgeeError, match="no CUDA device is visible"):
        resolve_launch("gpu", "auto", "auto")


def test_launch_follows_srun(monkeypatch):
    for key, value in dict(SLURM_NTASKS="16", SLURM_NTASKS_PER_NODE="8(x2)", SLURM_NNODES="2",
                           SLURM_JOB_NAME="train").items():
        monkeypatch.setenv(key, value)
    launch = resolve_launch("cpu", "auto", "auto")
    assert (launch.devices, launch.num_nodes, launch.external) == (8, 2, "slurm")
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert launched_rank() == 3
    with pytest.raises(RsgeeError, match="slurm started 8 process"):
        resolve_launch("cpu", "auto", 1)
