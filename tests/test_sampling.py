"""sampling.draw: the engine's sampler, checked against the distribution it is given."""

import pytest
import torch

from parley.sampling import draw


def _probs(vocab: int, shares: dict[int, float]) -> torch.Tensor:
    probs = torch.zeros(vocab)
    for i, p in shares.items():
        probs[i] = p
    return probs


def test_draws_follow_the_probabilities_and_never_pick_a_zero():
    # A vocabulary of SmolLM2's size, with the mass on a few tokens, the very last among them.
    shares = {0: 0.1, 7: 0.25, 30_000: 0.05, 49_151: 0.6}
    probs = _probs(49_152, shares)
    generator = torch.Generator().manual_seed(0)
    n = 20_000
    counts: dict[int, int] = {}
    for _ in range(n):
        i = draw(probs, generator)
        counts[i] = counts.get(i, 0) + 1
    assert set(counts) == set(shares)
    for i, p in shares.items():  # each share within 5 standard deviations of a binomial count
        assert abs(counts[i] - n * p) < 5 * (n * p * (1 - p)) ** 0.5, (i, counts[i], n * p)


def test_a_seed_repeats_its_draws_and_another_seed_does_not():
    probs = torch.softmax(torch.randn(1000, generator=torch.Generator().manual_seed(1)), 0)

    def draws(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return [draw(probs, generator) for _ in range(50)]

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)


@pytest.mark.parametrize("probs", [torch.zeros(10), torch.full((10,), float("nan"))])
def test_nothing_to_draw_from_is_an_error(probs):
    with pytest.raises(ValueError, match="no token"):
        draw(probs, torch.Generator().manual_seed(0))
