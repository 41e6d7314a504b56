"""Seeded random generators: `lt.manual_seed`, `lt.Generator`.

A generator's whole run-time state is a numpy int32[4] array (seed, and the
number of draws made so far, each as two 32-bit words).  Staged code that
draws from it (dropout) captures the array like a parameter, and every
compiled draw builds its random stream from (seed, draw number) and advances
the draw number in place (cpp_runtime/nn.h `next_rng`).  So the state can be
read, saved in a checkpoint and restored, and a run resumes exactly.

Initialisers (`lt.nn.init`) draw in Python, from a numpy generator that
`manual_seed` reseeds too.
"""
from __future__ import annotations

import numpy as np

DEFAULT_SEED = 67280421310721  # PyTorch's default seed


class Generator:
    """A seeded random stream (torch.Generator's role): pass it to lt.dropout
    (`generator=`); its state is an int32[4] array saved in checkpoints."""

    lantern_name = "rng"

    def __init__(self, seed: int = DEFAULT_SEED):
        self.state = np.zeros(4, dtype=np.int32)
        self.manual_seed(seed)

    def manual_seed(self, seed: int) -> "Generator":
        """Reseed in place: compiled code that captured this generator sees it."""
        seed = int(seed) & (2**64 - 1)
        words = np.array([seed & 0xFFFFFFFF, seed >> 32, 0, 0], dtype=np.uint32)
        self.state[:] = words.view(np.int32)
        self.numpy = np.random.default_rng(seed)
        return self

    def initial_seed(self) -> int:
        lo, hi = (int(w) for w in self.state[:2].view(np.uint32))
        return lo | hi << 32

    @property
    def draws(self) -> int:
        """How many masks compiled code has drawn since the last seeding."""
        lo, hi = (int(w) for w in self.state[2:].view(np.uint32))
        return lo | hi << 32

    def get_state(self) -> np.ndarray:
        return self.state.copy()

    def set_state(self, state) -> None:
        state = np.asarray(state)
        if state.shape != (4,):
            raise ValueError(f"a generator state is an int32[4] array, got shape {state.shape}")
        self.state[:] = state.astype(np.int32)

    def lantern_array(self) -> np.ndarray:
        return self.state

    def __repr__(self) -> str:
        return f"Generator(seed={self.initial_seed()}, draws={self.draws})"


default_generator = Generator()


def manual_seed(seed: int) -> Generator:
    """Seed the default generator (dropout masks and `lt.nn.init`), as torch.manual_seed."""
    return default_generator.manual_seed(seed)
