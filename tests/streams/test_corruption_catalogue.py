"""The corruption catalogue: one record per corruption, derived views, registration and its errors."""

from __future__ import annotations

import pytest
import torch

from tta_streams import corruptions
from tta_streams.corruptions import (
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    TABLES,
    Corruption,
    catalogue,
    corrupt,
    get_corruption,
)


def test_every_listed_corruption_has_one_record_with_five_severities_per_table():
    assert corruptions.list_corruptions() == list(CORRUPTIONS + EXTRA_CORRUPTIONS)
    for name in CORRUPTIONS + EXTRA_CORRUPTIONS:
        record = get_corruption(name)
        assert record.name == name and record.standard == (name in CORRUPTIONS)
        assert len(record.cifar) == len(record.imagenet) == 5


def test_tables_view_holds_each_records_rows():
    for table in ("cifar", "imagenet"):
        assert list(TABLES[table]) == list(CORRUPTIONS + EXTRA_CORRUPTIONS)
        for name, rows in TABLES[table].items():
            assert tuple(rows) == getattr(get_corruption(name), table)


def test_colour_only_corruptions_are_frost_spatter_and_saturate():
    colour_only = {n for n in CORRUPTIONS + EXTRA_CORRUPTIONS if get_corruption(n).colour_only}
    assert colour_only == {"frost", "spatter", "saturate"}


def test_params_are_a_tuple_of_the_severitys_row():
    assert get_corruption("gaussian_noise").params("cifar", 1) == (0.04,)
    assert get_corruption("frost").params("imagenet", 5) == (0.6, 0.75)
    assert get_corruption("frost").table_kwargs["cifar"] == {"texture_scale": 0.2}


def test_unknown_corruption_names_the_valid_ones_and_the_nearest():
    with pytest.raises(
        ValueError, match=r"unknown corruption 'fogg' \(did you mean 'fog'\?\); valid names: gaussian_noise"
    ):
        get_corruption("fogg")


def test_a_record_needs_five_severities_and_a_name_is_registered_once():
    with pytest.raises(ValueError, match="needs 5 severities"):
        Corruption("short", lambda x, rng, v: x * 255, cifar=[1, 2], imagenet=[1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="already registered"):
        catalogue.register_corruption(get_corruption("fog"))


def test_a_registered_corruption_is_served_by_corrupt(monkeypatch):
    monkeypatch.setattr(catalogue, "_CATALOGUE", dict(catalogue._CATALOGUE))
    catalogue.register_corruption(
        Corruption(
            "invert",
            lambda x, rng, scale: (1 - x) * scale,
            cifar=[255] * 5,
            imagenet=[255] * 5,
            standard=False,
        )
    )
    x = torch.arange(4, dtype=torch.uint8).reshape(1, 1, 2, 2)
    assert corrupt(x, "invert", 3, seed=0).flatten().tolist() == [255, 254, 253, 252]
    assert "invert" in corruptions.list_corruptions() and "invert" not in corruptions.list_corruptions(
        standard_only=True
    )
