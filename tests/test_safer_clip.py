"""SafeR-CLIP: proximity targets (with their cache), the loss terms and the curriculum."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from safeclip_sdk.errors import SafeclipError
from safeclip_sdk.methods.losses import contrastive_loss
from safeclip_sdk.methods.safer_clip.config import SaferClipConfig
from safeclip_sdk.methods.safer_clip.curriculum import Curriculum
from safeclip_sdk.methods.safer_clip.losses import (TERMS, SaferClipEmbeddings, SaferClipLoss,
                                                    relative_redirection_loss)
from safeclip_sdk.methods.safer_clip.targets import (captions_fingerprint, nearest_safe_captions,
                                                     running_top1, weights_fingerprint)


class TableEmbedder:
    """Embeds captions by looking them up in a table; counts the captions it was asked for."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table
        self.calls = 0

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls += len(texts)
        return np.stack([self.table[t] for t in texts])


def _synthetic(num_safe: int = 60, num_unsafe: int = 45, dim: int = 24, seed: int = 0):
    """Unsafe vectors are noisy copies of known safe vectors: the nearest neighbours are known."""
    rng = np.random.default_rng(seed)
    pool = rng.normal(size=(num_safe, dim))
    expected = rng.integers(0, num_safe, size=num_unsafe)
    queries = pool[expected] * rng.uniform(0.5, 3.0, size=(num_unsafe, 1)) + 0.05 * rng.normal(size=(num_unsafe, dim))
    safe = [f"safe caption {j}" for j in range(num_safe)]
    unsafe = [f"unsafe caption {i}" for i in range(num_unsafe)]
    table = dict(zip(safe, pool)) | dict(zip(unsafe, queries))
    return unsafe, safe, TableEmbedder(table), expected


def _brute_force(unsafe, safe, embed):
    queries = np.asarray(embed(unsafe), dtype=np.float64)
    pool = np.asarray(embed(safe), dtype=np.float64)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    cos = queries @ pool.T
    return cos.argmax(axis=1), cos.max(axis=1)


def test_targets_are_the_known_nearest_neighbours():
    unsafe, safe, embed, expected = _synthetic()
    targets = nearest_safe_captions(unsafe, safe, embed, progress=False)
    np.testing.assert_array_equal(targets.indices, expected)
    indices, cos = _brute_force(unsafe, safe, embed)
    np.testing.assert_array_equal(targets.indices, indices)
    np.testing.assert_allclose(targets.similarities, cos, atol=1e-6)
    assert targets.indices.dtype == np.int64 and targets.similarities.dtype == np.float32
    assert not targets.from_cache


@pytest.mark.parametrize("batch_size,pool_block", [(1, 1), (7, 5), (16, 59), (1000, 100000)])
def test_block_sizes_do_not_change_the_result(batch_size, pool_block):
    unsafe, safe, embed, _ = _synthetic(seed=3)
    reference = nearest_safe_captions(unsafe, safe, embed, progress=False, batch_size=64, pool_block=64)
    got = nearest_safe_captions(unsafe, safe, embed, progress=False, batch_size=batch_size, pool_block=pool_block)
    np.testing.assert_array_equal(got.indices, reference.indices)
    np.testing.assert_allclose(got.similarities, reference.similarities, atol=1e-6)


@pytest.mark.parametrize("pool_block", [1, 4, 64])
def test_ties_go_to_the_lowest_pool_index(pool_block):
    pool = torch.eye(8)[[1, 2, 3, 0, 4, 5, 0, 6, 7, 0]]  # e_0 at rows 3, 6 and 9
    queries = torch.eye(8)[[0, 5]]
    best, where = running_top1(queries, pool, pool_block)
    assert where.tolist() == [3, 5] and best.tolist() == [1.0, 1.0]


def _tiny_embedder(loaded):
    model, tokenizer = loaded.model.eval(), loaded.tokenizer

    def embed(texts):
        return model.encode_text(tokenizer(texts))

    return embed


def test_targets_with_a_real_frozen_text_encoder(tiny_model):
    safe = ["a dog runs on the beach", "two people ride bicycles", "a bowl of fruit on a table",
            "a cat sleeps on a sofa", "a train arrives at the station", "children play football"]
    unsafe = ["a cat sleeps on a sofa", "two people fight with knives", "a train arrives at the station",
              "a bloody dog on the beach"]
    embed = _tiny_embedder(tiny_model)
    targets = nearest_safe_captions(unsafe, safe, embed, batch_size=2, pool_block=4, progress=False)
    with torch.no_grad():
        indices, cos = _brute_force(unsafe, safe, embed)
    np.testing.assert_array_equal(targets.indices, indices)
    np.testing.assert_allclose(targets.similarities, cos, atol=1e-5)
    # an unsafe caption that is also in the pool is its own nearest safe caption
    assert targets.indices[0] == 3 and targets.indices[2] == 4
    assert targets.similarities[0] == pytest.approx(1.0, abs=1e-5)


def test_cache_is_reused_and_invalidated(tmp_path):
    unsafe, safe, embed, expected = _synthetic()
    first = nearest_safe_captions(unsafe, safe, embed, cache_dir=tmp_path, model_fingerprint="weights-a",
                                  progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "proximity_targets.indices.npy", "proximity_targets.json", "proximity_targets.similarities.npy"]
    json.loads((tmp_path / "proximity_targets.json").read_text())
    np.load(tmp_path / "proximity_targets.indices.npy", allow_pickle=False)

    embed.calls = 0
    again = nearest_safe_captions(unsafe, safe, embed, cache_dir=tmp_path, model_fingerprint="weights-a",
                                  progress=False)
    assert again.from_cache and embed.calls == 0
    np.testing.assert_array_equal(again.indices, first.indices)
    np.testing.assert_array_equal(again.similarities, first.similarities)

    # another model: recomputed
    other_model = nearest_safe_captions(unsafe, safe, embed, cache_dir=tmp_path, model_fingerprint="weights-b",
                                        progress=False)
    assert not other_model.from_cache and embed.calls > 0

    # a changed dataset: the pool's caption 7 now points elsewhere, and the cache must not answer
    changed = list(safe)
    changed[7] = "safe caption 7 rewritten"
    embed.table[changed[7]] = embed.table[unsafe[0]]  # now the exact match of unsafe caption 0
    result = nearest_safe_captions(unsafe, changed, embed, cache_dir=tmp_path, model_fingerprint="weights-b",
                                   progress=False)
    assert not result.from_cache
    assert result.indices[0] == 7 and result.similarities[0] == pytest.approx(1.0)
    assert nearest_safe_captions(unsafe, changed, embed, cache_dir=tmp_path, model_fingerprint="weights-b",
                                 progress=False).from_cache


class Killed(Exception):
    pass


def test_a_killed_pass_resumes_where_it_stopped(tmp_path):
    unsafe, safe, embed, expected = _synthetic(num_safe=60, num_unsafe=45)
    complete = nearest_safe_captions(unsafe, safe, embed, progress=False)

    class DiesAfter(TableEmbedder):
        def __init__(self, table, limit):
            super().__init__(table)
            self.limit = limit

        def __call__(self, texts):
            if self.calls + len(texts) > self.limit:
                raise Killed
            return super().__call__(texts)

    # killed twice: after 35 pool captions (30 saved, in chunks of 10), then after the other 30
    # and 25 unsafe captions (20 saved)
    for limit in (35, 30 + 25):
        with pytest.raises(Killed):
            nearest_safe_captions(unsafe, safe, DiesAfter(embed.table, limit), cache_dir=tmp_path,
                                  model_fingerprint="w", batch_size=5, chunk_size=10, progress=False)
    assert (tmp_path / "proximity_targets.partial").is_dir()
    assert not (tmp_path / "proximity_targets.json").exists()

    resumed = TableEmbedder(embed.table)
    result = nearest_safe_captions(unsafe, safe, resumed, cache_dir=tmp_path, model_fingerprint="w",
                                   batch_size=5, chunk_size=10, progress=False)
    assert resumed.calls == 45 - 20
    np.testing.assert_array_equal(result.indices, complete.indices)
    # the resumed pass embeds in other batch shapes, which CPU kernels may round differently
    # (up to 1.8e-7 seen on an AVX2-only CPU)
    np.testing.assert_allclose(result.similarities, complete.similarities, rtol=0, atol=1e-6)
    assert not (tmp_path / "proximity_targets.partial").exists()


def test_work_saved_for_other_data_is_not_resumed(tmp_path):
    unsafe, safe, embed, expected = _synthetic()
    with pytest.raises(KeyError):
        nearest_safe_captions(unsafe + ["never seen"], safe, embed, cache_dir=tmp_path, model_fingerprint="w",
                              chunk_size=10, progress=False)
    assert any((tmp_path / "proximity_targets.partial").glob("pool-*.npy"))
    embed.calls = 0
    result = nearest_safe_captions(unsafe, safe, embed, cache_dir=tmp_path, model_fingerprint="w",
                                   chunk_size=10, progress=False)
    assert embed.calls == len(unsafe) + len(safe)
    np.testing.assert_array_equal(result.indices, expected)


def test_a_damaged_cache_is_recomputed(tmp_path):
    unsafe, safe, embed, expected = _synthetic()
    nearest_safe_captions(unsafe, safe, embed, cache_dir=tmp_path, model_fingerprint="w", progress=False)
    (tmp_path / "proximity_targets.indices.npy").write_bytes(b"not an array")
    result = nearest_safe_captions(unsafe, safe, embed, cache_dir=tmp_path, model_fingerprint="w", progress=False)
    assert not result.from_cache
    np.testing.assert_array_equal(result.indices, expected)


def test_fingerprints(tiny_model):
    assert captions_fingerprint(["a"], ["b", "c"]) != captions_fingerprint(["a", "b"], ["c"])
    assert captions_fingerprint(["a"], ["bc"]) != captions_fingerprint(["a"], ["b", "c"])
    text = tiny_model.model.transformer
    before = weights_fingerprint(text)
    assert weights_fingerprint(text) == before
    with torch.no_grad():
        next(text.parameters()).view(-1)[0] += 1e-3
    assert weights_fingerprint(text) != before
    assert len(weights_fingerprint(torch.nn.Linear(2, 2).to(torch.bfloat16))) == 64


def test_target_pass_rejects_bad_input_in_one_line(tmp_path):
    unsafe, safe, embed, _ = _synthetic()
    with pytest.raises(SafeclipError, match="safe_captions is empty"):
        nearest_safe_captions(unsafe, [], embed, progress=False)
    with pytest.raises(SafeclipError, match=r"unsafe_captions\[1\] is a int"):
        nearest_safe_captions(["a", 3], safe, embed, progress=False)
    with pytest.raises(SafeclipError, match="model_fingerprint"):
        nearest_safe_captions(unsafe, safe, embed, cache_dir=tmp_path, progress=False)
    def wrong_size_for_unsafe(texts):
        return np.zeros((len(texts), 24 if texts[0].startswith("safe") else 3))

    with pytest.raises(SafeclipError, match=r"returned shape \(2, 3\) for unsafe captions 0..1, expected \[2, 24\]"):
        nearest_safe_captions(unsafe[:2], safe, wrong_size_for_unsafe, progress=False)
    embed.table[safe[5]] = np.full(24, np.nan)
    with pytest.raises(SafeclipError, match="safe caption 5 is not finite"):
        nearest_safe_captions(unsafe, safe, embed, progress=False)


# ---- losses -----------------------------------------------------------------------------------

def test_relative_redirection_by_hand():
    anchor = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    positive = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    negative = torch.tensor([[0.0, 5.0], [1.0, 0.0]])
    # row 0: cos(anchor, negative) = 0, cos(anchor, positive) = 1; row 1: both 1/sqrt(2)
    expected = 0.5 * (math.log1p(math.exp(-1.0)) + math.log(2.0))
    torch.testing.assert_close(relative_redirection_loss(anchor, positive, negative), torch.tensor(expected))
    # a temperature divides the cosine difference: row 0 becomes softplus(-1 / 0.1)
    expected = 0.5 * (math.log1p(math.exp(-10.0)) + math.log(2.0))
    torch.testing.assert_close(relative_redirection_loss(anchor, positive, negative, 0.1), torch.tensor(expected))


def test_the_default_relative_temperature_makes_the_redirection_gradient_comparable_to_the_contrastive_terms():
    anchor = torch.nn.functional.normalize(torch.randn(16, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    positive, negative = anchor.roll(1, 0), anchor.roll(2, 0)
    gradients = {}
    for tau in (1.0, SaferClipConfig().relative_tau):
        weights = anchor.clone().requires_grad_(True)
        relative_redirection_loss(weights, positive, negative, tau).backward()
        gradients[tau] = weights.grad.norm().item()
    assert gradients[SaferClipConfig().relative_tau] > 5 * gradients[1.0]


def _hand_batch(with_images: bool = True) -> SaferClipEmbeddings:
    t = torch.tensor
    return SaferClipEmbeddings(
        text_unsafe=t([[3.0, 4.0], [1.0, 0.0]]),
        text_safe=t([[1.0, 0.0], [0.0, 1.0]]),
        ref_text_safe=t([[1.0, 0.0], [0.0, 1.0]]),
        ref_image_safe=t([[1.0, 0.0], [0.0, 1.0]]),
        ref_text_target=t([[4.0, 3.0], [1.0, 0.0]]),
        ref_image_target=t([[0.0, 1.0], [1.0, 0.0]]),
        ref_text_unsafe=t([[1.0, 0.0], [0.0, 1.0]]),
        image_safe=t([[2.0, 0.0], [0.0, 2.0]]) if with_images else None,
        image_unsafe=t([[0.0, 1.0], [1.0, 1.0]]) if with_images else None,
        ref_image_unsafe=t([[1.0, 0.0], [0.0, 1.0]]) if with_images else None,
    )


def test_each_loss_term_by_hand():
    loss = SaferClipLoss(tau=0.5)
    total, terms = loss(_hand_batch())
    assert list(terms) == list(TERMS)
    s2 = 1 / math.sqrt(2)
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = {
        # anchor V(v*) = (0,1), (1,1); negative T0(t*) = (1,0), (0,1); positive T0(target) = (4,3), (1,0)
        "image_relative": 0.5 * (softplus(0.0 - 0.6) + softplus(s2 - s2)),
        # anchor T(t*) = (3,4), (1,0); negative V0(v*) = (1,0), (0,1); positive V0(target) = (0,1), (1,0)
        "text_relative": 0.5 * (softplus(0.6 - 0.8) + softplus(0.0 - 1.0)),
        # 1 - cos(T(t*), T0(target)): cos = 24/25 and 1
        "text_proximity": 0.5 * ((1 - 24 / 25) + 0.0),
        # 1 - cos(V(v*), V0(target)): (0,1).(0,1) = 1 and (1,1).(1,0) = 1/sqrt(2)
        "image_proximity": 0.5 * (0.0 + (1 - s2)),
        "text_safe_cos": 0.0,
        "image_safe_cos": 0.0,
        # identity logits / 0.5 = [[2, 0], [0, 2]]: every row and column has CE log(1 + e^-2)
        "text_safe_contrastive": math.log1p(math.exp(-2.0)),
        "image_safe_contrastive": math.log1p(math.exp(-2.0)),
    }
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, abs=1e-6), name
    assert total.item() == pytest.approx(sum(expected.values()) / 8, abs=1e-6)
    # the preservation contrastive terms are Safe-CLIP's
    batch = _hand_batch()
    torch.testing.assert_close(terms["text_safe_contrastive"],
                               contrastive_loss(batch.text_safe, batch.ref_image_safe, 0.5))


def test_text_only_batches_keep_text_proximity_and_preservation():
    batch = _hand_batch(with_images=False)
    total, terms = SaferClipLoss(tau=0.5)(batch)
    assert set(terms) == {"text_proximity", "text_safe_cos", "text_safe_contrastive"}
    assert total.item() == pytest.approx(sum(v.item() for v in terms.values()) / 8, abs=1e-6)


def test_weights_normalisation_and_gradients_only_reach_the_trained_encoders():
    batch = _hand_batch()
    for name in ("text_unsafe", "image_unsafe", "ref_text_target", "ref_image_unsafe", "ref_text_safe"):
        setattr(batch, name, getattr(batch, name).clone().requires_grad_(True))
    loss = SaferClipLoss({"text_proximity": 3.0, "image_relative": 0.0}, tau=0.5, normalization="none")
    assert loss.effective_weights["text_proximity"] == 3.0 and loss.effective_weights["text_safe_cos"] == 1.0
    total, terms = loss(batch)
    expected = sum(terms.values()) + 2.0 * terms["text_proximity"] - terms["image_relative"]
    assert total.item() == pytest.approx(expected.item(), abs=1e-6)
    total.backward()
    assert batch.text_unsafe.grad is not None and batch.image_unsafe.grad is not None
    assert all(getattr(batch, name).grad is None for name in ("ref_text_target", "ref_image_unsafe", "ref_text_safe"))


def test_loss_rejects_bad_settings_in_one_line():
    with pytest.raises(SafeclipError, match="unknown term 'redirect'"):
        SaferClipLoss({"redirect": 1.0})
    with pytest.raises(SafeclipError, match="weights.text_relative"):
        SaferClipLoss({"text_relative": -1.0})
    with pytest.raises(SafeclipError, match="tau"):
        SaferClipLoss(tau=0.0)
    with pytest.raises(SafeclipError, match="relative_tau"):
        SaferClipLoss(relative_tau=-1.0)
    with pytest.raises(SafeclipError, match="normalization: 'mean'"):
        SaferClipLoss(normalization="mean")


# ---- curriculum -------------------------------------------------------------------------------

def test_curriculum_goes_from_easy_to_all():
    rng = np.random.default_rng(0)
    order = rng.permutation(9)
    similarities = np.empty(9)
    similarities[order] = np.arange(9) / 10  # item order[k] has similarity k / 10
    curriculum = Curriculum()
    # quantile 2/3 of 0..0.8 is 0.5333: the three most similar; quantile 1/3 is 0.2667: six
    assert curriculum.indices(similarities, 0).tolist() == sorted(order[6:].tolist())
    assert curriculum.indices(similarities, 1).tolist() == sorted(order[3:].tolist())
    for epoch in (2, 3, 8):
        assert curriculum.indices(similarities, epoch).tolist() == list(range(9))
    assert curriculum.thresholds(similarities) == pytest.approx([16 / 30, 8 / 30])
    assert [curriculum.stage(e) for e in range(4)] == [0, 1, 2, 2]


def test_curriculum_schedule_is_configurable_and_switchable():
    similarities = np.linspace(0.0, 1.0, 101)
    curriculum = Curriculum(quantiles=(0.5,), epochs_per_stage=(3,))
    for epoch in range(3):
        assert curriculum.indices(similarities, epoch).tolist() == list(range(50, 101))
    assert len(curriculum.indices(similarities, 3)) == 101
    assert len(Curriculum(enabled=False).indices(similarities, 0)) == 101
    assert Curriculum(**Curriculum((0.9, 0.5, 0.1), (2, 1, 1)).to_dict()) == Curriculum((0.9, 0.5, 0.1), (2, 1, 1))


def test_curriculum_rejects_bad_settings_in_one_line():
    with pytest.raises(SafeclipError, match="2 quantiles but 1"):
        Curriculum(quantiles=(0.6, 0.3), epochs_per_stage=(1,))
    with pytest.raises(SafeclipError, match="must decrease"):
        Curriculum(quantiles=(0.3, 0.6))
    with pytest.raises(SafeclipError, match="quantile 1.5"):
        Curriculum(quantiles=(1.5,), epochs_per_stage=(1,))
    with pytest.raises(SafeclipError, match="positive integers"):
        Curriculum(epochs_per_stage=(1, 0))
    with pytest.raises(SafeclipError, match="epoch must be"):
        Curriculum().stage(-1)
    with pytest.raises(SafeclipError, match="item 2 is nan"):
        Curriculum().indices([0.1, 0.2, float("nan")], 0)
