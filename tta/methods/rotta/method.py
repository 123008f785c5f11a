"""``rotta``: RoTTA's teacher-student adaptation from a category-balanced memory. See :doc:`/methods/rotta`."""

from __future__ import annotations

import copy
import logging
from typing import Annotated

import torch
from torch import Tensor, nn

from tta.methods.base import LEARNING_RATE, GradientMethod, seeded_generator
from tta.methods.rotta.augment import strong_augment, vision_functional
from tta.methods.rotta.memory import CSTUMemory
from tta.options import Choice, Range
from tta.policies.base import NormPolicy, pausing
from tta.registry import register_method

logger = logging.getLogger(__name__)


def timeliness_weights(ages: Tensor, capacity: int) -> Tensor:
    """``exp(-a) / (1 + exp(-a))`` with ``a = age / capacity``: older memory items weigh less."""
    a = ages.to(torch.float32) / capacity
    return torch.exp(-a) / (1 + torch.exp(-a))


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Per-sample cross-entropy of the student's prediction against the teacher's soft labels."""
    return -(teacher_logits.softmax(1) * student_logits.log_softmax(1)).sum(1)


@register_method("rotta")
class RoTTA(GradientMethod):
    """The teacher predicts; every sample is offered to a category-balanced memory; every
    ``update_frequency`` samples the teacher's statistics update on the memory and the student learns from it.

    Yuan et al. CVPR 2023, "Robust test-time adaptation in dynamic scenarios" (official ``BIT-DA/RoTTA``,
    ``core/adapter/rotta.py``). Over ``rbn`` this is RoTTA; over ``unmix_tns`` the UnMix-TNS paper's
    "RoTTA + UnMix-TNS"; it runs over every policy. Per batch: the teacher (a copy of the adapted model
    made at attach, held in the learner) predicts with its layers paused; each sample, with the teacher's
    pseudo-label and entropy ``-sum p log(p + 1e-6)``, is offered to the memory
    (:class:`tta.methods.rotta.memory.CSTUMemory`). Every ``update_frequency`` offered samples (counted
    across batches, so an update can fall inside a batch) the teacher forwards the memory (its statistics
    update), the student (the adapted model itself) forwards the augmented memory (its statistics
    update), one Adam step on the student's affine parameters minimizes the soft cross-entropy to the
    teacher weighted by :func:`timeliness_weights`, and the teacher's affine parameters move by ``nu``
    towards the student's. The prediction returned for a batch is the teacher's, before the updates its
    samples trigger; :func:`tta.paused` predicts with the teacher too. The number of classes is the width
    of the teacher's output at the first batch.

    Args:
        capacity: the memory's size in samples, >= 1; the quota of a class is ``capacity / classes``.
        update_frequency: an update every this many offered samples, >= 1.
        lr: the student's Adam learning rate, in (0, 1].
        beta1: Adam's first-moment decay, in [0, 1).
        beta2: Adam's second-moment decay, in [0, 1).
        weight_decay: Adam's L2 penalty on the student's affine parameters, >= 0.
        nu: the teacher's step towards the student at each update (an EMA of the affine parameters), in [0, 1].
        lambda_t: the weight of an item's age (timeliness) in the memory's eviction score, >= 0.
        lambda_u: the weight of an item's prediction entropy (uncertainty) in the eviction score, >= 0.
        augment: what the student sees of the memory. ``"strong"``: the official strong augmentation for
            image batches of 1 or 3 channels in [0, 1], Gaussian noise only for other inputs
            (:func:`tta.methods.rotta.augment.strong_augment`; needs torchvision). ``"noise"``: Gaussian noise
            only. ``"none"``: the memory as it is.
        noise_std: the standard deviation of the augmentation's Gaussian noise, >= 0.
        seed: the k-th update's augmentation draws from a generator seeded by ``(seed, k)``, so one seed
            gives the same predictions, and :func:`tta.reset` replays them.

    See :doc:`/methods/rotta` (the rule, the departures from the official code, when to use it).
    """

    instances: Tensor
    updates: Tensor

    def __init__(
        self,
        model: nn.Module,
        *,
        capacity: Annotated[int, Range(1)] = 64,
        update_frequency: Annotated[int, Range(1)] = 64,
        lr: Annotated[float, LEARNING_RATE] = 1e-3,
        beta1: Annotated[float, Range(0, 1, high_open=True)] = 0.9,
        beta2: Annotated[float, Range(0, 1, high_open=True)] = 0.999,
        weight_decay: Annotated[float, Range(0)] = 0.0,
        nu: Annotated[float, Range(0, 1)] = 0.001,
        lambda_t: Annotated[float, Range(0)] = 1.0,
        lambda_u: Annotated[float, Range(0)] = 1.0,
        augment: Annotated[str, Choice("strong", "noise", "none")] = "strong",
        noise_std: Annotated[float, Range(0)] = 0.005,
        seed: Annotated[int, Range(0)] = 0,
    ) -> None:
        if augment == "strong":
            vision_functional()  # the missing package is named before anything changes
        super().__init__(model)
        self.capacity, self.update_frequency = capacity, update_frequency
        self.lr, self.beta1, self.beta2, self.weight_decay, self.nu = lr, beta1, beta2, weight_decay, nu
        self.lambda_t, self.lambda_u = lambda_t, lambda_u
        self.augment, self.noise_std, self.seed = augment, noise_std, seed
        self.train_affine(lr=lr, betas=(beta1, beta2), weight_decay=weight_decay)
        self.teacher = copy.deepcopy(model).requires_grad_(False)
        self.teacher_layers = [m for m in self.teacher.modules() if isinstance(m, NormPolicy)]
        self._hold(self.teacher_layers)
        self.teacher_params = list(
            {id(p): p for layer in self.teacher_layers for p in layer.affine_parameters()}.values()
        )
        self.memory = CSTUMemory(capacity, lambda_t, lambda_u)
        device = self.initial_affine.device
        self.register_buffer("instances", torch.zeros((), dtype=torch.int64, device=device))
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64, device=device))

    def predict(self, x: Tensor) -> Tensor:
        return self.teacher(x)

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        with torch.inference_mode(False):
            x = x.clone() if x.is_inference() else x.detach()
            with torch.no_grad(), pausing(self.teacher_layers):
                logits = self.check_logits(self.teacher(x), len(x))
            probs = logits.detach().softmax(1)
            labels = probs.argmax(1).tolist()
            entropies = -(probs * torch.log(probs + 1e-6)).sum(1)
            finite = (torch.isfinite(x.flatten(1)).all(1) & torch.isfinite(entropies)).tolist()
            if not all(finite):
                logger.warning("rotta: %d non-finite sample(s) kept out of the memory", finite.count(False))
            seen = int(self.instances)
            for sample, label, entropy, ok in zip(x, labels, entropies.tolist(), finite):
                if ok:
                    self.memory.add(sample, label, entropy, num_classes=logits.shape[1])
                seen += 1
                if seen % self.update_frequency == 0:
                    self.update_model()
            self.instances.fill_(seen)
        return logits

    def update_model(self) -> None:
        """Teacher and student see the memory, one Adam step on the student, the teacher's EMA; with an
        empty memory (every sample since the start non-finite) nothing, logged."""
        if not len(self.memory):
            logger.warning("rotta: an update is due but the memory is empty; it is skipped")
            return
        data, ages = self.memory.contents()
        with torch.no_grad():
            teacher_logits = self.check_logits(self.teacher(data), len(data))
        augmented = self.augmented(data)
        with torch.enable_grad():
            student_logits = self.check_logits(self.model(augmented), len(augmented))
            weights = timeliness_weights(ages, self.capacity).to(student_logits.device)
            self.step((soft_cross_entropy(student_logits, teacher_logits) * weights).mean())
        with torch.no_grad():
            for teacher_p, student_p in zip(self.teacher_params, self.params):
                teacher_p.copy_((1 - self.nu) * teacher_p + self.nu * student_p)
        self.updates += 1

    def augmented(self, data: Tensor) -> Tensor:
        """The memory as the student sees it, drawn from the generator of this update."""
        if self.augment == "none":
            return data
        generator = seeded_generator(self.seed, int(self.updates))
        if self.augment == "noise":
            noise = torch.randn(data.shape, generator=generator, dtype=torch.float32) * self.noise_std
            return data + noise.to(data.device, data.dtype)
        return strong_augment(data, generator, self.noise_std)

    def reset(self) -> None:
        super().reset()
        self._restore_affine(self.teacher_params)
        self.memory.reset()
        self.instances.zero_()
        self.updates.zero_()

    def release(self, keep_adapted: bool = False) -> nn.Module:
        """The student model; ``keep_adapted`` first gives it the teacher's parameters and statistics (the
        model that predicts), so the baked model normalizes as the teacher does now."""
        if keep_adapted:
            self.model.load_state_dict(self.teacher.state_dict())
        return super().release(keep_adapted)
