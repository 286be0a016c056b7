"""The training data order: a function of the seed and the epoch, nothing else.

transformers' length-grouped train sampler shuffles with torch's global RNG (only its eval sampler
was given a seeded generator, huggingface/transformers#48025). Every evaluation's DataLoader draws
from that RNG too, so changing `train.eval_steps` changed which examples the second epoch saw, and
with them the trained model (two default runs, evaluating every 200 and every 400 steps, agreed to
every logged digit until the first epoch ended, then parted: test F1 0.960 vs 0.951). Here each
epoch's shuffle comes from a generator seeded with `seed + epoch`; the Trainer calls
`set_epoch` at every epoch start, a resumed one included.
"""

from __future__ import annotations

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler
from trl import SFTTrainer


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)


class SeededOrderSFTTrainer(SFTTrainer):
    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is not LengthGroupedSampler:  # packing's random sampler is seeded by accelerate already
            return sampler
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return EpochSeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, seed)
