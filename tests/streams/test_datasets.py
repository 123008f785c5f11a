"""The dataset catalogue: the registered test sets, spellings, errors, and a dataset added by one module."""

from __future__ import annotations

import pytest
import torch

import tta_streams
from tta_streams.corruptions import default_table
from tta_streams.datasets import DatasetInfo, get_dataset, list_datasets, register_dataset


def test_the_benchmark_datasets_are_registered_in_order():
    assert list_datasets()[:4] == ["fmnist-c", "cifar10-c", "cifar100-c", "imagenet-c"]


@pytest.mark.parametrize("name", ["fmnist-c", "cifar10-c", "cifar100-c", "imagenet-c"])
def test_each_entry_is_consistent(name):
    info = get_dataset(name)
    assert info.table == default_table(*info.input_shape[1:])
    assert not info.classes or len(info.classes) == info.num_classes
    assert info.needs_files == (name != "fmnist-c")


@pytest.mark.parametrize(
    ("spelling", "name", "base"),
    [
        ("fmnist", "fmnist-c", "fmnist"),
        ("Fashion_MNIST", "fmnist-c", "fmnist"),
        ("CIFAR-10-C", "cifar10-c", "cifar10"),
        ("cifar100", "cifar100-c", "cifar100"),
        ("imagenet", "imagenet-c", "imagenet"),
    ],
)
def test_spellings_find_the_canonical_entry(spelling, name, base):
    assert get_dataset(spelling).name == name and get_dataset(spelling).base == base


def test_unknown_dataset_names_the_known_ones_and_the_nearest():
    with pytest.raises(
        ValueError,
        match=r"unknown dataset 'mnist-c' \(did you mean 'fmnist-c'\?\); choose from: "
        r"fmnist-c, cifar10-c, cifar100-c, imagenet-c",
    ):
        get_dataset("mnist-c")


def test_a_dataset_read_from_files_needs_a_data_dir_and_names_where_to_get_it():
    with pytest.raises(ValueError, match=r"cifar10-c is read from files: pass data_dir .*CIFAR-10-C/.*zenodo"):
        get_dataset("cifar10-c").source()


def test_the_fmnist_entry_serves_the_embedded_test_split():
    source, direct = get_dataset("fmnist-c").source(), tta_streams.fashion_mnist("test")
    assert torch.equal(source.images, direct.images) and source.classes == list(get_dataset("fmnist").classes)


def test_registration_refuses_a_taken_name_or_alias_and_an_entry_that_contradicts_itself():
    fmnist = get_dataset("fmnist-c")
    with pytest.raises(ValueError, match="the name 'FASHION-MNIST' is taken by dataset 'fmnist-c'"):
        register_dataset(
            DatasetInfo(
                name="other",
                aliases=("FASHION-MNIST",),
                base="x",
                input_shape=(1, 2, 2),
                num_classes=2,
                load=fmnist.load,
                table="cifar",
            )
        )
    with pytest.raises(ValueError, match="3 class names for 2 classes"):
        DatasetInfo(
            name="x",
            base="x",
            input_shape=(1, 2, 2),
            num_classes=2,
            classes=("a", "b", "c"),
            load=fmnist.load,
            table="cifar",
        )
    with pytest.raises(ValueError, match="needs the url"):
        DatasetInfo(
            name="x", base="x", input_shape=(1, 2, 2), num_classes=2, load=fmnist.load, table="cifar", folder="X"
        )


def test_a_dataset_registered_by_its_own_module_is_served_by_a_stream(toy_dataset, tmp_path):
    assert toy_dataset in tta_streams.list_datasets()
    stream = tta_streams.Stream(
        "toy", corruptions="fog,contrast", severities=2, setting="continual", batch_size=16, cache_dir=tmp_path
    )
    batches = list(stream)
    assert len(batches) == 6 and all(b.x.shape[1:] == (3, 8, 8) for b in batches)
    assert sorted(torch.cat([b.y for b in batches]).tolist()) == sorted((torch.arange(48) % 4).tolist() * 2)
    assert {d for b in batches for d in b.domain} == {("fog", 2), ("contrast", 2)}


def test_a_stream_names_only_datasets_that_need_no_files_and_says_how_to_read_the_others():
    with pytest.raises(
        ValueError,
        match=r"unknown source 'CIFAR-10-C': cifar10-c is read from files, so pass "
        r"tta_streams\.get_dataset\('cifar10-c'\)\.source\(data_dir\)",
    ):
        tta_streams.Stream("CIFAR-10-C")
    with pytest.raises(
        ValueError,
        match=r"unknown source 'mnist'; pass the name of a dataset that needs no files "
        r"\(fmnist-c\)",
    ):
        tta_streams.Stream("mnist")
