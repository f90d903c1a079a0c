"""Batches bounded by a token budget (``max_tokens``): the sampler's guarantees
(within budget, short examples still fill a batch, every example once per
epoch, data-parallel shards of equal size and count, exact mid-epoch resume)
and the protein DataModule's option."""

from __future__ import annotations

import pytest
import torch

from peftlab.data import LengthGroupedBatchSampler
from peftlab_protein.synthetic import SyntheticMotifDataModule


def lengths(n: int, seed: int = 0, low: int = 5, high: int = 120) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n,), generator=g).tolist()


def padded(batch: list[int], lens: list[int], extra: int) -> int:
    return len(batch) * (max(lens[i] for i in batch) + extra)


@pytest.mark.parametrize("n,batch,budget,extra", [(97, 8, 300, 2), (40, 4, 1000, 0), (60, 16, 130, 2)])
def test_single_process_batches_stay_within_the_budget(n, batch, budget, extra):
    lens = lengths(n)
    sampler = LengthGroupedBatchSampler(lens, batch, seed=3, window_batches=2, max_tokens=budget, extra_tokens=extra)
    for epoch in range(3):
        batches = sampler.batches(epoch)
        assert len(batches) == len(sampler)  # the same count every epoch (Lightning counts once)
        assert sorted(i for b in batches for i in b) == list(range(n))  # each example once
        for b in batches:
            assert len(b) <= batch
            assert padded(b, lens, extra) <= budget or len(b) == 1  # only a lone over-budget example exceeds
    assert sampler.batches(0) != sampler.batches(1)  # the order changes every epoch


def test_short_sequences_still_fill_batch_size_and_long_ones_come_alone():
    lens = [10] * 40 + [500, 600]
    sampler = LengthGroupedBatchSampler(lens, 8, seed=0, max_tokens=200, extra_tokens=2)
    batches = sampler.batches(0)
    short = [b for b in batches if max(lens[i] for i in b) == 10]
    assert [len(b) for b in short] == [8] * 5  # 8 x 12 tokens fit 200: the batch size binds
    assert sorted(b for b in batches if len(b) == 1) == [[40], [41]]  # over the budget: alone
    assert len(batches) == 7


def test_no_budget_keeps_the_previous_order():
    lens = lengths(50)
    plain = LengthGroupedBatchSampler(lens, 4, seed=3, window_batches=2)
    assert plain.max_tokens is None
    assert plain.batches(1) == LengthGroupedBatchSampler(lens, 4, seed=3, window_batches=2, max_tokens=None).batches(1)
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        LengthGroupedBatchSampler(lens, 4, max_tokens=0)
    with pytest.raises(ValueError, match="drop_last does not apply with max_tokens"):
        LengthGroupedBatchSampler(lens, 4, max_tokens=100, drop_last=True)


@pytest.mark.parametrize("n,batch,world,budget", [(97, 8, 2, 300), (61, 4, 3, 250), (23, 8, 4, 130), (5, 2, 4, 64)])
def test_data_parallel_shards_keep_their_guarantees(n, batch, world, budget):
    lens = lengths(n, seed=1)
    ranks = [LengthGroupedBatchSampler(lens, batch, seed=3, window_batches=2, num_replicas=world, rank=r,
                                       max_tokens=budget, extra_tokens=2) for r in range(world)]
    glob = ranks[0].global_batches(0)
    for epoch in range(3):
        shards = [s.batches(epoch) for s in ranks]
        # every rank takes every optimiser step, the same count every epoch, and len() says how many
        assert all(len(s) == len(r) == len(glob) for s, r in zip(shards, ranks))
        global_batches = ranks[0].global_batches(epoch)
        assert sorted(i for b in global_batches for i in b) == list(range(n))  # each example once per epoch
        short = [b for b in global_batches if len(b) % world]
        assert len(short) <= 1  # only the epoch's last batch can be cut short
        for k, global_batch in enumerate(global_batches):
            joined = [i for s in shards for i in s[k]]
            for s in shards:
                assert len(s[k]) <= batch and (padded(s[k], lens, 2) <= budget or len(s[k]) == 1)
            if len(global_batch) % world == 0:  # equal slices, in order, each example once
                assert joined == global_batch
                assert len({len(s[k]) for s in shards}) == 1
            else:  # the last, short batch: the ones left over repeat an example
                assert set(joined) == set(global_batch)


@pytest.mark.parametrize("n,batch,world", [(37, 4, 2), (9, 4, 2), (3, 2, 3), (50, 8, 3)])
def test_evaluation_shards_count_every_example_once(n, batch, world):
    lens = lengths(n, seed=2)
    ranks = [LengthGroupedBatchSampler(lens, batch, shuffle=False, pad_shards=False, num_replicas=world, rank=r,
                                       max_tokens=200, extra_tokens=2) for r in range(world)]
    seen = sorted(i for s in ranks for b in s.batches(0) for i in b)
    assert seen == list(range(n))
    assert [len(s) for s in ranks] == [len(s.batches(0)) for s in ranks]
    assert max(len(s) for s in ranks) - min(len(s) for s in ranks) <= 1


def test_resume_mid_epoch_is_exact_with_a_budget():
    lens = lengths(70, seed=4)
    make = lambda: LengthGroupedBatchSampler(lens, 6, seed=3, window_batches=2, max_tokens=250,  # noqa: E731
                                             extra_tokens=2, num_replicas=2, rank=1)
    straight = make()
    epoch0, epoch1 = list(straight), list(straight)
    sampler = make()
    it = iter(sampler)
    taken = [next(it) for _ in range(4)]
    assert taken == epoch0[:4] and sampler.state_dict() == {"epoch": 0, "batches_done": 4}
    resumed = make()
    resumed.load_state_dict(sampler.state_dict())
    assert list(resumed) == epoch0[4:] and list(resumed) == epoch1
    done = make()
    done.load_state_dict({"epoch": 0, "batches_done": len(epoch0)})
    assert list(done) == epoch1


def test_protein_data_module_batches_stay_within_the_budget():
    dm = SyntheticMotifDataModule(num_sequences=120, min_length=20, max_length_residues=150, batch_size=16,
                                  max_tokens=800, seed=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.batch_sampler.max_tokens == 800 and loader.batch_sampler.extra_tokens == 2
    batches = list(loader)
    assert len(batches) == len(loader)
    assert sum(len(b["ids"]) for b in batches) == len(dm.splits["train"])
    assert all(b["tokens"].numel() <= 800 for b in batches)  # [B, longest + BOS + EOS]
    assert max(len(b["ids"]) for b in batches) == 16  # short sequences fill the batch size
    assert min(len(b["ids"]) for b in batches[:-1]) < 16  # long ones do not
    val = list(dm.val_dataloader())
    assert all(b["tokens"].numel() <= 800 for b in val)
    with pytest.raises(ValueError, match="needs group_by_length"):
        SyntheticMotifDataModule(num_sequences=20, max_tokens=400, group_by_length=False)


def test_only_the_epochs_last_batch_is_smaller_than_the_budget_allows():
    # the budget binds at 3 x 52 tokens; windows hold 16 examples: a window's unfinished batch moves on
    sampler = LengthGroupedBatchSampler([50] * 100, 8, seed=0, window_batches=2, max_tokens=160, extra_tokens=2)
    sizes = sorted(len(b) for b in sampler.batches(0))
    assert sizes == [1] + [3] * 33
