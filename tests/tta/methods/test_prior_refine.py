"""``prior_refine`` (ours): the label-prior correction and the refinement worked by hand on tiny logits and
features, the paused prediction, its estimates against ``rebalance``'s, stacking on other policies, the
checked options, and ``rebalance`` with it against the policy's predictions before the split."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import tta
import tta_streams
from tests.tta.conftest import build, give_source_statistics, inputs
from tests.tta.policies.test_rebalance import oracle_model, two_class_stream
from tta.laplacian import laplacian_optimization
from tta_bench.models import load_bundled_model

# Four samples of 4 features; the classifier keeps the first three as the logits of K = 3 classes, so the
# argmax is (0, 0, 0, 1): the batch's predicted histogram h = (3/4, 1/4, 0). The fourth feature puts rows 0
# and 1 near +e4 and rows 2 and 3 near -e4 once normalized: each row's nearest other row is its pair's.
FEATURES = torch.tensor([[1.0, 0.0, 0.0, 5.0], [1.0, 0.2, 0.0, 5.0], [1.0, 0.0, 0.0, -5.0], [0.0, 1.0, 0.0, -5.0]])
NEAREST = torch.tensor([[0.0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]])  # kNN affinity, k = 1
HISTOGRAM = torch.tensor([0.75, 0.25, 0.0])


def hand_model() -> nn.Module:
    """A BatchNorm1d that is the identity at its source statistics (mean 0, variance 1 - eps), then a
    classifier whose logits are the first three of the four features."""
    bn = nn.BatchNorm1d(4, affine=False)
    bn.running_var.fill_(1 - bn.eps)
    head = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3, 4))
    return nn.Sequential(bn, head).eval()


def settled(rho: float, **options: object) -> tta.Method:
    """The method over ``source`` (the model's features are the input) after 999 batches whose usual prediction
    and last composition are uniform, with lag products (rho, 1). At ``momentum=0.05`` per batch of 4
    (``reference_batch=4``) the next batch's lag products move at 0.05 from (rho, 1) towards (0, 0) (the last
    composition is the usual one), so their ratio stays rho, and the warm-up min(1000 x 0.05, 1) is 1: rho it
    is. The usual prediction moves at 0.005 (a tenth of the momentum, above 1/1000) to
    u' = 1/3 + 0.005 (h - 1/3)."""
    learner = tta.attach_method(
        tta.adapt(hand_model(), "source"), "prior_refine", momentum=0.05, reference_batch=4, **options
    )
    learner.steps.fill_(999)
    learner.lag_products.copy_(torch.tensor([rho, 1.0]))
    return learner


def hand_prior(rho: float) -> torch.Tensor:
    """pi = 1/3 + rho (h - u') = 1/3 + 0.995 rho (h - 1/3), floored at 0.01 / 3."""
    return (1 / 3 + 0.995 * rho * (HISTOGRAM - 1 / 3)).clamp_min(0.01 / 3)


def test_the_logits_move_by_the_log_of_k_times_the_estimated_prior() -> None:
    """With rho = 1, pi = (1/3 + 0.995 x 5/12, 1/3 - 0.995 / 12, 1/3 - 0.995 / 3 = 1/600): the last is floored
    at 1/300."""
    learner = settled(1.0, refine=False)
    with torch.no_grad():
        out = learner(FEATURES)
    expected_prior = torch.tensor([1 / 3 + 0.995 * 5 / 12, 1 / 3 - 0.995 / 12, 1 / 300])
    torch.testing.assert_close(hand_prior(1.0), expected_prior)
    torch.testing.assert_close(out - FEATURES[:, :3], torch.log(3 * expected_prior).expand(4, -1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(learner.rho, torch.tensor(1.0))
    torch.testing.assert_close(learner.guess, torch.tensor([*expected_prior[:2], 1 / 600]))  # stored unfloored
    assert int(learner.steps) == 1000


@pytest.mark.parametrize("rho", [1.0, 0.25])
def test_the_refinement_is_lame_on_the_corrected_logits_with_the_affinity_scaled_by_sqrt_rho(rho: float) -> None:
    """LAME's bound iterations (checked by hand in test_lame) on -log softmax of the corrected logits, with the
    kNN affinity of the four rows (k = 1: the pairs) times sqrt(rho)."""
    learner = settled(rho, knn=1)
    with torch.no_grad():
        out = learner(FEATURES)
    corrected = FEATURES[:, :3] + torch.log(3 * hand_prior(rho))
    expected = laplacian_optimization(-torch.log(corrected.softmax(1) + 1e-10), math.sqrt(rho) * NEAREST)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert out[1].argmax() == 0 and (out[3].softmax(0)[0] > corrected[3].softmax(0)[0])  # pulled by its pair


def test_with_rho_zero_nothing_moves_but_the_normalization_of_the_logits() -> None:
    learner = settled(0.0, knn=1)
    with torch.no_grad():
        out = learner(FEATURES)
    torch.testing.assert_close(out, FEATURES[:, :3].log_softmax(1), rtol=1e-5, atol=1e-6)


def test_without_correction_and_refinement_the_output_is_the_model_s() -> None:
    learner = settled(1.0, correct=False, refine=False)
    with torch.no_grad():
        assert torch.equal(learner(FEATURES), learner.model(FEATURES))


def test_the_first_batch_counts_alone_and_corrects_nothing() -> None:
    """Batch 1: u = h, the lag products stay 0 (no predecessor), so rho = 0 and pi is uniform."""
    learner = tta.attach_method(tta.adapt(hand_model(), "source"), "prior_refine", refine=False)
    with torch.no_grad():
        out = learner(FEATURES)
    torch.testing.assert_close(out, FEATURES[:, :3], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(learner.composition, HISTOGRAM)
    torch.testing.assert_close(learner.usual_composition, HISTOGRAM)
    assert torch.equal(learner.lag_products, torch.zeros(2)) and float(learner.rho) == 0 and int(learner.steps) == 1


def test_a_paused_prediction_is_the_adapting_one_and_changes_nothing() -> None:
    """Over ``tbn`` (the batch's own statistics, paused or not) the paused output on each state of a stream is
    what the adapting call gives on a copy of that state; the paused learner's state is left as it was."""
    learner = tta.attach_method(tta.adapt(build("small_cnn"), "tbn"), "prior_refine")
    with torch.no_grad():
        for seed in range(4):
            learner(inputs("small_cnn", 16, seed))
        learner.lag_products.copy_(torch.tensor([1.0, 1.0]))  # rho near 1: the correction and refinement act
        for seed in range(4, 7):
            x = inputs("small_cnn", 16, seed)
            paused = copy.deepcopy(learner)
            state = copy.deepcopy(paused.state_dict())
            with tta.paused(paused):
                got = paused(x)
            assert all(torch.equal(v, paused.state_dict()[k]) for k, v in state.items() if k != "_extra_state")
            expected = learner(x)
            assert torch.equal(got, expected)
            assert int(learner.steps) == int(paused.steps) + 1  # the adapting call counted the batch
            assert not torch.allclose(got, paused.model(x).log_softmax(1), atol=1e-3)


@pytest.mark.parametrize("policy", ["tbn", "adabn", "rbn"])
def test_it_stacks_on_other_policies(policy: str) -> None:
    learner = tta.attach_method(tta.adapt(build("small_cnn"), policy), "prior_refine")
    with torch.no_grad():
        for seed in range(4):
            out = learner(inputs("small_cnn", 8, seed))
            assert out.shape == (8, 10) and torch.isfinite(out).all()
    assert int(learner.steps) == 4 and torch.isclose(learner.guess.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("follow_restarts", [True, False])
def test_over_rebalance_its_estimates_are_the_policy_s_and_restart_with_its_pool(follow_restarts: bool) -> None:
    """Both estimate from the same argmax with the same rates: after every batch the learner's composition,
    usual prediction, lag products and guess equal each layer's, and its batch count is the pool's age; a
    shifted domain restarts the pool (the old content counts as one batch) and, followed, the estimates;
    not followed, the usual prediction goes on from the old domain's."""
    model = tta.adapt(oracle_model(), "rebalance")
    learner = tta.attach_method(model, "prior_refine", follow_restarts=follow_restarts)
    layer = model[0]
    stream = [x for x, _ in two_class_stream(runs=6, run_length=5, batch=32)]  # rebalance detects no change
    with torch.no_grad():
        for x in [*stream, stream[-1] + 3.0, stream[-2] + 3.0]:
            learner(x)
            assert torch.equal(learner.composition, layer.composition)  # the last batch's histogram
            if follow_restarts or not layer.restarts:
                for name in ("usual_composition", "lag_products", "guess"):
                    assert torch.equal(getattr(learner, name), getattr(layer, name)), name
                assert int(learner.steps) == int(layer.pool_age)
    assert int(layer.restarts) == 1 and int(layer.pool_age) == 2  # restarted at the first shifted batch
    assert int(learner.steps) == (2 if follow_restarts else 42)
    assert torch.equal(learner.usual_composition, layer.usual_composition) == follow_restarts


def test_options_are_checked_and_nothing_is_attached_by_a_refused_one() -> None:
    model = tta.adapt(build("small_cnn"), "tbn")
    with pytest.raises(ValueError, match="option 'momentum' must lie in"):
        tta.attach_method(model, "prior_refine", momentum=0.0)
    with pytest.raises(ValueError, match="option 'momentum' must lie in"):
        tta.attach_method(model, "prior_refine", momentum=1.5)
    with pytest.raises(TypeError, match="option 'momentum'"):
        tta.attach_method(model, "prior_refine", momentum="0.1")
    with pytest.raises(ValueError, match="option 'reference_batch' must lie in"):
        tta.attach_method(model, "prior_refine", reference_batch=0)
    with pytest.raises(ValueError, match="option 'knn' must lie in"):
        tta.attach_method(model, "prior_refine", knn=0)
    for option in ("correct", "refine", "follow_restarts"):
        with pytest.raises(TypeError, match=f"option '{option}' must be a bool"):
            tta.attach_method(model, "prior_refine", **{option: 1})
    with pytest.raises(ValueError, match="has no option 'refine_outputs'"):
        tta.attach_method(model, "prior_refine", refine_outputs=True)
    assert not model[-1]._forward_pre_hooks
    learner = tta.attach_method(model, "prior_refine")
    assert learner.momentum == 0.1  # the BatchNorm momentum of the first layer, as rebalance takes it
    assert len(model[-1]._forward_pre_hooks) == 1
    assert tta.detach(learner) is model and not model[-1]._forward_pre_hooks


def test_a_model_without_a_linear_classifier_is_refused() -> None:
    model = tta.adapt(give_source_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))), "tbn")
    with pytest.raises(ValueError, match=r"from the model's last nn\.Linear, and Sequential has none"):
        tta.attach_method(model, "prior_refine", refine=False)


class Doubled(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x], 1)


def test_logits_of_another_size_than_the_classifier_s_are_named_before_any_state_changes() -> None:
    model = tta.adapt(give_source_statistics(nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 3), Doubled())), "adabn")
    learner = tta.attach_method(model, "prior_refine")
    state = copy.deepcopy(learner.state_dict())
    with pytest.raises(ValueError, match=r"the 3 classes of the model's last nn.Linear; the model returned \(5, 6\)"):
        learner(torch.randn(5, 4))
    assert all(torch.equal(v, learner.state_dict()[k]) for k, v in state.items() if k != "_extra_state")


def test_a_cast_keeps_the_estimates_in_their_dtype() -> None:
    learner = tta.attach_method(tta.adapt(build("small_cnn"), "tbn"), "prior_refine").double()
    assert learner.composition.dtype == torch.float32 and learner.model[-1].weight.dtype == torch.float64


# Today's rebalance with its defaults, before its output step became this method, on the bundled model: per
# batch of 64 the argmax of the 64 logits, and the sum of the logits and of their squares. Recorded from the
# code before the split by /work/scratch/split/record_today.py (run with that code's interpreter) and printed
# by gen_literal.py (BEFORE_THE_SPLIT "dirichlet:0.1,iid,continual" default). The continual stream (fog,
# brightness, contrast, glass_blur; 256 images each, Dirichlet-sorted) restarts rebalance's pool four times.
BEFORE_THE_SPLIT = {
    "dirichlet:0.1": (
        [
            "6601002880852603569085590898538999059477954206669009626484066669",
            "6660936933663906360906922624690696852848055955505588000805886850",
            "6303069638022226902262200464686669482804004440246060465666442244",
            "6046606866006326066005660000006206620000291913111191121111882681",
            "0111121531911191611639119110666160006895858328086838586688588008",
            "6288629855898099205059957552089908922664566668665599666666260436",
            "6666669665660666699099097998999990959699009009622296024666040888",
            "8585988686222628666324252622822622226226223226222222636226262622",
        ],
        [
            (-1702.341546, 4964.731203),
            (-1730.507811, 5155.645154),
            (-1732.525642, 5167.766832),
            (-1755.577523, 5320.137821),
            (-1893.819704, 6397.280069),
            (-1899.913202, 6440.127362),
            (-2048.708151, 7636.219019),
            (-2237.857151, 9249.376966),
        ],
    ),
    "iid": (
        [
            "2123545099540018158465963808831239600620666674688896502600486956",
            "5998609004694626262392059905558971954016641290856150668027656624",
            "1381689964105386824266111266056276262681639300015206096162063935",
            "6104853660364596226953429895259369380006664686640548266670266652",
            "0594110625802699469586039640660408980692687066208862032081650099",
            "3848240330089001086831869006000204411688806596236604260201184006",
            "0025664695004409865919014645825560904020999889605100623851944309",
            "5926591066228286158002006310665955632512609220608606969466056620",
        ],
        [
            (-1788.038598, 5555.063258),
            (-1825.167920, 5859.940512),
            (-1806.272097, 5712.454614),
            (-1781.468765, 5542.165712),
            (-1734.962087, 5183.115032),
            (-1851.981689, 6028.065890),
            (-1929.884079, 6636.486516),
            (-1872.494447, 6192.267410),
        ],
    ),
    "continual": (
        [
            "9999599500805640666625464644600823289660600006664822263626620225",
            "6222222422460619335296959991116119084508086068848203680885799083",
            "9060060003062601669111331111361111911114406246644636690368006888",
            "6907995970983855005959879926636686666060216955100555587085504955",
            "5558888886776622225550644222224222222226264646666666662666777777",
            "7777775777777777771363343133334333322622255555580600588888888888",
            "8882321111111644244644444224422111111111111111111111855555599999",
            "5799999999999999860000600000600079970000003444444444231111042625",
            "8858880880888862522225222626628188155535018053335566550606675858",
            "8685086866555557555555555552111222622666662620802666262262262111",
            "1111621111160185775555797597557557668666631888888998888885789998",
            "9995008560400020032955584666386668656066402222226360955583232227",
            "6662666664364625243424444164846624634469482234636662266662433333",
            "3363111137888997999979979997940334367777779999999768688888777313",
            "1113111113111300000000000006006030214233777788888888888811606270",
            "0006131113777777777777703337757587777755775777262343266428622844",
        ],
        [
            (-1789.441773, 5581.135240),
            (-1780.690389, 5519.818498),
            (-1871.959081, 6202.012770),
            (-1757.471621, 5365.646528),
            (-1960.051287, 6816.125132),
            (-1934.164446, 6611.653524),
            (-2220.566976, 8761.468668),
            (-2314.920661, 9507.080904),
            (-2041.328974, 7547.550480),
            (-2073.698735, 7793.179100),
            (-1858.333082, 6044.462742),
            (-1807.201216, 5706.471839),
            (-1743.554177, 5243.974151),
            (-1872.450970, 6123.362211),
            (-2056.937475, 7499.910807),
            (-1941.205915, 6637.933520),
        ],
    ),
}

STREAMS = {
    "dirichlet:0.1": {"corruptions": ["fog"], "n_examples": 512, "order": "dirichlet:0.1"},
    "iid": {"corruptions": ["fog"], "n_examples": 512, "order": "iid"},
    "continual": {
        "corruptions": ["fog", "brightness", "contrast", "glass_blur"],
        "n_examples": 256,
        "order": "dirichlet:0.1",
        "setting": "continual",
    },
}


@pytest.mark.parametrize("stream", list(BEFORE_THE_SPLIT))
def test_rebalance_with_prior_refine_predicts_as_rebalance_did_before_the_split(stream: str) -> None:
    argmax, sums = BEFORE_THE_SPLIT[stream]
    learner = tta.attach_method(tta.adapt(load_bundled_model().eval(), "rebalance"), "prior_refine")
    batches = tta_streams.Stream("fmnist", severities=5, batch_size=64, seed=0, **STREAMS[stream])
    with torch.no_grad():
        logits = [learner(batch.x) for batch in batches]
    assert ["".join(map(str, out.argmax(1).tolist())) for out in logits] == argmax
    got = torch.tensor([(out.double().sum(), out.double().square().sum()) for out in logits], dtype=torch.float64)
    torch.testing.assert_close(got, torch.tensor(sums, dtype=torch.float64), rtol=1e-5, atol=1e-3)
