"""tta.SlidingWindow: frame-by-frame prediction through a window of recent frames (Döbler et al.'s protocol
for batch size 1), checked against the same forwards written out by hand."""

from __future__ import annotations

import pytest
import torch

import tta
from tests.tta.conftest import build, inputs, snapshot


def frames(n: int, seed: int = 1) -> torch.Tensor:
    return inputs("small_cnn", n, seed)


def test_each_frame_is_predicted_from_the_window_of_the_last_frames_with_the_state_paused_between_updates():
    length, n = 4, 11
    x = frames(n)
    window = tta.SlidingWindow(tta.adapt(build("small_cnn"), "rbn"), length=length)
    reference = tta.adapt(build("small_cnn"), "rbn")  # the same forwards, by hand
    expected = []
    with torch.no_grad():
        got = window(x)
        for t in range(n):
            recent = x[max(0, t + 1 - length) : t + 1]
            if (t + 1) % length == 0:  # every length-th frame: an updating forward on a window of new frames
                out = reference(recent)
            else:
                with tta.paused(reference):
                    out = reference(recent)
            expected.append(out[-1:])
    torch.testing.assert_close(got, torch.cat(expected), rtol=0, atol=0)
    assert window.model.state_dict().keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(window.model.state_dict()[key], value), key


def test_the_state_moves_only_on_every_length_th_frame():
    model = tta.adapt(build("small_cnn"), "rbn")
    window = tta.SlidingWindow(model, length=3)
    before = snapshot(model)
    with torch.no_grad():
        window(frames(2))
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        window(frames(1, seed=2))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_frames_given_together_are_taken_one_after_another():
    x = frames(7)
    together = tta.SlidingWindow(tta.adapt(build("small_cnn"), "adabn"), length=3)
    one_by_one = tta.SlidingWindow(tta.adapt(build("small_cnn"), "adabn"), length=3)
    with torch.no_grad():
        a = together(x)
        b = torch.cat([one_by_one(x[i : i + 1]) for i in range(len(x))])
    assert a.shape == (7, 10)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_learner_takes_its_step_only_when_the_window_updates():
    learner = tta.attach_method(tta.adapt(build("small_cnn"), "tbn"), "tent", lr=1e-2)
    window = tta.SlidingWindow(learner, length=4)
    weights = [p.detach().clone() for p in learner.parameters() if p.requires_grad]
    window(frames(3))
    assert all(torch.equal(w, p) for w, p in zip(weights, (p for p in learner.parameters() if p.requires_grad)))
    window(frames(1, seed=3))
    assert any(not torch.equal(w, p) for w, p in zip(weights, (p for p in learner.parameters() if p.requires_grad)))


def test_reset_empties_the_window_and_resets_the_model():
    model = tta.adapt(build("small_cnn"), "rbn")
    after_attach = snapshot(model)
    window = tta.SlidingWindow(model, length=2)
    x = frames(5)
    with torch.no_grad():
        first = window(x)
        tta.reset(window)
        assert window.frames is None
        assert all(torch.equal(after_attach[k], v) for k, v in model.state_dict().items())
        torch.testing.assert_close(window(x), first, rtol=0, atol=0)


def test_paused_window_updates_nothing_and_keeps_its_schedule():
    model = tta.adapt(build("small_cnn"), "rbn")
    window = tta.SlidingWindow(model, length=2)
    before = snapshot(model)
    with torch.no_grad(), tta.paused(window):
        window(frames(6))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not window.paused


@pytest.mark.parametrize("length", [1, 0, 2.0, True, "4"])
def test_a_window_of_fewer_than_two_frames_or_not_an_integer_is_refused(length):
    with pytest.raises(ValueError, match="length must be an integer of at least 2"):
        tta.SlidingWindow(tta.adapt(build("small_cnn"), "rbn"), length=length)


def test_a_model_that_is_not_adapted_is_refused():
    with pytest.raises(ValueError, match="not adapted"):
        tta.SlidingWindow(build("small_cnn"))


def test_a_frame_of_another_shape_is_refused_before_the_window_changes():
    window = tta.SlidingWindow(tta.adapt(build("small_cnn"), "tbn"), length=3)
    with torch.no_grad():
        window(frames(2))
        kept = window.frames.clone()
        with pytest.raises(ValueError, match="cannot join a window"):
            window(torch.rand(1, 3, 4, 4))
    assert torch.equal(window.frames, kept) and window.new_frames == 2
