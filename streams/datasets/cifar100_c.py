"""CIFAR-100-C (Hendrycks & Dietterich): precomputed, read through robustbench's loader (spec S1)."""

from __future__ import annotations

from pathlib import Path

from streams.corruption_sets import PrecomputedSource, cifar_c_source
from streams.datasets.catalogue import DatasetInfo, register_dataset

CLASSES = tuple("""apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear
pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark
shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone
television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split())


def _load(data_dir: Path | None) -> PrecomputedSource:
    return cifar_c_source("cifar100-c", data_dir)


INFO = register_dataset(DatasetInfo(
    name="cifar100-c",
    aliases=("cifar100",),
    base="cifar100",
    input_shape=(3, 32, 32),
    num_classes=100,
    classes=CLASSES,
    load=_load,
    table="cifar",
    folder="CIFAR-100-C",
    url="https://zenodo.org/records/3555552",
))
