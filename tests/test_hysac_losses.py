"""HySAC's loss terms, learnable geometry and clamps, on hand-computable and synthetic problems."""

from __future__ import annotations

import math

import pytest
import torch

from safeclip_sdk.errors import SafeclipError
from safeclip_sdk.methods.hysac import lorentz as L
from safeclip_sdk.methods.hysac.losses import (TERMS, HySACEmbeddings, HySACHead, hysac_loss,
                                               lorentz_contrastive_loss, radial_margin_loss)


def _on_a_line(distances: list[float], curv: float) -> torch.Tensor:
    """Points at the given signed distances from the origin along one geodesic."""
    direction = torch.nn.functional.normalize(torch.ones(1, 3), dim=-1)
    return L.exp_map0(torch.tensor(distances)[:, None] * direction, curv)


def test_contrastive_loss_by_hand():
    # x = y = (origin, a point at distance 1): d = [[0, 1], [1, 0]], so every row and column has
    # cross-entropy -log(1 / (1 + exp(-s)))
    curv, scale = 0.5, 3.0
    points = _on_a_line([0.0, 1.0], curv)
    loss = lorentz_contrastive_loss(points, points, curv, scale)
    torch.testing.assert_close(loss, torch.tensor(math.log1p(math.exp(-scale))))


def test_contrastive_loss_uses_both_directions():
    # x = (0, 1), y = (0, 3): d = [[0, 3], [1, 2]]; rows and columns give different cross-entropies
    curv, s = 1.0, 2.0
    x, y = _on_a_line([0.0, 1.0], curv), _on_a_line([0.0, 3.0], curv)
    e = math.exp
    rows = 0.5 * (-math.log(1 / (1 + e(-3 * s))) - math.log(e(-2 * s) / (e(-s) + e(-2 * s))))
    cols = 0.5 * (-math.log(1 / (1 + e(-s))) - math.log(e(-2 * s) / (e(-3 * s) + e(-2 * s))))
    torch.testing.assert_close(lorentz_contrastive_loss(x, y, curv, s), torch.tensor(0.5 * (rows + cols)))


def _batch(seed: int = 0, size: int = 6, dim: int = 8, with_unsafe_images: bool = True) -> HySACEmbeddings:
    generator = torch.Generator().manual_seed(seed)

    def points():
        return L.exp_map0(0.5 * torch.randn(size, dim, generator=generator), 1.0)

    return HySACEmbeddings(text_safe=points(), image_safe=points(), text_unsafe=points(),
                           image_unsafe=points() if with_unsafe_images else None)


def test_hysac_loss_is_the_equal_weight_mean_of_its_terms():
    emb = _batch()
    total, terms = hysac_loss(emb, 1.0, 10.0)
    assert list(terms) == list(TERMS)
    torch.testing.assert_close(total, torch.stack(list(terms.values())).mean())
    # each term is the function it names, on the embeddings it names
    torch.testing.assert_close(terms["contrastive_unsafe_text_safe_image"],
                               lorentz_contrastive_loss(emb.text_unsafe, emb.image_safe, 1.0, 10.0))
    torch.testing.assert_close(terms["entailment_safe_image_unsafe_text"],
                               L.entailment_loss(emb.image_safe, emb.text_unsafe, 1.0))
    torch.testing.assert_close(terms["radial_image"], radial_margin_loss(emb.image_safe, emb.image_unsafe, 1.0, 0.1))
    assert all(not value.requires_grad for value in terms.values())


def test_radial_term_by_hand():
    # safe points at distances 1 and 2, unsafe twins at 1.5 and 2.05: margin 0.1 leaves 0 and 0.05
    curv = 0.7
    safe, unsafe = _on_a_line([1.0, 2.0], curv), _on_a_line([1.5, 2.05], curv)
    torch.testing.assert_close(radial_margin_loss(safe, unsafe, curv, 0.1), torch.tensor(0.025, dtype=torch.float64),
                               check_dtype=False)
    # it pulls the unsafe point outwards and the safe one inwards, nothing once the margin holds
    unsafe.requires_grad_(True)
    radial_margin_loss(safe, unsafe, curv, 0.1).backward()
    outward = unsafe.grad[1] @ unsafe.detach()[1]
    assert outward < 0 and torch.all(unsafe.grad[0] == 0)


def test_text_only_batches_drop_the_unsafe_image_terms_and_keep_the_scale():
    emb = _batch(with_unsafe_images=False)
    total, terms = hysac_loss(emb, 1.0, 10.0)
    assert set(terms) == {"contrastive_safe", "contrastive_unsafe_text_safe_image", "entailment_safe",
                          "entailment_safe_image_unsafe_text", "radial_text"}
    torch.testing.assert_close(total, sum(terms.values()) / len(TERMS))


def test_custom_weights_are_normalised_once_and_checked():
    emb = _batch()
    # terms not named keep weight 1
    total, terms = hysac_loss(emb, 1.0, 10.0, weights={"contrastive_safe": 2.0, "entailment_unsafe": 0.0})
    rest = sum(value for name, value in terms.items() if name not in ("contrastive_safe", "entailment_unsafe"))
    torch.testing.assert_close(total, (2.0 * terms["contrastive_safe"] + rest) / len(TERMS))
    with pytest.raises(SafeclipError, match="unknown term 'contrastive'"):
        hysac_loss(emb, 1.0, 10.0, weights={"contrastive": 1.0})
    with pytest.raises(SafeclipError, match="entailment_safe"):
        hysac_loss(emb, 1.0, 10.0, weights={"entailment_safe": -1.0})


def test_head_initial_values_and_embedding():
    head = HySACHead(64)
    assert head.curv.item() == pytest.approx(1.0)
    assert head.logit_scale.item() == pytest.approx(1 / 0.07)
    assert head.log_alpha_text.item() == pytest.approx(math.log(1 / 8))
    features = torch.randn(5, 64)
    # the point lies at distance alpha * |f| from the origin, in the direction of f
    d0 = L.distance_to_origin(head.embed_image(features), head.curv)
    torch.testing.assert_close(d0, features.norm(dim=-1) / 8)
    assert head.embed_text(features.to(torch.bfloat16)).dtype == torch.float32


def test_head_parameter_group_has_no_weight_decay_and_every_trainable_parameter():
    head = HySACHead(16)
    group = head.parameter_group()
    assert group["weight_decay"] == 0.0
    assert {id(p) for p in group["params"]} == {id(p) for p in head.parameters()}
    frozen_curv = HySACHead(16, learn_curv=False)
    assert all(p is not frozen_curv.log_curv for p in frozen_curv.parameter_group()["params"])


def test_clamps_hold_after_each_step_of_an_aggressive_optimizer():
    torch.manual_seed(0)
    head = HySACHead(16, curv_init=2.0, logit_scale_init=90.0)
    optimizer = torch.optim.SGD([head.parameter_group()], lr=50.0)
    for _ in range(5):
        # a loss that pushes every parameter out of its range
        loss = -(head.log_curv * 3 + head.log_alpha_text + head.log_alpha_image + head.log_logit_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        head.clamp_()
        assert 0.2 - 1e-6 <= head.curv.item() <= 20.0 + 1e-5
        assert head.log_alpha_text.item() <= 0.0 and head.log_alpha_image.item() <= 0.0
        assert head.logit_scale.item() <= 100.0 + 1e-4
    assert head.curv.item() == pytest.approx(20.0, rel=1e-5)
    assert head.logit_scale.item() == pytest.approx(100.0, rel=1e-5)
    with torch.no_grad():
        head.log_curv.fill_(-10.0)
    head.clamp_()
    assert head.curv.item() == pytest.approx(0.2, rel=1e-5)


def test_loss_decreases_on_a_synthetic_problem():
    """Trainable towers (linear maps of fixed inputs) plus the head: a few Adam steps lower the loss."""
    torch.manual_seed(0)
    dim, batch = 16, 12
    inputs = {name: torch.randn(batch, dim) for name in ("text_safe", "image_safe", "text_unsafe", "image_unsafe")}
    text_tower, image_tower = torch.nn.Linear(dim, dim), torch.nn.Linear(dim, dim)
    head = HySACHead(dim)
    optimizer = torch.optim.AdamW([
        {"params": list(text_tower.parameters()) + list(image_tower.parameters()), "weight_decay": 0.2},
        head.parameter_group(),
    ], lr=3e-2)

    def loss_now():
        return head(text_tower(inputs["text_safe"]), image_tower(inputs["image_safe"]),
                    text_tower(inputs["text_unsafe"]), image_tower(inputs["image_unsafe"]))

    first, first_terms = loss_now()
    for _ in range(25):
        total, _ = loss_now()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        head.clamp_()
    last, last_terms = loss_now()
    assert last.item() < 0.5 * first.item()
    assert last_terms["contrastive_safe"] < first_terms["contrastive_safe"]
    assert head.log_alpha_text.item() <= 0.0 and head.logit_scale.item() <= 100.0


def test_loss_under_bf16_autocast_is_finite_and_close_to_fp32():
    torch.manual_seed(0)
    head = HySACHead(16)
    feats = [torch.randn(8, 16, requires_grad=True) for _ in range(4)]
    total32, _ = head(*feats)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total16, _ = head(*[f.to(torch.bfloat16) for f in feats])
    assert total16.dtype == torch.float32
    torch.testing.assert_close(total16, total32, rtol=2e-2, atol=2e-2)
    total16.backward()
    assert all(torch.isfinite(f.grad).all() for f in feats)
    assert all(torch.isfinite(p.grad) for p in head.parameters())


def test_head_rejects_bad_settings_in_one_line():
    with pytest.raises(SafeclipError, match="embed_dim"):
        HySACHead(0)
    with pytest.raises(SafeclipError, match="curv_init"):
        HySACHead(8, curv_init=-1.0)
    with pytest.raises(SafeclipError, match="logit_scale_init"):
        HySACHead(8, logit_scale_init=200.0)


def test_head_config_rebuilds_the_head():
    head = HySACHead(8, curv_init=0.5, weights={"contrastive_safe": 1.0})
    with torch.no_grad():
        head.log_curv.add_(0.3)
    again = HySACHead(**head.config())
    again.load_state_dict(head.state_dict())
    assert again.config() == head.config()
    assert again.curv.item() == pytest.approx(head.curv.item())
