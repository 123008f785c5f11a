"""The README's "## Streams" example runs as written (on a small stream) and resets between episodes."""

import warnings
from pathlib import Path

from torch import nn

import tta
from tests.test_readme import README, python_blocks


def streams_example() -> str:
    """The first python code block of the README's "## Streams" section."""
    return python_blocks("Streams")[0]


def shrink(code: str, cache_dir: Path) -> str:
    """Two cheap corruptions, 200 images, a temporary cache; each substitution must apply exactly once."""
    for old, new in [
        ('corruptions="all"', 'corruptions=["brightness", "contrast"]'),
        ("seed=0)", f"seed=0, n_examples=200, cache_dir={str(cache_dir)!r})"),
    ]:
        assert code.count(old) == 1, f"README Streams example no longer contains {old!r} once; update this test"
        code = code.replace(old, new)
    return code


def test_readme_streams_example_runs_and_resets_the_model_before_each_episode(tmp_path, monkeypatch):
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)
    ).eval()
    tta.adapt(model, "rbn")
    events = []
    model.register_forward_hook(lambda module, args, out: events.append(("forward", len(args[0]))))
    real_reset = tta.reset
    monkeypatch.setattr(tta, "reset", lambda m: (events.append(("reset", m is model)), real_reset(m))[1])

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. the flat-iteration warning of a single stream
        exec(compile(shrink(streams_example(), tmp_path), str(README), "exec"), {"model": model})

    # two domains (brightness, contrast), 200 images each in batches of 64: 64, 64, 64, 8
    episode = [("reset", True)] + [("forward", n) for n in (64, 64, 64, 8)]
    assert events == episode * 2
