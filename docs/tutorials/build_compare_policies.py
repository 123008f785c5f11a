"""Write ``docs/tutorials/compare_policies.ipynb`` (without outputs) from the cells below.

Edit the cells here and rerun ``python docs/tutorials/build_compare_policies.py``; the notebook is the
generated artifact, executed by the documentation build at its default size and by
``tests/benchmarks/test_notebook.py`` at a smaller one.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = Path(__file__).resolve().parent / "compare_policies.ipynb"

CELLS = [
    new_markdown_cell(
        """# Comparing normalization policies on Fashion-MNIST-C

The bundled Fashion-MNIST model is adapted with every policy of `tta.list_policies()` and evaluated on
corrupted test streams (severity 5, each corruption its own episode: setting `single`). Three questions:

1. **How does label correlation hurt?** The label order inside each domain is swept from i.i.d. through
   Dirichlet orders with shrinking δ (NOTE's protocol, {doc}`/reference/stream_algorithms`) to
   class-sorted, the δ → 0 limit.
2. **What does a method add on top of a policy?** Three policies alone, under Tent and under RoTTA.
3. **How far do the adapted statistics move?** For the stateful policies, each layer's adapted mean is
   compared with its source mean over a stream.

The benchmark CLI (`tta-bench run`, {doc}`/cli`) calls the same functions; this notebook is small enough
to read.

**Size.** By default it runs in a few minutes on a laptop CPU: three corruptions, 400 images each. The
next cell holds the knobs; each can also be set from the environment before the notebook starts:

| knob | environment variable | default | meaning |
|---|---|---|---|
| `N_EXAMPLES` | `TTA_NB_N` | 400 | images per corruption (at most 10,000; the Dirichlet orders need at least 100) |
| `CORRUPTIONS` | `TTA_NB_CORRUPTIONS` | three: a noise, a blur, a digital one | `"all"` (the 15) or a comma list |
| `SEVERITY` | | 5 | corruption severity, 1..5 |
| `BATCH_SIZE` | | 64 | images per batch |
| `SEED` | | 0 | the streams' and the policies' seed |
| `ORDERS` | | five, i.i.d. to sorted | the label orders of the first section |

The full size (`TTA_NB_N=10000 TTA_NB_CORRUPTIONS=all`) takes far longer; the numbers at the default size
are noisy, so read the shapes of the curves rather than differences of a point or two."""
    ),
    new_code_cell(
        """import os

# Size knobs (the test suite runs this notebook with small values through these variables).
N_EXAMPLES = int(os.environ.get("TTA_NB_N", 400))  # images per corruption
CORRUPTIONS = os.environ.get("TTA_NB_CORRUPTIONS", "gaussian_noise,defocus_blur,contrast")  # or "all"
SEVERITY = 5
BATCH_SIZE = 64
SEED = 0
ORDERS = ["iid", "dirichlet:1.0", "dirichlet:0.1", "dirichlet:0.01", "sorted"]"""
    ),
    new_code_cell(
        """import statistics

import matplotlib.pyplot as plt
import torch
from tabulate import tabulate

import tta_streams
import tta
from tta_bench import evaluate, grid
from tta_bench.models import load_bundled_model
from tta_bench.report import LINE_STYLES, policy_colours

model = load_bundled_model()
source = tta_streams.fashion_mnist("test")
policies = tta.list_policies()
corruptions = list(grid.parse_corruptions(CORRUPTIONS))
colour = dict(zip(policies, policy_colours(len(policies))))  # every policy its own colour, in every figure
print(f"{len(policies)} policies, {len(corruptions)} corruptions, {N_EXAMPLES} images each")"""
    ),
    new_markdown_cell(
        """## Error against label correlation

For each order, one stream per corruption; every policy starts from the source model and is reset
before each corruption. Beside the policies alone (the anchors `adab2n`, `balanced`, `iabn` and ours,
`rebalance`, among them), LAME, the forward-only anchor that refines the outputs (a method), over
`adabn` and `rbn`. The figure is the mean error over corruptions: a colour per policy, LAME dashed in
its policy's colour.

What to look at: which lines stay flat from left to right (robust to label correlation) and which climb;
where each line starts (its i.i.d. error) against `source`, which does not adapt and is flat by
construction; and whether LAME over a policy sits below that policy on the correlated orders. The second
table says how non-i.i.d. each order is: classes per batch and the distance of a batch's label mix from
the domain's."""
    ),
    new_code_cell(
        """LAME_POLICIES = ["adabn", "rbn"]
rows = [*policies, *(f"lame/{p}" for p in LAME_POLICIES)]  # the policies alone, then LAME over two of them
mean_error = {}  # (row, order) -> mean error over corruptions, in percent
non_iid = {}  # order -> tta_streams.LabelStats: how non-i.i.d. its batches are
for order in ORDERS:
    stream = tta_streams.Stream(source, corruptions=corruptions, severities=SEVERITY, order=order,
                            setting="single", batch_size=BATCH_SIZE, n_examples=N_EXAMPLES, seed=SEED)
    non_iid[order] = stream.label_stats()
    models = {policy: evaluate.adapted_copy(model, policy, seed=SEED) for policy in policies}
    models |= {f"lame/{p}": evaluate.learner_copy(model, "lame", p, seed=SEED) for p in LAME_POLICIES}
    tallies = evaluate.evaluate_stream(models, stream)
    for row in rows:
        mean_error[row, order] = statistics.fmean(t.error for t in tallies[row].values())

print(tabulate([[r, *(f"{mean_error[r, o]:.1f}" for o in ORDERS)] for r in rows],
               headers=["policy", *ORDERS], tablefmt="github"))
print()
print(tabulate([[o, f"{s.mean_distinct_labels:.1f}", f"{s.mean_tv_distance:.2f}"] for o, s in non_iid.items()],
               headers=["order", "distinct labels per batch", "TV distance to domain labels"], tablefmt="github"))"""
    ),
    new_code_cell(
        """labels = ["iid\\n(δ→∞)", *(f"δ={o.split(':')[1]}" for o in ORDERS[1:-1]), "sorted\\n(δ→0)"]
figure, axis = plt.subplots(figsize=(7, 4))
for row in rows:
    policy = row.removeprefix("lame/")
    axis.plot(range(len(ORDERS)), [mean_error[row, o] for o in ORDERS], marker="o", label=row,
              color=colour[policy], linestyle=LINE_STYLES[1] if row.startswith("lame/") else LINE_STYLES[0])
axis.set_xticks(range(len(ORDERS)))
axis.set_xticklabels(labels)
axis.set_xlabel("label order within a domain (stronger correlation to the right)")
axis.set_ylabel("mean error over corruptions (%)")
axis.grid(True, alpha=0.3)
axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
plt.show()"""
    ),
    new_markdown_cell(
        """## A policy alone, under Tent and under RoTTA

A method stacks on a policy (`tta.attach_method`, {doc}`/methods/index`): Tent trains the normalization
layers' affine parameters by entropy minimization, one Adam step per batch; RoTTA predicts with a
teacher and refreshes the statistics only from a category-balanced memory. As in the UnMix-TNS paper's
tables, each of three policies is run alone (method `none`), under Tent and under RoTTA, on i.i.d. and
Dirichlet δ = 0.1 streams (setting `single`, at most 2,000 images per corruption to keep this quick).

What to look at: down a column, how much a method moves its policy; across the two tables, whether the
gap between i.i.d. and δ = 0.1 belongs to the policy (it stays whatever the method) or closes under a
method. RoTTA refreshes the statistics only from its category-balanced memory, so it can only help a
policy that keeps state; over `tbn` each batch is still normalized with its own statistics. Tent takes
one gradient step per batch, so short streams give it few steps."""
    ),
    new_code_cell(
        """METHODS = ["none", "tent", "rotta"]
METHOD_POLICIES = ["tbn", "rbn", "unmix_tns"]
METHOD_ORDERS = ["iid", "dirichlet:0.1"]
method_n = min(N_EXAMPLES, 2000)
method_error = {}  # (method, policy, order) -> mean error over corruptions, in percent
for order in METHOD_ORDERS:
    stream = tta_streams.Stream(source, corruptions=corruptions, severities=SEVERITY, order=order,
                            setting="single", batch_size=BATCH_SIZE, n_examples=method_n, seed=SEED)
    learners = {(m, p): evaluate.learner_copy(model, m, p, seed=SEED) for m in METHODS for p in METHOD_POLICIES}
    for (m, p), per_domain in evaluate.evaluate_stream(learners, stream).items():
        method_error[m, p, order] = statistics.fmean(t.error for t in per_domain.values())

for order in METHOD_ORDERS:
    print(f"{order}: mean error (%) over {len(corruptions)} corruptions, {method_n} images each")
    print(tabulate([[m, *(f"{method_error[m, p, order]:.1f}" for p in METHOD_POLICIES)] for m in METHODS],
                   headers=["method", *METHOD_POLICIES], tablefmt="github"))
    print()"""
    ),
    new_markdown_cell(
        """## Drift of the adapted statistics from the source statistics

One continual stream (the corruptions one after another, no reset, Dirichlet δ = 0.1). After every
batch, each layer's drift is the mean over channels of |μ_adapted − μ_source| / σ_source: how many
source standard deviations the adapted mean has moved. Stateless policies (`tbn`, `alpha_bn`) hold no
state to drift; `source` never moves. Dashed lines mark a change of corruption.

What to look at: whether the drift settles inside a corruption or keeps growing across the stream (a
policy that accumulates drift carries one domain's statistics into the next), and which layers move
most: a corruption changes the statistics of the shallow layers first, while the deep layers' statistics
depend on the classes in the batch, which is where label correlation shows. The last figure compares the
policies layer by layer at the end of the stream."""
    ),
    new_code_cell(
        """def drift(layer):
    \"\"\"Mean over channels of |adapted mean - source mean| / source std (None for stateless layers).\"\"\"
    stats = layer.adapted_stats()
    if stats is None:
        return None
    mean, _ = stats
    source_std = (layer.source_var + layer.eps).sqrt()
    return float(((mean - layer.source_mean).abs() / source_std).mean())


stream = tta_streams.Stream(source, corruptions=corruptions, severities=SEVERITY, order="dirichlet:0.1",
                        setting="continual", batch_size=BATCH_SIZE, n_examples=N_EXAMPLES, seed=SEED)
stateful = []
curves = {}  # policy -> tensor (batches, layers)
boundaries = []
for policy in policies:
    adapted = evaluate.adapted_copy(model, policy, seed=SEED)
    layers = [layer for _, layer in tta.policy_layers(adapted)]
    if drift(layers[0]) is None:  # stateless: source, tbn, alpha_bn
        continue
    rows, previous, boundaries = [], None, []
    with torch.no_grad():
        for i, batch in enumerate(stream):
            if batch.domain[0] != previous and previous is not None:
                boundaries.append(i)
            previous = batch.domain[0]
            adapted(batch.x)
            rows.append([drift(layer) for layer in layers])
    curves[policy] = torch.tensor(rows)
    stateful.append(policy)

layer_names = [name for name, _ in tta.policy_layers(evaluate.adapted_copy(model, "source"))]
figure, axes = plt.subplots(1, len(stateful), figsize=(3.2 * len(stateful), 3.4), sharey=True, squeeze=False)
colors = plt.cm.viridis(torch.linspace(0, 1, len(layer_names)).numpy())
for axis, policy in zip(axes[0], stateful):
    for j, color in enumerate(colors):
        axis.plot(curves[policy][:, j], color=color, linewidth=1)
    for b in boundaries:
        axis.axvline(b, color="gray", linestyle="--", linewidth=0.6)
    axis.set_title(policy)
    axis.set_xlabel("batch")
axes[0, 0].set_ylabel("drift (source std)")
figure.colorbar(plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(0, len(layer_names) - 1)),
                ax=axes[0].tolist(), label="layer (input → output)")
plt.show()"""
    ),
    new_code_cell(
        """figure, axis = plt.subplots(figsize=(7, 3.5))
for policy in stateful:
    axis.plot(curves[policy][-1], marker="o", markersize=3, label=policy, color=colour[policy])
axis.set_xlabel("layer (input → output)")
axis.set_ylabel("drift at the end of the stream")
axis.grid(True, alpha=0.3)
axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
plt.show()
print({policy: [round(v, 3) for v in curves[policy][-1].tolist()] for policy in stateful})"""
    ),
]


def build() -> nbformat.NotebookNode:
    """The notebook, without outputs."""
    notebook = new_notebook(cells=CELLS)
    for i, cell in enumerate(notebook.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: rebuilding gives the same file
    notebook.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


if __name__ == "__main__":
    notebook = build()
    nbformat.validate(notebook)
    nbformat.write(notebook, NOTEBOOK)
    print(f"wrote {NOTEBOOK}")
