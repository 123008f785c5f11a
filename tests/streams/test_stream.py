"""The stream object (docs/streams.md) on a small subset of the embedded set with cheap corruptions."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import tta_streams
from tta_streams._seeds import derive_seed
from tta_streams.corruptions import corrupt

N = 200


def small(tmp_path, **kwargs):
    options = dict(corruptions=["brightness", "contrast"], n_examples=N, batch_size=64, cache_dir=tmp_path)
    options.update(kwargs)
    return tta_streams.Stream("fmnist", **options)


def as_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().to(torch.uint8)


def rows(images: torch.Tensor, labels) -> list:
    """Images with their labels as a sorted list: a multiset comparison that ignores order."""
    return sorted(zip(map(bytes, images.reshape(len(images), -1).numpy()), np.asarray(labels).tolist()))


def test_batches_have_the_documented_types_and_shapes(tmp_path):
    stream = small(tmp_path, setting="continual")
    batches = list(stream)
    assert len(batches) == len(stream) == 2 * 4  # ceil(200 / 64) per domain; batches never straddle
    assert [len(b.y) for b in batches] == [64, 64, 64, 8] * 2  # last short batch kept
    for b in batches:
        assert b.x.dtype == torch.float32 and b.x.shape[1:] == (1, 28, 28)
        assert 0 <= b.x.min() and b.x.max() <= 1
        assert b.y.dtype == torch.int64 and len(b.domain) == len(b.y)
    assert {d for b in batches[:4] for d in b.domain} == {("brightness", 5)}


def test_each_domain_holds_exactly_the_corrupted_source_images_with_their_labels(tmp_path):
    clean = tta_streams.fashion_mnist().head(N)
    stream = small(tmp_path, corruptions=["brightness", "gaussian_noise"], severities=[2], seed=7, batch_size=50)
    for domain, batches in stream.episodes():
        batches = list(batches)
        corruption, severity = domain
        expected = corrupt(clean.images, corruption, severity, seed=derive_seed("corrupt", 7, corruption, severity))
        got = torch.cat([as_uint8(b.x) for b in batches])
        assert rows(got, torch.cat([b.y for b in batches])) == rows(expected, clean.labels)


def test_clean_stream_returns_the_source_images(tmp_path):
    clean = tta_streams.fashion_mnist().head(N)
    (batches,) = [list(b) for _, b in small(tmp_path, corruptions=None, batch_size=1).episodes()]
    assert len(batches) == N and {b.domain[0] for b in batches} == {("none", 0)}
    got = torch.cat([as_uint8(b.x) for b in batches])
    assert rows(got, torch.cat([b.y for b in batches])) == rows(clean.images, clean.labels)


def test_batches_do_not_depend_on_batch_size(tmp_path):
    a = list(small(tmp_path, order="dirichlet:0.1", setting="continual", batch_size=7))
    b = list(small(tmp_path, order="dirichlet:0.1", setting="continual", batch_size=64))
    assert torch.equal(torch.cat([x.x for x in a]), torch.cat([x.x for x in b]))
    assert torch.equal(torch.cat([x.y for x in a]), torch.cat([x.y for x in b]))


def test_each_domain_has_its_own_label_order_and_seeds_change_it(tmp_path):
    stream = small(tmp_path, setting="continual", batch_size=N)
    first, second = list(stream)
    assert not torch.equal(first.y, second.y)  # not the same label order reused across domains
    other_seed = list(small(tmp_path, setting="continual", batch_size=N, seed=1))
    assert not torch.equal(first.y, other_seed[0].y)


def test_continual_is_the_concatenation_of_the_single_episodes(tmp_path):
    single = [b for _, batches in small(tmp_path).episodes() for b in batches]
    continual = list(small(tmp_path, setting="continual"))
    assert all(torch.equal(a.x, b.x) and torch.equal(a.y, b.y) for a, b in zip(single, continual, strict=True))
    assert (
        len(list(small(tmp_path).episodes())) == 2 and len(list(small(tmp_path, setting="continual").episodes())) == 1
    )


def test_label_stats_measure_how_non_iid_the_stream_is(tmp_path):
    iid = small(tmp_path, order="iid").label_stats()
    sorted_ = small(tmp_path, order="sorted").label_stats()
    assert iid.n_batches == sorted_.n_batches == 8
    # sorted: a batch holds 1 + (class boundaries inside it) labels; 9 boundaries per domain, 2 domains
    assert sorted_.mean_distinct_labels <= (8 + 2 * 9) / 8
    assert iid.mean_distinct_labels > 8  # 64 draws from 10 balanced classes almost always see all
    assert iid.mean_tv_distance < sorted_.mean_tv_distance


def test_corrupted_domains_are_cached_on_disk_and_reused(tmp_path, monkeypatch):
    stream = small(tmp_path, setting="continual")
    iterator = iter(stream)
    next(iterator)  # domains are produced lazily: one domain at a time
    assert len(list((tmp_path / "domains").glob("*.npy"))) == 1
    first = [next(iterator), *iterator]
    assert len(list((tmp_path / "domains").glob("*.npy"))) == 2
    assert not list((tmp_path / "domains").glob(".*"))  # no temporary files left
    real_corrupt = corrupt

    def corrupt_nothing(images, *args, **kwargs):
        if len(images):  # the stream validates its arguments on an empty batch; that is allowed
            pytest.fail("cache not used")
        return real_corrupt(images, *args, **kwargs)

    monkeypatch.setattr("tta_streams.corruptions.corrupt", corrupt_nothing)
    again = list(small(tmp_path, setting="continual"))[1:]
    assert all(torch.equal(a.x, b.x) for a, b in zip(first, again, strict=True))
    # a different seed, severity or table is a different domain: a cache miss
    with pytest.raises(pytest.fail.Exception, match="cache not used"):
        list(small(tmp_path, setting="continual", seed=1))


SCRIPT = """
import hashlib, sys, tta_streams
stream = tta_streams.Stream("fmnist", corruptions=["gaussian_noise", "contrast"], severities=[3], order="dirichlet:0.1",
                        setting="mixed", n_examples=120, batch_size=32, seed=5, cache_dir=sys.argv[1])
digest = hashlib.sha256()
for b in stream:
    digest.update(b.x.numpy().tobytes()); digest.update(b.y.numpy().tobytes()); digest.update(repr(b.domain).encode())
print(digest.hexdigest())
"""


@pytest.mark.multiprocess
def test_same_arguments_give_the_same_batches_in_new_processes(tmp_path):
    runs = [  # two fresh processes side by side, each corrupting into its own empty cache
        subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path / f"cache{i}")], stdout=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    digests = [run.communicate(timeout=300)[0].strip() for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert digests[0] == digests[1] and len(digests[0]) == 64


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(corruptions=["fog", "mist"]), ValueError, "unknown corruption 'mist'"),
        (dict(corruptions=["fog", "fog"]), ValueError, "listed twice"),
        (dict(order="random"), ValueError, "unknown order 'random'"),
        (dict(setting="online"), ValueError, "unknown setting 'online'"),
        (dict(severities=0), ValueError, "severity must be an integer in 1..5"),
        (dict(severities=[3, 6]), ValueError, "severity must be an integer in 1..5"),
        (dict(severities=2.0), ValueError, "severities must be an integer in 1..5 or a list of them, got 2.0"),
        (dict(severities="5"), ValueError, "severities must be an integer in 1..5 or a list of them, got '5'"),
        (dict(severities=[2.0]), ValueError, "severity must be an integer in 1..5, got 2.0"),
        (dict(order="dirichlet:0"), ValueError, "positive"),
        (dict(order="dirichlet:-1"), ValueError, "positive"),
        (dict(batch_size=0), ValueError, "batch_size must be an integer >= 1"),
        (dict(n_examples=10_001), ValueError, "n_examples=10001 is out of range: the source holds 10000"),
        (dict(n_examples=0), ValueError, "n_examples must be a positive integer"),
        (dict(table="tiny"), ValueError, "unknown table 'tiny'"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, kwargs, error, message):
    options = dict(corruptions=["fog"], cache_dir=tmp_path)
    options.update(kwargs)
    with pytest.raises(error, match=message):
        tta_streams.Stream("fmnist", **options)


def test_bad_sources_are_clear_errors():
    with pytest.raises(ValueError, match="unknown source 'cifar10'"):
        tta_streams.Stream("cifar10")
    with pytest.raises(TypeError, match="source must be"):
        tta_streams.Stream(np.zeros((3, 1, 28, 28)))
    with pytest.raises(ValueError, match=r"dirichlet:0.1: 50 samples cannot fill 10 chunks"):
        tta_streams.Stream("fmnist", corruptions=["fog"], n_examples=50, order="dirichlet:0.1")


def test_batch_unpacks_as_x_y_domain_and_keeps_its_fields(tmp_path):
    stream = small(tmp_path, setting="continual")
    batches = list(stream)
    unpacked = [(x, y, domain) for x, y, domain in stream]
    assert len(unpacked) == len(batches)
    for (x, y, domain), b in zip(unpacked, batches, strict=True):
        assert torch.equal(x, b.x) and torch.equal(y, b.y) and domain == b.domain
    x, y, _ = batches[0]
    assert x is batches[0].x and y is batches[0].y
    with pytest.raises(ValueError, match=r"unpacks into three values, x, y and domain, not 2.*for x, y, _ in stream"):
        x, y = batches[0]  # the 2-tuple form is not offered: write `x, y, _ = batch`
    with pytest.raises(ValueError, match="unpacks into three values, x, y and domain, not 2"):
        for _x, _y in stream:
            pass
    with pytest.raises(ValueError, match="unpacks into three values, x, y and domain, not 4"):
        x, y, domain, _extra = batches[0]
    x, *rest = batches[0]  # every other way of iterating is untouched
    assert rest[1] == batches[0].domain and len(list(batches[0])) == 3


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_dataloader_over_the_stream_yields_the_same_batches(tmp_path, num_workers):
    stream = small(tmp_path, setting="mixed", order="dirichlet:0.1", batch_size=48)
    expected = list(stream)
    assert isinstance(stream, torch.utils.data.IterableDataset)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers)
    assert len(loader) == len(stream)
    got = list(loader)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert isinstance(a, tta_streams.Batch)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        assert a.domain == b.domain and all(type(d) is tuple for d in a.domain)  # not collated into lists


def test_a_dataloader_with_several_workers_is_refused_naming_num_workers(tmp_path):
    loader = torch.utils.data.DataLoader(small(tmp_path, setting="continual"), batch_size=None, num_workers=2)
    with pytest.raises(RuntimeError, match=r"num_workers=2.*replay the whole stream.*num_workers=0 or 1"):
        next(iter(loader))


def test_flat_iteration_of_a_multi_domain_single_stream_warns_once(tmp_path):
    stream = small(tmp_path)  # setting "single", two domains
    with pytest.warns(UserWarning, match=r"without a reset") as record:
        list(stream)
        list(stream)
    assert len(record) == 1
    message = str(record[0].message)
    assert "stream.episodes()" in message and "tta.reset(model)" in message
    assert record[0].filename == __file__  # attributed to the caller's loop, not to the library


def test_episodes_and_streams_without_resets_to_miss_do_not_warn(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _, batches in small(tmp_path).episodes():
            list(batches)
        list(small(tmp_path, setting="continual"))
        list(small(tmp_path, corruptions=["brightness"]))  # single, one domain: nothing to reset between
