"""Seeds are integers everywhere in the public streams API (docs/streams.md: reproducible from ``seed``)."""

import numpy as np
import pytest
import torch

import tta_streams
from tta_streams._seeds import check_seed
from tta_streams.orderings import dirichlet_chunks, dirichlet_order, iid_order, order_indices, slots_order, sorted_order

NOT_INTEGERS = [1.5, 1.0, True, "1", np.float64(1.0), np.float32(2.0), None, torch.tensor(1)]


@pytest.mark.parametrize("seed", NOT_INTEGERS, ids=repr)
def test_corrupt_refuses_a_seed_that_is_not_an_integer(seed):
    images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(TypeError, match="seed must be an integer"):
        tta_streams.corrupt(images, "gaussian_noise", 3, seed=seed)


@pytest.mark.parametrize("seed", NOT_INTEGERS, ids=repr)
def test_stream_refuses_a_seed_that_is_not_an_integer(tmp_path, seed):
    with pytest.raises(TypeError, match="seed must be an integer"):
        tta_streams.Stream("fmnist", corruptions=["fog"], n_examples=20, seed=seed, cache_dir=tmp_path)


ORDER_CALLS = {
    "iid_order": lambda labels, rng: iid_order(labels, rng),
    "sorted_order": lambda labels, rng: sorted_order(labels, rng),
    "dirichlet_order": lambda labels, rng: dirichlet_order(labels, 1.0, rng, min_per_chunk=1),
    "dirichlet_chunks": lambda labels, rng: np.concatenate(  # the chunks' pieces, flattened in order
        [piece for chunk in dirichlet_chunks(labels, 1.0, rng, min_per_chunk=1) for piece in chunk]
    ),
    "slots_order": lambda labels, rng: slots_order(labels, 1.0, rng),
    "order_indices": lambda labels, rng: order_indices(labels, "iid", rng),
}


@pytest.mark.parametrize("call", ORDER_CALLS, ids=str)
@pytest.mark.parametrize("seed", NOT_INTEGERS, ids=repr)
def test_orderings_refuse_a_seed_that_is_not_an_integer(call, seed):
    with pytest.raises(TypeError, match=r"rng must be a numpy.random.Generator or an integer seed"):
        ORDER_CALLS[call](np.repeat(np.arange(3), 4), seed)


@pytest.mark.parametrize("call", ORDER_CALLS, ids=str)
def test_orderings_take_an_integer_seed_as_a_fresh_generator(call):
    labels = np.repeat(np.arange(3), 4)
    for seed in (7, np.int64(7), np.uint32(7)):
        got = ORDER_CALLS[call](labels, seed)
        expected = ORDER_CALLS[call](labels, np.random.default_rng(7))
        assert np.array_equal(got, expected)


def test_numpy_integer_seeds_equal_python_ints(tmp_path):
    images = torch.arange(2 * 64, dtype=torch.uint8).reshape(2, 1, 8, 8)
    expected = tta_streams.corrupt(images, "gaussian_noise", 3, seed=5)
    for seed in (np.int64(5), np.uint8(5), np.int32(5)):
        assert torch.equal(tta_streams.corrupt(images, "gaussian_noise", 3, seed=seed), expected)
    a = tta_streams.Stream("fmnist", corruptions=None, n_examples=20, seed=np.int64(3), cache_dir=tmp_path)
    b = tta_streams.Stream("fmnist", corruptions=None, n_examples=20, seed=3, cache_dir=tmp_path)
    assert a.seed == 3 and type(a.seed) is int
    assert all(torch.equal(x.y, y.y) for x, y in zip(a, b, strict=True))


def test_seeds_out_of_range_are_refused_so_distinct_seeds_stay_distinct():
    # the engine keys its randomness by the seed's low 64 bits: -1 and 2**64 - 1 would coincide
    images = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    for seed in (-1, 2**64):
        with pytest.raises(ValueError, match=r"seed must lie in 0..2\*\*64-1"):
            tta_streams.corrupt(images, "gaussian_noise", 3, seed=seed)
    assert check_seed(2**64 - 1) == 2**64 - 1 and check_seed(np.uint64(2**64 - 1)) == 2**64 - 1


def test_the_error_names_the_argument():
    with pytest.raises(TypeError, match=r"^rng must be .* got float 1\.5"):
        iid_order(np.arange(3), 1.5)
    with pytest.raises(TypeError, match=r"^seed must be an integer .* got float 1\.5"):
        check_seed(1.5)
