"""The benchmark grid: validated arguments, their fingerprint and the ordered list of runs.

A benchmark command names lists (methods, policies, settings, orders, seeds, corruptions, severities);
the grid is their product. This module turns raw strings into a validated :class:`GridConfig`, expands it into
:class:`Run` objects in a fixed order, and names every result row it will produce (:func:`row_keys`), so
that the results store can tell what is finished.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import tta
import tta_streams
from tta_bench.models import CALLABLE_SPEC
from tta_streams.orderings import parse_order as streams_parse_order
from tta_streams.parsing import (
    CLEAN_NAME,
    parse_corruptions,
    parse_severity_list,
    split_list,
)
from tta_streams.settings import SETTINGS
from tta_streams.settings import parse_setting as streams_parse_setting

CLEAN = CLEAN_NAME
"""The corruption name of the clean test set (the domain label of clean images)."""

NO_METHOD = "none"
"""The default method: the policy alone (a row without a ``method`` key, written before methods, is one)."""

RowKey = tuple[str, str, str, str, int, str, int]
"""Identity of one result row: (method, policy, setting, order, seed, corruption, severity)."""

MODEL_PREFIXES: tuple[str, ...] = ("robustbench:", "torchvision:", "timm:")
TABLES: tuple[str, ...] = tta_streams.corruptions.TABLE_NAMES
"""Corruption parameter tables ``--table`` may name (default: the engine picks by image size)."""


@dataclasses.dataclass(frozen=True)
class GridConfig:
    """Everything that decides which numbers a benchmark produces (and nothing that does not).

    Where the data lives (``data_dir``, ``cache_dir``), the output folder and the device are not part of
    it: moving the data or resuming on another machine gives the same rows.
    """

    dataset: str
    model: str
    policies: tuple[str, ...]
    settings: tuple[str, ...]
    orders: tuple[str, ...]
    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    seeds: tuple[int, ...]
    batch_size: int
    n_examples: int | None
    options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    arch: str | None = None
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    table: str | None = None
    methods: tuple[str, ...] = (NO_METHOD,)
    images: str | None = None
    """The fingerprint (:func:`fingerprint_images`) of a user's :class:`tta_streams.ImageSet` streamed instead
    of the dataset's images; ``dataset`` then names what they stand in for (the model's kind of input)."""
    window: int | None = None
    """Frame by frame: every (method, policy) predicts each single image of the stream (``batch_size`` 1)
    through a :class:`tta.SlidingWindow` of this many frames; None feeds the batches as they are."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (lists instead of tuples), stored as the results folder's config.

        ``arch``, ``model_args``, ``table``, ``methods``, ``images`` and ``window`` appear only when set (``methods``
        when not just ``none``), so folders written before they existed keep the same identity and still
        resume.
        """
        extra: dict[str, Any] = {}
        if self.methods != (NO_METHOD,):
            extra["methods"] = list(self.methods)
        if self.arch is not None:
            extra["arch"] = self.arch
        if self.model_args:
            extra["model_args"] = dict(sorted(self.model_args.items()))
        if self.table is not None:
            extra["table"] = self.table
        if self.images is not None:
            extra["images"] = self.images
        if self.window is not None:
            extra["window"] = self.window
        return {
            "dataset": self.dataset,
            "model": self.model,
            "policies": list(self.policies),
            "settings": list(self.settings),
            "orders": list(self.orders),
            "corruptions": list(self.corruptions),
            "severities": list(self.severities),
            "seeds": list(self.seeds),
            "batch_size": self.batch_size,
            "n_examples": self.n_examples,
            "options": {p: dict(sorted(o.items())) for p, o in sorted(self.options.items())},
            **extra,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GridConfig:
        """Inverse of :meth:`to_json` (no validation: the dict was written by :meth:`to_json`)."""
        return cls(
            dataset=data["dataset"],
            model=data["model"],
            policies=tuple(data["policies"]),
            settings=tuple(data["settings"]),
            orders=tuple(data["orders"]),
            corruptions=tuple(data["corruptions"]),
            severities=tuple(int(s) for s in data["severities"]),
            seeds=tuple(int(s) for s in data["seeds"]),
            batch_size=int(data["batch_size"]),
            n_examples=None if data["n_examples"] is None else int(data["n_examples"]),
            options={p: dict(o) for p, o in data.get("options", {}).items()},
            arch=data.get("arch"),
            model_args=dict(data.get("model_args", {})),
            table=data.get("table"),
            methods=tuple(data.get("methods", [NO_METHOD])),
            images=data.get("images"),
            window=None if data.get("window") is None else int(data["window"]),
        )


@dataclasses.dataclass(frozen=True)
class Run:
    """One stream of the grid: a (setting, order, seed) evaluated for every (method, policy) in lockstep.

    All learners of a run see the same batches, so the stream is read (and corrupted) once for all of
    them; each (method, policy) still has its own model copy and state.
    """

    setting: str
    order: str
    seed: int
    policies: tuple[str, ...]
    methods: tuple[str, ...] = (NO_METHOD,)

    def pairs(self) -> list[tuple[str, str]]:
        """The (method, policy) pairs of the run, methods outermost."""
        return [(method, policy) for method in self.methods for policy in self.policies]


def _unique(values: Sequence[Any], what: str) -> None:
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} {value!r} is listed twice")
        seen.add(value)


def _parse_names(text: str, known: list[str], what: str) -> tuple[str, ...]:
    """``"all"`` or a comma list of names from ``known`` (a shared registry), each once."""
    names = split_list(text)
    if names == ["all"]:
        return tuple(known)
    if not names:
        raise ValueError(f"no {what} given; choose from: all, {', '.join(known)}")
    for name in names:
        if name not in known:
            raise ValueError(f"unknown {what} {name!r}; choose from: all, {', '.join(known)}")
    _unique(names, what)
    return tuple(names)


def parse_policies(text: str) -> tuple[str, ...]:
    """``"all"`` or a comma list of names from the shared registry ``tta.list_policies()``."""
    return _parse_names(text, list(tta.list_policies()), "policy")


def parse_methods(text: str) -> tuple[str, ...]:
    """``"all"`` or a comma list of names from the shared registry ``tta.list_methods()``."""
    return _parse_names(text, list(tta.list_methods()), "method")


def parse_settings(text: str) -> tuple[str, ...]:
    """A comma list of domain settings, each in its canonical spelling (``unitta:0.95:10:0.85:5`` ->
    ``unitta:nunu``), so equal settings fingerprint equally."""
    names = [streams_parse_setting(name) for name in split_list(text)]
    if not names:
        raise ValueError(f"no setting given; choose from: {', '.join(SETTINGS)}")
    _unique(names, "setting")
    return tuple(names)


def parse_order(text: str) -> str:
    """Validate one label ordering with the streams' own parser and return its canonical
    spelling (``dirichlet:0.10`` -> ``dirichlet:0.1``), so equal orders fingerprint equally."""
    return str(streams_parse_order(text))


def parse_orders(text: str) -> tuple[str, ...]:
    """A comma list of orderings, see :func:`parse_order`."""
    orders = [parse_order(part) for part in split_list(text)]
    if not orders:
        raise ValueError("no order given; e.g. --order iid,dirichlet:0.1")
    _unique(orders, "order")
    return tuple(orders)


def parse_ints(text: str, what: str, *, low: int | None = None, high: int | None = None) -> tuple[int, ...]:
    """A comma list of integers in ``[low, high]``."""
    values = []
    for part in split_list(text):
        try:
            value = int(part)
        except ValueError:
            raise ValueError(f"{what} {part!r} is not an integer") from None
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"{low if low is not None else '-inf'}..{high if high is not None else 'inf'}"
            raise ValueError(f"{what} {value} is out of range {bounds}")
        values.append(value)
    if not values:
        raise ValueError(f"no {what} given")
    _unique(values, what)
    return tuple(values)


def parse_value(raw: str) -> Any:
    """A Python literal (``ast.literal_eval``: numbers, strings, None, True, lists ...), ``nan``/``inf``
    as floats, else the raw text as a string; never ``eval``. Whether the value suits its option is
    checked where it is used (``tta.adapt`` and a probe batch, see ``tta_bench.evaluate``)."""
    if raw.strip().lower() in ("nan", "inf", "+inf", "-inf"):
        return float(raw.strip())
    try:
        return ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw.strip()


def parse_option(text: str) -> tuple[str, str, Any]:
    """Parse ``name.key=value`` (``name`` a policy or a method); the value as in :func:`parse_value`."""
    target, sep, raw = text.partition("=")
    policy, dot, key = target.strip().partition(".")
    if not sep or not dot or not policy or not key:
        raise ValueError(
            f"option {text!r} is not of the form policy.key=value or method.key=value (e.g. alpha_bn.alpha=0.2)"
        )
    return policy, key.strip(), parse_value(raw)


def parse_model_args(texts: Iterable[str]) -> dict[str, Any]:
    """``key=value`` keyword arguments of the model builder (``--model-arg num_classes=10``)."""
    args: dict[str, Any] = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"--model-arg {text!r} is not of the form key=value (e.g. num_classes=10)")
        if key in args:
            raise ValueError(f"--model-arg {key} is given twice")
        args[key] = parse_value(raw)
    return args


def parse_options(
    texts: Iterable[str], policies: Sequence[str], methods: Sequence[str] = (NO_METHOD,)
) -> dict[str, dict[str, Any]]:
    """Group ``name.key=value`` options by name, one namespace: ``name`` is a policy of the grid's
    policies or a method of its methods (the registries share no name)."""
    options: dict[str, dict[str, Any]] = {}
    for text in texts:
        name, key, value = parse_option(text)
        if name in tta.list_policies():
            kind, flag, in_grid, accepted = "policy", "--policies", name in policies, tta.policy_options(name)
        elif name in tta.list_methods():
            kind, flag, in_grid, accepted = "method", "--methods", name in methods, tta.method_options(name)
        else:
            raise ValueError(
                f"option {text!r}: unknown policy or method {name!r}; choose from: "
                f"{', '.join(tta.list_policies())} (policies), {', '.join(tta.list_methods())} (methods)"
            )
        if not in_grid:
            raise ValueError(f"option {text!r}: {kind} {name!r} is not among {flag}")
        retired = tta.get_policy(name).retired_option(key, value) if kind == "policy" else None
        if retired is not None:
            raise ValueError(f"option {text!r}: {retired}")
        if key not in accepted:
            takes = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "no options"
            raise ValueError(f"option {text!r}: {kind} {name!r} has no option {key!r}; it takes: {takes}")
        if key in options.get(name, {}):
            raise ValueError(f"option {name}.{key} is given twice")
        options.setdefault(name, {})[key] = value
    return options


def normalize_model(spec: str) -> str:
    """``bundled``, ``<library>:<name>`` and ``package.module:callable`` stay as written; a path becomes
    absolute, so a rerun from another folder is recognized as the same model."""
    spec = spec.strip()
    if not spec:
        raise ValueError("empty --model; use bundled, robustbench:<name>, torchvision:<name>, timm:<name> or a path")
    if spec == "bundled" or spec.startswith(MODEL_PREFIXES):
        return spec
    if CALLABLE_SPEC.match(spec) and not os.path.exists(spec):
        return spec
    return os.path.abspath(os.path.expanduser(spec))


def fingerprint_images(images: tta_streams.ImageSet) -> str:
    """``"sha256:<16 hex digits>"`` of an ImageSet's images, labels and class names."""
    digest = hashlib.sha256(repr((tuple(images.images.shape), list(images.classes))).encode())
    digest.update(images.images.contiguous().numpy().tobytes())
    digest.update(images.labels.contiguous().numpy().tobytes())
    return f"sha256:{digest.hexdigest()[:16]}"


class ConfigError(ValueError):
    """A grid argument that is not valid; the message names the argument and what it accepts."""


Names = str | Sequence[str]
"""A comma list (``"tbn,rbn"``) or a sequence of names."""
Numbers = str | int | Sequence[int]
"""A comma list (``"0,1"``), one number, or a sequence of numbers."""


def _comma_list(value: Names | Numbers) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return ",".join(map(str, value))


def _assignments(value: Iterable[str] | Mapping[str, Any]) -> list[str]:
    """``KEY=VALUE`` texts; a mapping's values are written as Python literals (``repr``)."""
    if isinstance(value, Mapping):
        return [f"{key}={item!r}" for key, item in value.items()]
    return list(value)


def _option_texts(options: Iterable[str] | Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``NAME.KEY=VALUE`` texts; ``{name: {key: value}}`` is written as Python literals (``repr``)."""
    if isinstance(options, Mapping):
        return [f"{name}.{text}" for name, keys in options.items() for text in _assignments(keys)]
    return list(options)


def make_config(
    *,
    dataset: str,
    model: str = "bundled",
    policies: Names = "all",
    settings: Names = "single",
    orders: Names = "iid",
    corruptions: Names = "all",
    severities: Numbers = "5",
    seeds: Numbers = "0",
    batch_size: int = 64,
    n_examples: int | None = None,
    options: Iterable[str] | Mapping[str, Mapping[str, Any]] = (),
    arch: str | None = None,
    model_args: Iterable[str] | Mapping[str, Any] = (),
    table: str | None = None,
    methods: Names = NO_METHOD,
    window: int | None = None,
) -> GridConfig:
    """Validate the grid's arguments and build the :class:`GridConfig`; a :class:`ConfigError` names the
    argument as ``tta-bench run`` spells it.

    Lists are comma strings as on the command line (``"tbn,rbn"``) or sequences (``["tbn", "rbn"]``);
    ``options`` are ``NAME.KEY=VALUE`` texts or ``{name: {key: value}}``, ``model_args`` ``KEY=VALUE``
    texts or ``{key: value}``. ``dataset``: a name or alias from :func:`tta_streams.list_datasets`, stored under
    its canonical name. The arguments are those of ``tta-bench run`` (:doc:`/cli`)."""
    try:
        return _make_config(
            dataset=dataset,
            model=model,
            policies=_comma_list(policies),
            settings=_comma_list(settings),
            orders=_comma_list(orders),
            corruptions=_comma_list(corruptions),
            severities=_comma_list(severities),
            seeds=_comma_list(seeds),
            batch_size=batch_size,
            n_examples=n_examples,
            options=_option_texts(options),
            arch=arch,
            model_args=_assignments(model_args),
            table=table,
            methods=_comma_list(methods),
            window=window,
        )
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _make_config(
    *,
    dataset: str,
    model: str,
    policies: str,
    settings: str,
    orders: str,
    corruptions: str,
    severities: str,
    seeds: str,
    batch_size: int,
    n_examples: int | None,
    options: Iterable[str],
    arch: str | None,
    model_args: Iterable[str],
    table: str | None,
    methods: str,
    window: int | None = None,
) -> GridConfig:
    dataset = tta_streams.get_dataset(dataset).name
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise ValueError(f"--window must be an integer of at least 2, got {window!r}")
        if batch_size != 1:
            raise ValueError(f"--window predicts frame by frame: it needs --batch-size 1, got {batch_size}")
    if n_examples is not None and n_examples < 1:
        raise ValueError(f"--n-examples must be >= 1, got {n_examples}")
    if table is not None and table not in TABLES:
        raise ValueError(f"unknown table {table!r}; choose from: {', '.join(TABLES)}")
    policy_names = parse_policies(policies)
    method_names = parse_methods(methods)
    setting_names = parse_settings(settings)
    corruption_names = parse_corruptions(corruptions)
    if corruption_names == (CLEAN,) and set(setting_names) != {"single"}:
        raise ValueError("the clean test set (--corruptions none) has one domain; use --setting single")
    order_names = parse_orders(orders)
    markov = [name for name in setting_names if name.startswith("unitta")]
    if markov and order_names != ("iid",):
        raise ValueError(
            f"setting {markov[0]} draws the classes itself (a Markov chain over domain and class) and takes no "
            f"label order; run it with --order iid alone (got {','.join(order_names)}), other settings in another grid"
        )
    return GridConfig(
        dataset=dataset,
        model=normalize_model(model),
        policies=policy_names,
        settings=setting_names,
        orders=order_names,
        corruptions=corruption_names,
        severities=parse_severity_list(severities),
        seeds=parse_ints(seeds, "seed", low=0),
        batch_size=batch_size,
        n_examples=n_examples,
        options=parse_options(options, policy_names, method_names),
        arch=arch.strip() if arch else None,
        model_args=parse_model_args(model_args),
        table=table,
        methods=method_names,
        window=window,
    )


def expand(config: GridConfig) -> list[Run]:
    """The runs of the grid in execution order: setting, then order, then seed (outermost first)."""
    return [
        Run(setting=setting, order=order, seed=seed, policies=config.policies, methods=config.methods)
        for setting in config.settings
        for order in config.orders
        for seed in config.seeds
    ]


def domains(config: GridConfig, setting: str) -> list[tuple[str, int]]:
    """The distinct (corruption, severity) domains a setting visits, in stream order.

    ``gradual`` visits severities 1..5..1 of each corruption whatever ``--severity`` says; each distinct
    domain gives one row (its visits pooled).
    """
    if config.corruptions == (CLEAN,):
        return [(CLEAN, 0)]
    severities = (1, 2, 3, 4, 5) if setting == "gradual" else config.severities
    return [(c, s) for c in config.corruptions for s in severities]


def row_key(row: dict[str, Any]) -> RowKey:
    """The identity of a stored result row; a row without ``method`` (written before methods) is ``none``'s."""
    return (
        str(row.get("method", NO_METHOD)),
        str(row["policy"]),
        str(row["setting"]),
        str(row["order"]),
        int(row["seed"]),
        str(row["corruption"]),
        int(row["severity"]),
    )


def row_keys(config: GridConfig) -> list[RowKey]:
    """Every row the grid produces, in execution order."""
    return [
        (method, policy, run.setting, run.order, run.seed, corruption, severity)
        for run in expand(config)
        for corruption, severity in domains(config, run.setting)
        for method, policy in run.pairs()
    ]
