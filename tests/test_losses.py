"""Safe-CLIP loss: every term against values computed by hand, weighting, text-only mode, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from safeclip_sdk.errors import SafeclipError
from safeclip_sdk.methods.losses import contrastive_loss, cosine_distance, resolve_temperature
from safeclip_sdk.methods.safe_clip.config import REFERENCE_WEIGHTS as SAFE_CLIP_REFERENCE_WEIGHTS
from safeclip_sdk.methods.safe_clip.config import SafeClipConfig as LossConfig
from safeclip_sdk.methods.safe_clip.losses import SafeClipEmbeddings, SafeClipLoss

IMAGE_UNSAFE_TERMS = {"image_unsafe_cos", "image_unsafe_contrastive"}
IMAGE_SAFE_TERMS = {"image_safe_cos", "image_safe_contrastive"}


def _unit(row: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in row))
    return [x / norm for x in row]


def _cosine_distance_by_hand(a: torch.Tensor, b: torch.Tensor) -> float:
    distances = [1 - sum(x * y for x, y in zip(_unit(ra), _unit(rb))) for ra, rb in zip(a.tolist(), b.tolist())]
    return sum(distances) / len(distances)


def _infonce_by_hand(a: torch.Tensor, b: torch.Tensor, tau: float) -> float:
    """0.5 * (mean_i -log softmax_j(s_ij)[i] + mean_j -log softmax_i(s_ij)[j]), s = cos / tau."""
    ua, ub = [_unit(r) for r in a.tolist()], [_unit(r) for r in b.tolist()]
    n = len(ua)
    s = [[sum(x * y for x, y in zip(ua[i], ub[j])) / tau for j in range(n)] for i in range(n)]
    rows = [-s[i][i] + math.log(sum(math.exp(s[i][j]) for j in range(n))) for i in range(n)]
    cols = [-s[j][j] + math.log(sum(math.exp(s[i][j]) for i in range(n))) for j in range(n)]
    return 0.5 * (sum(rows) / n + sum(cols) / n)


def _embeddings(seed: int = 0, n: int = 3, dim: int = 3, **drop) -> SafeClipEmbeddings:
    generator = torch.Generator().manual_seed(seed)
    fields = ["text_safe", "text_unsafe", "ref_text_safe", "ref_image_safe", "image_safe", "image_unsafe"]
    values = {name: torch.randn(n, dim, generator=generator, dtype=torch.float64) for name in fields}
    values.update(drop)
    return SafeClipEmbeddings(**values)


def _terms_by_hand(emb: SafeClipEmbeddings, tau: float) -> dict[str, float]:
    """methods.md section 1, written out term by term."""
    terms = {
        "text_safe_cos": _cosine_distance_by_hand(emb.text_safe, emb.ref_text_safe),
        "text_unsafe_cos": _cosine_distance_by_hand(emb.text_unsafe, emb.ref_text_safe),
        "text_safe_contrastive": _infonce_by_hand(emb.text_safe, emb.ref_image_safe, tau),
        "text_unsafe_contrastive": _infonce_by_hand(emb.text_unsafe, emb.ref_image_safe, tau),
    }
    if emb.image_safe is not None:
        terms["image_safe_cos"] = _cosine_distance_by_hand(emb.image_safe, emb.ref_image_safe)
        terms["image_safe_contrastive"] = _infonce_by_hand(emb.image_safe, emb.ref_text_safe, tau)
    if emb.image_unsafe is not None:
        terms["image_unsafe_cos"] = _cosine_distance_by_hand(emb.image_unsafe, emb.ref_image_safe)
        terms["image_unsafe_contrastive"] = _infonce_by_hand(emb.image_unsafe, emb.ref_text_safe, tau)
    return terms


def test_contrastive_loss_of_matching_orthonormal_pairs():
    # logits = identity / tau: each row's CE is log(1 + e^(-1/tau)) for two items
    eye = torch.eye(2)
    assert contrastive_loss(eye, eye, tau=1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert contrastive_loss(eye, eye, tau=0.5).item() == pytest.approx(math.log(1 + math.exp(-2)))
    # swapped pairs: the right answer has logit 0, the wrong one 1/tau
    assert contrastive_loss(eye, eye.flip(0), tau=1.0).item() == pytest.approx(math.log(1 + math.exp(1)))


def test_contrastive_loss_matches_hand_computation_and_ignores_scale():
    a = torch.tensor([[1.0, 2.0, 0.5], [-0.3, 1.0, 2.0], [0.7, -1.2, 0.1]], dtype=torch.float64)
    b = torch.tensor([[0.9, 1.5, -0.2], [0.1, 0.4, 1.8], [1.0, -1.0, 0.3]], dtype=torch.float64)
    for tau in (0.01, 0.1, 1.0):
        assert contrastive_loss(a, b, tau).item() == pytest.approx(_infonce_by_hand(a, b, tau), rel=1e-9)
    assert contrastive_loss(3 * a, 0.5 * b, 0.1).item() == pytest.approx(_infonce_by_hand(a, b, 0.1), rel=1e-9)
    # autocast hands over half-precision features: the loss is still computed in fp32
    low = contrastive_loss(a.bfloat16(), b.bfloat16(), 0.1)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(_infonce_by_hand(a, b, 0.1), rel=2e-2)


def test_cosine_distance_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 3.0], [2.0, 2.0], [-1.0, 0.0]])
    # orthogonal: 1, same direction: 0, opposite: 2
    assert cosine_distance(a, b).item() == pytest.approx((1 + 0 + 2) / 3)


def test_each_term_equals_its_hand_computed_value():
    emb = _embeddings()
    tau = 0.1
    _, terms = SafeClipLoss(LossConfig(tau=tau))(emb)
    expected = _terms_by_hand(emb, tau)
    assert set(terms) == set(SAFE_CLIP_REFERENCE_WEIGHTS)
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-9), name


def test_tau_is_applied_as_given():
    emb = _embeddings(seed=1)
    _, terms = SafeClipLoss(LossConfig(tau=0.01))(emb)
    expected = _infonce_by_hand(emb.text_unsafe, emb.ref_image_safe, 0.01)
    assert terms["text_unsafe_contrastive"].item() == pytest.approx(expected, rel=1e-9)


def test_default_tau_is_the_base_models_own_which_is_the_reference_for_openai_clip(tiny_model):
    assert LossConfig().tau == "base"
    model = tiny_model.model
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))  # OpenAI CLIP's trained logit scale
        assert resolve_temperature("base", model, "safe_clip.tau") == pytest.approx(0.01)
        model.logit_scale.fill_(math.log(1 / 0.07))  # open_clip's initial one, the demo base's
        assert resolve_temperature("base", model, "safe_clip.tau") == pytest.approx(0.07)
    assert resolve_temperature(0.03, model, "safe_clip.tau") == 0.03
    with pytest.raises(SafeclipError, match="'safe_clip.tau': the base model has no logit_scale"):
        resolve_temperature("base", torch.nn.Linear(2, 2), "safe_clip.tau")


def test_sum_normalisation_divides_once_by_the_sum_of_all_weights():
    loss = SafeClipLoss(LossConfig(tau=0.01))
    weight_sum = 0.1 + 0.1 + 0.1 + 0.2 + 0.25 + 0.25 + 0.25 + 0.5
    expected = {name: weight / weight_sum for name, weight in SAFE_CLIP_REFERENCE_WEIGHTS.items()}
    assert loss.effective_weights == pytest.approx(expected)
    assert sum(loss.effective_weights.values()) == pytest.approx(1.0)

    emb = _embeddings(seed=2)
    total, terms = loss(emb)
    by_hand = _terms_by_hand(emb, 0.01)
    assert total.item() == pytest.approx(sum(expected[name] * by_hand[name] for name in by_hand), rel=1e-9)


def test_no_normalisation_uses_weights_as_given():
    weights = {name: float(i + 1) for i, name in enumerate(SAFE_CLIP_REFERENCE_WEIGHTS)}
    loss = SafeClipLoss(LossConfig(tau=0.5, weights=weights, normalization="none"))
    assert loss.effective_weights == weights
    emb = _embeddings(seed=3)
    total, _ = loss(emb)
    by_hand = _terms_by_hand(emb, 0.5)
    assert total.item() == pytest.approx(sum(weights[name] * by_hand[name] for name in by_hand), rel=1e-9)


def test_text_only_mode_drops_exactly_the_image_unsafe_terms():
    loss = SafeClipLoss(LossConfig(tau=0.2))
    emb = _embeddings(seed=4, image_unsafe=None)
    total, terms = loss(emb)
    assert set(terms) == set(SAFE_CLIP_REFERENCE_WEIGHTS) - IMAGE_UNSAFE_TERMS
    # the remaining terms keep their weights: no re-normalisation over the six
    by_hand = _terms_by_hand(emb, 0.2)
    weights = loss.effective_weights
    assert total.item() == pytest.approx(sum(weights[name] * by_hand[name] for name in terms), rel=1e-9)


def test_frozen_image_tower_drops_all_image_terms():
    total, terms = SafeClipLoss(LossConfig(tau=0.2))(_embeddings(seed=5, image_safe=None, image_unsafe=None))
    assert set(terms) == set(SAFE_CLIP_REFERENCE_WEIGHTS) - IMAGE_UNSAFE_TERMS - IMAGE_SAFE_TERMS
    assert torch.isfinite(total)


def test_gradients_reach_only_the_trainable_embeddings():
    emb = _embeddings(seed=6)
    for tensor in vars(emb).values():
        tensor.requires_grad_(True)
    total, terms = SafeClipLoss(LossConfig(tau=0.1))(emb)
    total.backward()
    for name in ("text_safe", "text_unsafe", "image_safe", "image_unsafe"):
        grad = getattr(emb, name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert emb.ref_text_safe.grad is None and emb.ref_image_safe.grad is None
    assert all(not value.requires_grad for value in terms.values())


@pytest.mark.parametrize("config, message", [
    (LossConfig(tau=0.01, weights={**SAFE_CLIP_REFERENCE_WEIGHTS, "text_cos": 1.0}), "unknown term 'text_cos'"),
    (LossConfig(tau=0.01, weights={"text_safe_cos": 1.0}), "missing term 'text_unsafe_cos'"),
    (LossConfig(tau=0.01, weights={**SAFE_CLIP_REFERENCE_WEIGHTS, "image_unsafe_cos": -0.2}), "image_unsafe_cos: must be"),
    (LossConfig(tau=0.01, weights={**SAFE_CLIP_REFERENCE_WEIGHTS, "image_safe_cos": "high"}), "image_safe_cos: must be"),
    (LossConfig(tau=0.01, normalization="mean"), "safe_clip.normalization: 'mean'"),
    (LossConfig(tau=0), "safe_clip.tau"),
    (LossConfig(tau=0.01, weights=dict.fromkeys(SAFE_CLIP_REFERENCE_WEIGHTS, 0.0)), "all weights are zero"),
])
def test_bad_config_gives_one_line_error(config, message):
    with pytest.raises(SafeclipError, match=message) as error:
        SafeClipLoss(config)
    assert "\n" not in str(error.value)
