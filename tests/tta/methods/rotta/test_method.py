"""RoTTA (docs/methods/rotta.md; official BIT-DA/RoTTA ``core/adapter/rotta.py``): options, timeliness weights, one
update written out by hand (teacher prediction, memory, teacher and student statistics, Adam step, EMA),
the update every ``update_frequency`` samples whatever the batch size, reset / paused / state_dict with
updates, detach, determinism across processes, every policy. The memory and the augmentation have their
own files (test_memory.py, test_augment.py)."""

from __future__ import annotations

import copy
import io
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tta
from tests.tta.conftest import build, inputs
from tests.tta.methods.conftest import assert_same, learner, run, snapshot
from tta.methods.rotta import timeliness_weights

POLICIES = tta.list_policies()
REPO = Path(__file__).resolve().parents[4]


def rotta(model_name: str, policy: str = "rbn", seed: int = 0, **options: object) -> tta.Method:
    return learner(model_name, policy, "rotta", seed, **options)


def test_options_and_their_official_defaults() -> None:
    assert tta.method_options("rotta") == {
        "capacity": 64,
        "update_frequency": 64,
        "lr": 1e-3,
        "beta1": 0.9,
        "beta2": 0.999,
        "weight_decay": 0.0,
        "nu": 0.001,
        "lambda_t": 1.0,
        "lambda_u": 1.0,
        "augment": "strong",
        "noise_std": 0.005,
        "seed": 0,
    }


# (option, values refused for their type, values refused for their range or choice), by hand
ROTTA_CASES = [
    ("capacity", [64.0, "64", True], [0, -1]),
    ("update_frequency", [1.5, None], [0]),
    ("lr", ["0.001"], [0.0, float("inf")]),
    ("beta1", [None], [1.0, -0.1]),
    ("beta2", [None], [1.0]),
    ("weight_decay", [False], [-1.0]),
    ("nu", ["0.001"], [-0.1, 1.5]),
    ("lambda_t", [None], [-1.0]),
    ("lambda_u", [None], [-1.0]),
    ("augment", [1, None], ["weak", "Strong"]),
    ("noise_std", ["0.005"], [-0.1]),
    ("seed", [0.0, "0"], [-1]),
]


@pytest.mark.parametrize("option, wrong_type, out_of_range", ROTTA_CASES)
def test_each_option_is_checked(option: str, wrong_type: list[object], out_of_range: list[object]) -> None:
    model = tta.adapt(build("small_cnn"), "rbn")
    for value in wrong_type:
        with pytest.raises(TypeError, match=f"method 'rotta' option '{option}' must be"):
            tta.attach_method(model, "rotta", **{option: value})
    for value in out_of_range:
        with pytest.raises(ValueError, match=f"method 'rotta' option '{option}' must"):
            tta.attach_method(model, "rotta", **{option: value})
    assert {case[0] for case in ROTTA_CASES} == set(tta.method_options("rotta"))


def test_timeliness_weights_by_hand() -> None:
    # a = age / 64: 0, 1, 2 -> exp(-a) / (1 + exp(-a)) = 1/2, 1/(1+e), 1/(1+e^2)
    got = timeliness_weights(torch.tensor([0, 64, 128]), 64)
    torch.testing.assert_close(got, torch.tensor([0.5, 1 / (1 + math.e), 1 / (1 + math.e**2)]))


def test_one_update_written_out_by_hand() -> None:
    """Batch 1 (4 samples, update_frequency 4) triggers one update at its end; the augmentation is
    replaced by a deterministic flip so the student's gradient is not rounding noise."""
    rotta_learner = rotta("small_cnn", update_frequency=4)
    rotta_learner.augmented = lambda data: data.flip(-1)
    teacher, student = tta.adapt(build("small_cnn"), "rbn"), tta.adapt(build("small_cnn"), "rbn")
    x, x_next = inputs("small_cnn", 4, 0), inputs("small_cnn", 4, 1)

    # the teacher predicts with its statistics frozen
    with tta.paused(teacher), torch.no_grad():
        expected = teacher(x)
    torch.testing.assert_close(rotta_learner(x), expected, rtol=0, atol=0)
    # quota 6.4 per class: all four stored, listed by pseudo-label then arrival; ages 4, 3, 2, 1 by arrival
    order = torch.argsort(expected.argmax(1), stable=True)
    memory, ages = x[order], torch.tensor([4, 3, 2, 1])[order]
    data, stored_ages = rotta_learner.memory.contents()
    assert torch.equal(data, memory) and torch.equal(stored_ages, ages)
    # teacher on the memory (its statistics update), student on the augmented memory, weighted soft CE
    with torch.no_grad():
        teacher_logits = teacher(memory)
    params = [p for _, layer in tta.policy_layers(student) for p in (layer.weight, layer.bias)]
    a = ages / 64
    weights = torch.exp(-a) / (1 + torch.exp(-a))
    student_logits = student(memory.flip(-1))
    loss = (-(F.softmax(teacher_logits, 1) * F.log_softmax(student_logits, 1)).sum(1) * weights).mean()
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads):  # Adam's first step: lr * m_hat / (sqrt(v_hat) + eps) = lr * g / (|g| + eps)
            p.sub_(1e-3 * g / (g.abs() + 1e-8))
        teacher_params = [p for _, layer in tta.policy_layers(teacher) for p in (layer.weight, layer.bias)]
        for t, s in zip(teacher_params, params):  # EMA of the parameters, nu = 0.001
            t.copy_(0.999 * t + 0.001 * s)

    for got, want in zip(rotta_learner.params, params):
        torch.testing.assert_close(got.detach(), want, rtol=0, atol=1e-6)
    for got, want in zip(rotta_learner.teacher_params, teacher_params):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-8)
    for mine, theirs in ((rotta_learner.teacher, teacher), (rotta_learner.model, student)):  # buffers: each its own
        for (_, got), (_, want) in zip(tta.policy_layers(mine), tta.policy_layers(theirs)):
            torch.testing.assert_close(got.global_mean, want.global_mean, rtol=0, atol=1e-6)
            torch.testing.assert_close(got.global_var, want.global_var, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(rotta_learner.teacher[1].global_mean, rotta_learner.model[1].global_mean)
    with tta.paused(teacher), torch.no_grad():
        torch.testing.assert_close(rotta_learner(x_next), teacher(x_next), rtol=0, atol=1e-5)
    assert int(rotta_learner.updates) == 2 and int(rotta_learner.instances) == 8  # x_next: the second update
    assert rotta_learner.memory.num_classes == 10  # the width of the teacher's output


@pytest.mark.parametrize("batch, total", [(1, 130), (7, 300), (64, 256), (100, 500)])
def test_an_update_every_64_samples_whatever_the_batch_size(batch: int, total: int) -> None:
    model = rotta("mlp_bn1d", augment="none")
    seen, counts, expected = 0, [], []
    with torch.no_grad():
        for step in range(math.ceil(total / batch)):
            model(inputs("mlp_bn1d", batch, step))
            seen += batch
            counts.append(int(model.updates))
            expected.append(seen // 64)  # batch 100: an update inside the batch, two in the second
    assert counts == expected and int(model.instances) == seen


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("model_name", ["small_cnn", "mlp_bn1d"])
def test_every_policy_adapts_with_finite_outputs_and_the_teacher_follows(
    model_name: str, policy: str, batch: int
) -> None:
    model = rotta(model_name, policy, update_frequency=2, capacity=8)
    before = [p.clone() for p in model.teacher_params]
    for out in run(model, model_name, range(4), batch):
        assert out.shape == (batch, 10) and torch.isfinite(out).all()
    assert int(model.updates) == 4 * batch // 2 and 0 < len(model.memory) <= 8
    assert all(torch.isfinite(p).all() for p in model.params + model.teacher_params)
    assert any(not torch.equal(p, q) for p, q in zip(model.teacher_params, before))
    assert not model.training and not model.model.training and not model.teacher.training


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("model_name", ["small_cnn", "mlp_bn1d"])
def test_reset_paused_and_state_dict_with_updates(model_name: str, policy: str, batch: int) -> None:
    model = rotta(model_name, policy, update_frequency=2, capacity=8)
    attached = snapshot(model)
    first = run(model, model_name, range(3), batch)
    assert int(model.updates) > 0 and len(model.memory) > 0
    # paused: the teacher predicts, nothing changes, no memory insertion
    state = snapshot(model)
    with tta.paused(model):
        paused = run(model, model_name, range(5, 7), batch)
    assert_same(snapshot(model), state)
    assert torch.equal(paused[0], run(model, model_name, range(5, 6), batch)[0])  # the prediction before its update
    # state_dict: a fresh learner with other weights continues identically
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = rotta(model_name, policy, seed=7, update_frequency=2, capacity=8)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for a, b in zip(run(model, model_name, range(7, 10), batch), run(restored, model_name, range(7, 10), batch)):
        assert torch.equal(a, b)
    # reset: the attach state bit for bit (memory empty, counters, optimizer, teacher = student = attach)
    tta.reset(model)
    assert_same(snapshot(model), attached)
    assert len(model.memory) == 0 and model.memory.num_classes == 0
    for a, b in zip(first, run(model, model_name, range(3), batch)):
        assert torch.equal(a, b)


def test_detach_gives_back_the_student_and_keep_adapted_the_teacher() -> None:
    original = build("small_cnn")
    model = tta.attach_method(tta.adapt(original, "rbn"), "rotta", update_frequency=4)
    run(model, "small_cnn", range(3))
    x = inputs("small_cnn", 4, 9)
    with tta.paused(model), torch.no_grad():
        teacher_prediction = model(x)
    baked = tta.detach(model, keep_adapted=True)
    assert baked is original and not tta.policy_layers(baked)
    with torch.no_grad():
        torch.testing.assert_close(baked(x), teacher_prediction, rtol=1e-5, atol=1e-5)


def test_the_seed_decides_the_augmentation_and_the_global_random_state_is_untouched() -> None:
    state = torch.get_rng_state()
    xs = [inputs("small_cnn", 4, seed).sigmoid() for seed in range(4)]  # images in [0, 1]
    outs = {}
    for seed in (0, 0, 1):
        model = rotta("small_cnn", update_frequency=4, seed=seed)
        with torch.no_grad():
            outs.setdefault(seed, []).append(torch.cat([model(x) for x in xs]))
    assert torch.equal(outs[0][0], outs[0][1]) and not torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(torch.get_rng_state(), state)


SCRIPT = """
import hashlib, torch, tta
from tests.tta.conftest import build, inputs
model = tta.attach_method(tta.adapt(build("small_cnn"), "rbn"), "rotta", update_frequency=4, seed=3)
with torch.no_grad():
    outs = torch.cat([model(inputs("small_cnn", 4, s).sigmoid()) for s in range(4)])
print(hashlib.sha256(outs.numpy().tobytes()).hexdigest())
"""


@pytest.mark.multiprocess
def test_two_processes_with_one_seed_give_the_same_predictions() -> None:
    digests = [
        subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    assert digests[0] == digests[1] and len(digests[0].strip()) == 64


def test_adapts_inside_inference_mode_as_outside() -> None:
    inside, outside = rotta("small_cnn", update_frequency=4), rotta("small_cnn", update_frequency=4)
    xs = [inputs("small_cnn", 4, seed) for seed in range(3)]
    with torch.inference_mode():
        got = [inside(x.clone()) for x in xs]
    for x, out in zip(xs, got):
        assert torch.equal(out, outside(x))
    assert int(inside.updates) == 3


def test_over_unmix_tns_the_teacher_and_student_keep_their_own_components() -> None:
    model = rotta("small_cnn", "unmix_tns", update_frequency=4)
    run(model, "small_cnn", range(2))
    teacher_layer, student_layer = model.teacher_layers[0], model.layers[0]
    assert teacher_layer is not student_layer
    assert torch.equal(teacher_layer.initial_component_mean, student_layer.initial_component_mean)
    assert not torch.equal(teacher_layer.component_mean, student_layer.component_mean)


def test_the_number_of_classes_comes_from_the_first_output() -> None:
    model = rotta("mlp_bn1d")
    model.model[-1] = model.teacher[-1] = torch.nn.Linear(32, 3)  # a three-class head on both
    model(inputs("mlp_bn1d", 2, 0))
    assert model.memory.num_classes == 3
    assert 0 <= model.memory.labels.max() < 3


class PlainRobustBN(torch.nn.Module):
    """The official ``RobustBN2d`` written plainly: in train mode, blend the batch statistics (biased)
    into the global ones with ``alpha`` and normalize with the result; in eval mode, normalize with the
    global ones, the student's gradient flowing through the batch term; the stored state is detached."""

    def __init__(self, bn: torch.nn.BatchNorm2d, alpha: float = 0.05) -> None:
        super().__init__()
        self.alpha, self.eps = alpha, bn.eps
        self.weight = torch.nn.Parameter(bn.weight.detach().clone())
        self.bias = torch.nn.Parameter(bn.bias.detach().clone())
        self.mean, self.var = bn.running_mean.clone(), bn.running_var.clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean, self.var
        if self.training:
            batch_var, batch_mean = torch.var_mean(x, dim=[0, 2, 3], correction=0)
            mean = (1 - self.alpha) * self.mean + self.alpha * batch_mean
            var = (1 - self.alpha) * self.var + self.alpha * batch_var
            self.mean, self.var = mean.detach(), var.detach()
        shape = (1, -1, 1, 1)
        x = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return x * self.weight.view(shape) + self.bias.view(shape)


class PlainRoTTA:
    """The official adapter and CSTU memory written plainly (lists of items, Python floats), with the
    strong augmentation replaced by a horizontal flip."""

    def __init__(self, model: torch.nn.Module, capacity: int, update_frequency: int, num_classes: int) -> None:
        for i, m in enumerate(model):
            if isinstance(m, torch.nn.BatchNorm2d):
                model[i] = PlainRobustBN(m)
        self.student = model.requires_grad_(False)
        self.params = [p for m in model if isinstance(m, PlainRobustBN) for p in (m.weight, m.bias)]
        for p in self.params:
            p.requires_grad_(True)
        self.teacher = copy.deepcopy(model).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.params, lr=1e-3, betas=(0.9, 0.999))
        self.capacity, self.update_frequency, self.k = capacity, update_frequency, num_classes
        self.classes: list[list[list]] = [[] for _ in range(num_classes)]  # items [x, entropy, age]
        self.seen = 0

    def score(self, age: int, entropy: float) -> float:
        return 1 / (1 + math.exp(-age / self.capacity)) + entropy / math.log(self.k)

    def offer(self, x: torch.Tensor, label: int, entropy: float) -> None:
        occupancy = sum(map(len, self.classes))
        if len(self.classes[label]) < self.capacity / self.k and occupancy < self.capacity:
            admit = True
        else:
            if len(self.classes[label]) < self.capacity / self.k:
                most = max(map(len, self.classes))
                pool = [c for c in range(self.k) if len(self.classes[c]) == most]
            else:
                pool = [label]
            best = None  # (score, class, index), the last of the highest
            for c in pool:
                for i, (_, e, age) in enumerate(self.classes[c]):
                    if best is None or self.score(age, e) >= best[0]:
                        best = (self.score(age, e), c, i)
            admit = best[0] > self.score(0, entropy)
            if admit:
                self.classes[best[1]].pop(best[2])
        if admit:
            self.classes[label].append([x, entropy, 0])
        for items in self.classes:
            for item in items:
                item[2] += 1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.teacher.eval()
            logits = self.teacher(x)
            p = logits.softmax(1)
            entropies = -(p * torch.log(p + 1e-6)).sum(1)
        for sample, label, entropy in zip(x, p.argmax(1), entropies):
            self.offer(sample, int(label), float(entropy))
            self.seen += 1
            if self.seen % self.update_frequency == 0:
                self.update()
        return logits

    def update(self) -> None:
        self.teacher.train(), self.student.train()
        memory = torch.stack([item[0] for items in self.classes for item in items])
        a = torch.tensor([item[2] for items in self.classes for item in items]).float() / self.capacity
        with torch.no_grad():
            teacher_logits = self.teacher(memory)
        with torch.enable_grad():
            student_logits = self.student(memory.flip(-1))
            cross_entropy = -(teacher_logits.softmax(1) * student_logits.log_softmax(1)).sum(1)
            loss = (cross_entropy * torch.exp(-a) / (1 + torch.exp(-a))).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), self.student.parameters()):
                t.copy_((1 - 0.001) * t + 0.001 * s)


def three_class_cnn() -> torch.nn.Module:
    """small_cnn with a three-class head whose predictions on ``varied_inputs`` are 2, 26 and 12 of 40."""
    model = build("small_cnn")
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model[-1] = torch.nn.Linear(16, 3)
    return model


def varied_inputs(batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 16, 16, generator=generator) + torch.randn(batch, 3, 1, 1, generator=generator) * 2


def test_over_rbn_equals_the_official_adapter_written_plainly() -> None:
    """Ten updates, most inside a batch; capacity 4 for 3 classes (quota 1.33): evictions from the own
    class and, when the rare class comes to a full memory, from the majority classes."""
    official = PlainRoTTA(three_class_cnn(), capacity=4, update_frequency=4, num_classes=3)
    ours = tta.attach_method(tta.adapt(three_class_cnn(), "rbn"), "rotta", capacity=4, update_frequency=4)
    ours.augmented = lambda data: data.flip(-1)
    worst = 0.0
    with torch.no_grad():
        for seed in range(8):
            x = varied_inputs(5, seed)
            worst = max(worst, (ours(x) - official(x)).abs().max().item())
    assert int(ours.updates) == 10
    assert sorted(ours.memory.labels.tolist()) == sorted(c for c, items in enumerate(official.classes) for _ in items)
    assert worst <= 1e-5
    for a, b in zip(ours.params, official.params):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-5)


def test_a_non_finite_sample_stays_out_of_the_memory_but_counts(caplog: pytest.LogCaptureFixture) -> None:
    model = rotta("small_cnn", update_frequency=4)
    x = inputs("small_cnn", 4, 0)
    x[1, 0, 0, 0] = float("nan")
    with caplog.at_level(logging.WARNING, logger="tta.methods.rotta"), torch.no_grad():
        model(x)
    assert "1 non-finite sample(s) kept out of the memory" in caplog.text
    assert len(model.memory) == 3 and int(model.updates) == 1 and int(model.instances) == 4
    assert all(torch.isfinite(p).all() for p in model.params + model.teacher_params)
    assert torch.isfinite(model(inputs("small_cnn", 4, 1))).all()


def test_an_update_that_finds_the_memory_empty_is_skipped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Every offered sample counts, as in the official code; the update its count triggers with nothing in
    the memory changes nothing: no forward, no step, no teacher average, no update counted."""
    model = rotta("small_cnn", update_frequency=16, capacity=16)
    before = snapshot(model)
    with caplog.at_level(logging.WARNING, logger="tta.methods.rotta"), torch.no_grad():
        out = model(torch.full((16, 3, 16, 16), float("nan")))
    assert out.shape == (16, 10)
    assert "the memory is empty" in caplog.text
    assert len(model.memory) == 0 and int(model.updates) == 0 and int(model.instances) == 16
    after = snapshot(model)
    after["instances"] = before["instances"]
    assert_same(after, before)
    with torch.no_grad():  # the next 16 finite samples fill the memory and update as usual
        model(inputs("small_cnn", 16, 1))
    assert int(model.updates) == 1 and len(model.memory) > 0
