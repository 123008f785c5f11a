"""Tables and plots from benchmark result rows: ``report.md``, ``results.csv`` and ``errors.png``.

Everything here is computed from the rows of ``results.jsonl`` alone (plus the folder's ``config.json``
for the display order), so ``tta-bench report DIR`` rebuilds the same files after the fact. Means are
unweighted over domains (each corruption counts once, as in the published tables) and over seeds.

With methods in the grid (anything but ``none`` alone) the summary has the shape of the UnMix-TNS tables:
one table per (setting, order), a line per method, a column per policy; the per-domain table and the plot
name the method too, and a table of the best policy under each method per (setting, order) follows the
summary (:func:`best_table`): what the statistics alone gain over ``source`` and what each method adds.
With ``none`` alone the tables are those of the policies alone (a line per policy).
A row without a ``method`` key (written before methods existed) is ``none``'s.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

from tta_bench.results import folder_file_error

REPORT_NAME = "report.md"
CSV_NAME = "results.csv"
PLOT_NAME = "errors.png"

CSV_COLUMNS: tuple[str, ...] = (
    "dataset",
    "model",
    "method",
    "policy",
    "setting",
    "order",
    "seed",
    "corruption",
    "severity",
    "n",
    "errors",
    "error",
    "batch_size",
    "options",
    "method_options",
)
NO_METHOD = "none"

Rows = Sequence[dict[str, Any]]


def method_of(row: dict[str, Any]) -> str:
    """The row's method; ``none`` for a row written before methods existed."""
    return str(row.get("method", NO_METHOD))


def in_grid_order(rows: Rows, config: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The rows in the order the grid of ``config`` (a folder's ``config.json``) lists them, whatever order
    they were stored in (parallel executors store them as units finish), so tables and files do not
    depend on it; rows outside that grid follow, as stored. Without a full config: as stored."""
    from tta_bench.grid import GridConfig, row_key, row_keys

    try:
        grid = GridConfig.from_json(config or {})
    except (KeyError, TypeError, ValueError):
        return list(rows)
    rank = {key: i for i, key in enumerate(row_keys(grid))}
    return sorted(rows, key=lambda row: rank.get(row_key(row), len(rank)))


def has_methods(rows: Rows) -> bool:
    """Whether the rows hold any method but ``none`` (then the tables name the method)."""
    return any(method_of(row) != NO_METHOD for row in rows)


def _ordered(values: list[Any], preferred: Sequence[Any] | None) -> list[Any]:
    """``values`` (deduplicated) in the order of ``preferred``, unknown ones after in first-seen order."""
    unique = list(dict.fromkeys(values))
    if not preferred:
        return unique
    rank = {value: i for i, value in enumerate(preferred)}
    return sorted(unique, key=lambda v: (rank.get(v, len(rank)), unique.index(v)))


def domain_label(corruption: str, severity: int, *, with_severity: bool) -> str:
    """Column name of a domain: ``fog`` or ``fog-5`` when several severities are reported."""
    return f"{corruption}-{severity}" if with_severity and corruption != "none" else corruption


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _fmt(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.1f}"


Cell = tuple[str, str, str, str]  # (method, policy, setting, order)


@dataclass(frozen=True)
class CellMeans:
    """One (method, policy, setting, order): the mean error over domains of each seed that has every domain
    it should, and how much of what it should have is there (an interrupted or running grid)."""

    seeds: dict[int, float]
    expected_seeds: int
    results: int
    expected_results: int

    @property
    def complete(self) -> bool:
        return len(self.seeds) == self.expected_seeds and self.results == self.expected_results


def expected_domains(rows: Rows, config: dict[str, Any] | None = None) -> dict[Cell, dict[int, set[tuple[str, int]]]]:
    """The domains each cell should have per seed: the grid's, from a folder's ``config.json``; for a cell
    outside it (or without one), every domain that any row of its setting has, for each seed it has."""
    from tta_bench.grid import GridConfig, row_keys

    expected: dict[Cell, dict[int, set[tuple[str, int]]]] = defaultdict(lambda: defaultdict(set))
    try:
        grid = GridConfig.from_json(config) if config else None
    except (KeyError, TypeError, ValueError):
        grid = None
    for method, policy, setting, order, seed, corruption, severity in row_keys(grid) if grid else []:
        expected[(method, policy, setting, order)][seed].add((corruption, severity))
    in_grid = set(expected)
    seen: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for row in rows:
        seen[row["setting"]].add((row["corruption"], int(row["severity"])))
    for row in rows:
        cell = (method_of(row), row["policy"], row["setting"], row["order"])
        if cell not in in_grid:
            expected[cell][int(row["seed"])] = seen[row["setting"]]
    return expected


def mean_errors(rows: Rows, config: dict[str, Any] | None = None) -> dict[Cell, CellMeans]:
    """Mean error over domains per cell and seed, for the seeds that have all their domains
    (:func:`expected_domains`): a mean over some of the corruptions is not comparable with one over all."""
    errors: dict[Cell, dict[int, dict[tuple[str, int], float]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        cell = (method_of(row), row["policy"], row["setting"], row["order"])
        errors[cell][int(row["seed"])][(row["corruption"], int(row["severity"]))] = float(row["error"])
    expected = expected_domains(rows, config)
    means = {}
    for cell, seeds in errors.items():
        wanted = expected[cell]
        complete = {
            seed: _mean(list(found.values()))
            for seed, found in seeds.items()
            if wanted.get(seed) is not None and wanted[seed] <= found.keys()
        }
        means[cell] = CellMeans(
            seeds=complete,
            expected_seeds=len(wanted),
            results=sum(len(found.keys() & wanted.get(seed, set())) for seed, found in seeds.items()),
            expected_results=sum(len(domains) for domains in wanted.values()),
        )
    return means


def _cell(means: CellMeans | None, spread: bool = True) -> str:
    """Mean over seeds, ``mean ± std`` when there are several (and ``spread``); with what is missing when
    the cell is incomplete (``(2 of 3 seeds)``, or ``(40 of 45 results)`` while no seed is complete); empty
    when there is no result."""
    if means is None:
        return ""
    if not means.seeds:
        return f"({means.results} of {means.expected_results} results)"
    values = list(means.seeds.values())
    cell = _fmt(_mean(values))
    if len(values) > 1 and spread:
        cell += f" ± {statistics.stdev(values):.1f}"
    if not means.complete:
        cell += f" ({len(values)} of {means.expected_seeds} seeds)"
    return cell


def summary_table(
    rows: Rows,
    *,
    policies: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    config: dict[str, Any] | None = None,
) -> str:
    """The mean error in percent over domains, averaged over seeds (``mean ± std`` over seeds when there
    are several), as Markdown; a cell short of results (``config``: the grid's, :func:`mean_errors`) says so.

    ``none`` alone: one table, a line per policy, a column per (setting, order). With methods: one table
    per (setting, order), headed ``**setting, order**``, a line per method and a column per policy (the
    shape of the UnMix-TNS tables)."""
    means = mean_errors(rows, config)
    policy_names = _ordered([key[1] for key in means], policies)
    columns = list(dict.fromkeys((key[2], key[3]) for key in means))
    if not has_methods(rows):
        single_setting = len({setting for setting, _ in columns}) == 1
        headers = ["policy"] + [order if single_setting else f"{setting} {order}" for setting, order in columns]
        table = [
            [policy] + [_cell(means.get((NO_METHOD, policy, *column))) for column in columns] for policy in policy_names
        ]
        return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)
    method_names = _ordered([key[0] for key in means], methods)
    parts = []
    for setting, order in columns:
        table = [
            [method] + [_cell(means.get((method, policy, setting, order))) for policy in policy_names]
            for method in method_names
        ]
        parts.append(
            f"**{setting}, {order}**\n\n"
            + tabulate(table, headers=["method", *policy_names], tablefmt="github", disable_numparse=True)
        )
    return "\n\n".join(parts)


def compared_pairs(rows: Rows, compare: Sequence[str]) -> list[tuple[str, str]]:
    """``(method, policy)`` of each name in ``compare`` (``policy`` or ``policy+method``); a ValueError naming
    the pairs the rows hold when one is not among them."""
    held = {(method_of(row), row["policy"]) for row in rows}
    pairs = []
    for name in compare:
        policy, _, method = name.partition("+")
        pair = (method or NO_METHOD, policy)
        if pair not in held:
            known = sorted(policy if method == NO_METHOD else f"{policy}+{method}" for method, policy in held)
            raise ValueError(f"no results of {name!r} to compare; the rows hold: {', '.join(known)}")
        pairs.append(pair)
    return pairs


def best_table(
    rows: Rows,
    *,
    policies: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    config: dict[str, Any] | None = None,
    compare: Sequence[str] = (),
) -> str:
    """Markdown table: per (setting, order), ``source`` alone, then for each method the policy with the lowest
    mean error under it (averaged over seeds, complete cells only, ties to the earlier policy) and that
    error, then the best of them all. An empty cell: no complete result.

    ``compare`` names pairs, ``policy`` or ``policy+method``, each given a column with its error and, in
    brackets, how far it is from the best of all: how a fixed choice fares against the one an informed user
    would make in each cell. A pair that is not in the rows is a ValueError naming those that are."""
    pairs = compared_pairs(rows, compare)
    means = mean_errors(rows, config)
    policy_names = _ordered([key[1] for key in means], policies)
    method_names = _ordered([key[0] for key in means], methods)
    columns = list(dict.fromkeys((key[2], key[3]) for key in means))

    def mean_of(method: str, policy: str, column: tuple[str, str]) -> float | None:
        cell = means.get((method, policy, *column))
        return _mean(list(cell.seeds.values())) if cell is not None and cell.complete else None

    table = []
    for column in columns:
        source = mean_of(NO_METHOD, "source", column)
        line = [*column, "" if source is None else _fmt(source)]
        found = []
        for method in method_names:
            scored = [
                (error, policy) for policy in policy_names if (error := mean_of(method, policy, column)) is not None
            ]
            best = min(scored, key=lambda pair: pair[0]) if scored else None
            line.append("" if best is None else f"{_fmt(best[0])} ({best[1]})")
            if best is not None:
                found.append((best[0], f"{best[1]} + {method}" if method != NO_METHOD else best[1]))
        overall = min(found, key=lambda pair: pair[0]) if found else None
        line.append("" if overall is None else f"{_fmt(overall[0])} ({overall[1]})")
        for method, policy in pairs:
            error = mean_of(method, policy, column)
            gap = "" if error is None or overall is None else f" (+{error - overall[0]:.1f})"
            line.append("" if error is None else f"{_fmt(error)}{gap}")
        table.append(line)
    headers = ["setting", "order", "source", *(f"best, {method}" for method in method_names), "best of all"]
    headers += [policy if method == NO_METHOD else f"{policy} + {method}" for method, policy in pairs]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def domain_table(
    rows: Rows,
    *,
    policies: Sequence[str] | None = None,
    corruptions: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    config: dict[str, Any] | None = None,
) -> str:
    """Markdown table: one line per (policy, setting, order), one column per domain (error in percent,
    averaged over seeds) and their mean (as in :func:`summary_table`); with methods, one line per
    (method, policy, setting, order)."""
    severities = {int(row["severity"]) for row in rows if row["corruption"] != "none"}
    with_severity = len(severities) > 1
    cells: dict[tuple[str, str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    domain_order: list[tuple[str, int]] = []
    for row in rows:
        domain = (row["corruption"], int(row["severity"]))
        domain_order.append(domain)
        label = domain_label(*domain, with_severity=with_severity)
        cells[(method_of(row), row["policy"], row["setting"], row["order"])][label].append(float(row["error"]))
    corruption_rank = {c: i for i, c in enumerate(corruptions or [])}
    unique_domains = list(dict.fromkeys(domain_order))
    unique_domains.sort(key=lambda d: (corruption_rank.get(d[0], len(corruption_rank)), d[1]))
    labels = list(dict.fromkeys(domain_label(*d, with_severity=with_severity) for d in unique_domains))
    method_rank = {m: i for i, m in enumerate(_ordered([k[0] for k in cells], methods))}
    policy_rank = {p: i for i, p in enumerate(_ordered([k[1] for k in cells], policies))}
    first_seen = {key: i for i, key in enumerate(cells)}
    keys = sorted(cells, key=lambda k: (method_rank[k[0]], policy_rank[k[1]], first_seen[k]))
    means = mean_errors(rows, config)
    with_method = has_methods(rows)
    table = []
    for key in keys:
        line = list(key) if with_method else list(key[1:])
        line += [_fmt(_mean(cells[key].get(label, []))) for label in labels]
        line.append(_cell(means[key], spread=False))
        table.append(line)
    headers = [*(["method"] if with_method else []), "policy", "setting", "order", *labels, "mean"]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def write_csv(rows: Rows, path: str | Path) -> Path:
    """All rows as CSV, one line per result row (options as JSON)."""
    path = Path(path)
    extra = sorted({key for row in rows for key in row} - set(CSV_COLUMNS))
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=[*CSV_COLUMNS, *extra])
        writer.writeheader()
        for row in rows:
            out = {key: row.get(key, "") for key in writer.fieldnames}
            out["method"] = method_of(row)
            for key in ("options", "method_options"):
                if isinstance(out[key], dict):
                    out[key] = json.dumps(out[key], sort_keys=True)
            writer.writerow(out)
    return path


LINE_STYLES: tuple[str | tuple[int, tuple[int, ...]], ...] = (
    "-",
    "--",
    ":",
    "-.",
    (0, (5, 1, 1, 1, 1, 1)),
    (0, (8, 2)),
    (0, (1, 3)),
    (0, (3, 1, 1, 1)),
)
"""The line style of each method, in the order of the methods."""


def policy_colours(n: int) -> list[Any]:
    """``n`` colours, each different while ``n`` <= 21: matplotlib's ten ``tab10`` colours, black, then
    the ten light ``tab20`` shades (the default colour cycle has ten, fewer than the policies)."""
    import matplotlib

    tab10, tab20 = matplotlib.colormaps["tab10"], matplotlib.colormaps["tab20"]
    palette = [*(tab10(i) for i in range(10)), "black", *(tab20(i) for i in range(1, 20, 2))]
    return [palette[i % len(palette)] for i in range(n)]


def plot_errors(
    rows: Rows,
    path: str | Path,
    *,
    policies: Sequence[str] | None = None,
    corruptions: Sequence[str] | None = None,
    title: str = "",
    methods: Sequence[str] | None = None,
) -> Path:
    """Error per domain, one line per policy, one panel per (setting, order); saved as a PNG.

    Every policy has its own colour (:func:`policy_colours`) and every method its own line style, so
    that a line per (method, policy) reads at a glance; the legend sits right of the axes, outside the
    data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    severities = {int(row["severity"]) for row in rows if row["corruption"] != "none"}
    with_severity = len(severities) > 1
    panels: dict[tuple[str, str], dict[tuple[str, str], dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    corruption_rank = {c: i for i, c in enumerate(corruptions or [])}
    domain_keys = sorted(
        {(row["corruption"], int(row["severity"])) for row in rows},
        key=lambda d: (corruption_rank.get(d[0], len(corruption_rank)), d[1]),
    )
    labels = list(dict.fromkeys(domain_label(*d, with_severity=with_severity) for d in domain_keys))
    for row in rows:
        label = domain_label(row["corruption"], int(row["severity"]), with_severity=with_severity)
        panels[(row["setting"], row["order"])][(method_of(row), row["policy"])][label].append(float(row["error"]))
    policy_names = _ordered([row["policy"] for row in rows], policies)
    method_names = _ordered([method_of(row) for row in rows], methods)
    with_method = has_methods(rows)
    colours = policy_colours(len(policy_names))
    n_panels = max(len(panels), 1)
    width = max(6.0, 0.45 * len(labels) + 2.5)
    figure, axes = plt.subplots(n_panels, 1, figsize=(width, 3.6 * n_panels), squeeze=False)
    x = list(range(len(labels)))
    legends = []
    for axis, ((setting, order), by_pair) in zip(axes[:, 0], panels.items()):
        for m, method in enumerate(method_names):
            for p, policy in enumerate(policy_names):
                if (method, policy) not in by_pair:
                    continue
                y = [_mean(by_pair[(method, policy)].get(label, [])) for label in labels]
                axis.plot(
                    x,
                    y,
                    marker="o",
                    markersize=3,
                    linewidth=1.2,
                    color=colours[p],
                    linestyle=LINE_STYLES[m % len(LINE_STYLES)],
                    label=f"{method}/{policy}" if with_method else policy,
                )
        axis.set_title(f"{setting}, {order}", fontsize=10)
        axis.set_ylabel("error (%)")
        axis.set_xticks(x)
        axis.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
        axis.grid(True, alpha=0.3)
        legends.append(
            legend := axis.legend(
                fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, ncol=1 + len(by_pair) // 17
            )
        )
        legend.set_in_layout(False)  # the axes keep their size; savefig's box takes the legend in
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120, bbox_inches="tight", bbox_extra_artists=legends)  # the legends beside the axes
    plt.close(figure)
    return path


RUN_COLUMNS: tuple[str, ...] = (
    "started",
    "seconds",
    "results_added",
    "tta_version",
    "git_commit",
    "torch_version",
    "device",
    "threads",
)


def reproducibility(metadata: dict[str, Any]) -> list[str]:
    """The report's lines on the model's clean error and on each run that wrote into the folder."""
    lines = ["## Reproducibility", ""]
    clean = metadata.get("clean_error")
    if isinstance(clean, dict) and "error" in clean:
        lines += [
            f"Clean error of the unadapted model: {clean['error']:.1f}% ({clean['errors']} of {clean['n']} "
            "clean test images).",
            "",
        ]
    elif isinstance(clean, dict) and "unavailable" in clean:
        lines += [f"Clean error of the unadapted model: not measured ({clean['unavailable']}).", ""]
    runs = metadata.get("runs") or []
    if runs:
        table = [[str(run.get(column, "")) for column in RUN_COLUMNS] for run in runs]
        lines += [tabulate(table, headers=list(RUN_COLUMNS), tablefmt="github", disable_numparse=True), ""]
    return lines


def write_report(
    folder: str | Path,
    rows: Rows,
    *,
    config: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    compare: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``report.md``, ``results.csv`` and ``errors.png`` into ``folder``; return their paths. A
    failed write is a :class:`tta_bench.results.FolderFileError` naming the file.

    ``metadata`` (the folder's ``meta.json``, :mod:`tta_bench.metadata`) adds the model's clean error
    and a table of the runs that produced the rows (versions, commit, device, threads, date, run time).
    ``compare``: pairs given a column in the table of the best policies (:func:`best_table`).
    """
    if not rows:
        raise ValueError(f"no result rows in {folder}: nothing to report")
    folder = Path(folder)
    config = config or {}
    rows = in_grid_order(rows, config)
    policies = config.get("policies")
    methods = config.get("methods")
    corruptions = config.get("corruptions")
    title = f"{config.get('dataset', '')} {config.get('model', '')}".strip()
    lines = [f"# Benchmark report{': ' + title if title else ''}", ""]
    if config:
        lines += [
            "Arguments: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in config.items()),
            "",
        ]
    lines += [
        "## Mean error (%) over domains",
        "",
        summary_table(rows, policies=policies, methods=methods, config=config),
        "",
    ]
    if has_methods(rows) or compare:
        lines += [
            "## The best policy under each method",
            "",
            best_table(rows, policies=policies, methods=methods, config=config, compare=compare),
            "",
        ]
    lines += [
        "## Error (%) per domain",
        "",
        domain_table(rows, policies=policies, corruptions=corruptions, methods=methods, config=config),
        "",
        f"![error per corruption]({PLOT_NAME})",
        "",
    ]
    if metadata:
        lines += reproducibility(metadata)
    report_path = folder / REPORT_NAME
    try:
        report_path.write_text("\n".join(lines), encoding="utf-8")
        return {
            "report": report_path,
            "csv": write_csv(rows, folder / CSV_NAME),
            "plot": plot_errors(
                rows, folder / PLOT_NAME, policies=policies, corruptions=corruptions, title=title, methods=methods
            ),
        }
    except OSError as error:
        raise folder_file_error(error.filename or folder, "cannot write", error) from None
