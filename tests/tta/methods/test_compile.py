"""A method attached to a compiled adapted model (README, Hardening: ``torch.compile``) gives the eager
learner's predictions and trained parameters: its forwards are compiled with ``fullgraph=True``, its
backward through them, its optimizer step and memory run eagerly around them."""

from __future__ import annotations

import pytest
import torch

import tta
from tests.tta.conftest import build, inputs

pytestmark = pytest.mark.compile


@pytest.mark.parametrize("method", ["tent", "rotta"])
def test_a_method_over_a_compiled_adapted_model_learns_as_the_eager_one(method: str) -> None:
    torch._dynamo.reset()
    eager = tta.attach_method(tta.adapt(build("small_cnn"), "rbn"), method)
    compiled = tta.attach_method(torch.compile(tta.adapt(build("small_cnn"), "rbn"), fullgraph=True), method)
    initial = [p.detach().clone() for p in eager.parameters() if p.requires_grad]
    with torch.no_grad():  # 96 samples: RoTTA updates its memory's student and teacher once (every 64)
        for seed, batch in enumerate([32, 32, 32]):
            x = inputs("small_cnn", batch, seed)
            torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)
    trained = [p for p in eager.parameters() if p.requires_grad]
    assert int(eager.updates) >= 1 and any(not torch.equal(p, q) for p, q in zip(trained, initial))
    for ours, theirs in zip(trained, [p for p in compiled.parameters() if p.requires_grad]):
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)


def test_a_hook_method_attached_after_a_compiled_first_call_names_the_cause_and_works_after_a_reset() -> None:
    torch._dynamo.reset()
    x = inputs("small_cnn", 16, 0)
    compiled = torch.compile(tta.adapt(build("small_cnn"), "rbn"), fullgraph=True)
    eager = tta.adapt(build("small_cnn"), "rbn")
    with torch.no_grad():
        compiled(x), eager(x)  # the compiled graph has no hook on the classifier
        learner = tta.attach_method(compiled, "lame")
        with pytest.raises(ValueError, match=r"call torch._dynamo.reset\(\) after attaching it"):
            learner(x)  # the graph runs (and adapts) without LAME's hook
        eager(x)
        torch._dynamo.reset()  # the next call compiles a graph with the hook
        torch.testing.assert_close(learner(x), tta.attach_method(eager, "lame")(x), rtol=1e-5, atol=1e-5)
