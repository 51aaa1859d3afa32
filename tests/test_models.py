"""Tests of the shipped real models (``models/``): loading, shapes, calibration data, evaluation tasks."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

import models
from models import efficientnet_lite0, fmnist_cnn, minilm

pytestmark = pytest.mark.models


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Batch-1 inference is fastest on one thread (and does not fight other processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fmnist() -> models.ModelSpec:
    return models.get("fmnist_cnn")


@pytest.fixture(scope="module")
def effnet() -> models.ModelSpec:
    return models.get("efficientnet_lite0")


@pytest.fixture(scope="module")
def minilm_spec() -> models.ModelSpec:
    return models.get("minilm")


def _check_common(spec: models.ModelSpec, name: str, out_shape: tuple[int, ...]) -> np.ndarray:
    """Checks shared by every model; returns the module's output on the example inputs."""
    assert spec.name == name
    assert not spec.module.training
    assert all(p.dtype == torch.float32 for p in spec.module.parameters())
    assert len(spec.input_names) == len(spec.example_inputs)
    assert all(x.shape[0] == 1 for x in spec.example_inputs)
    assert len(spec.calibration_data) >= 32
    for sample in spec.calibration_data:
        assert len(sample) == len(spec.example_inputs)
        for arr, ex in zip(sample, spec.example_inputs, strict=True):
            assert isinstance(arr, np.ndarray)
            assert arr.shape == tuple(ex.shape)
            assert arr.dtype == ex.numpy().dtype
    # Calibration samples are real, distinct data (not one sample repeated).
    firsts = {spec.calibration_data[i][0].tobytes() for i in range(8)}
    assert len(firsts) == 8
    with torch.inference_mode():
        out = spec.module(*spec.example_inputs)
    assert tuple(out.shape) == out_shape
    assert out.dtype == torch.float32
    return out.numpy()


def test_registry_lists_models_and_rejects_unknown() -> None:
    assert models.available() == ["efficientnet_lite0", "fmnist_cnn", "minilm"]
    with pytest.raises(ValueError, match=r"unknown model 'resnet'.*efficientnet_lite0.*fmnist_cnn.*minilm"):
        models.get("resnet")


def test_fmnist_loads_and_is_accurate(fmnist: models.ModelSpec) -> None:
    out = _check_common(fmnist, "fmnist_cnn", (1, 10))
    assert np.isfinite(out).all()
    n_params = sum(p.numel() for p in fmnist.module.parameters())
    assert n_params < 50_000
    metrics = fmnist.evaluate(models.torch_predict(fmnist.module), limit=1000)
    assert metrics["n"] == 1000
    assert metrics["accuracy"] >= 0.85
    # A predictor that always answers class 0 scores about chance on the balanced test set.
    const = fmnist.evaluate(lambda x: np.eye(10, dtype=np.float32)[:1], limit=1000)
    assert const["accuracy"] < 0.2


def test_fmnist_data_and_missing_dir(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    images, labels = fmnist_cnn.load_split("test")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert sorted(np.bincount(labels).tolist()) == [1000] * 10
    x = fmnist_cnn.normalize(images[:500])
    assert x.shape == (500, 1, 28, 28) and x.dtype == np.float32
    assert abs(float(x.mean())) < 0.2 and 0.8 < float(x.std()) < 1.2
    monkeypatch.setattr(fmnist_cnn, "DATA_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fmnist_cnn._read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")


def test_limit_is_validated(fmnist: models.ModelSpec) -> None:
    with pytest.raises(ValueError, match="limit"):
        fmnist.evaluate(models.torch_predict(fmnist.module), limit=0)


def test_efficientnet_loads_and_agrees_with_itself(effnet: models.ModelSpec) -> None:
    out = _check_common(effnet, "efficientnet_lite0", (1, 1000))
    probs = torch.softmax(torch.from_numpy(out), -1)
    assert float(probs.max()) > 0.05  # a real photo crop gets a confident-ish class, not uniform noise
    assert len(efficientnet_lite0.eval_crops()) >= 200
    predict = models.torch_predict(effnet.module)
    same = effnet.evaluate(predict, limit=24)
    assert same == {"top1_agreement": 1.0, "top5_overlap": 1.0, "logit_err": pytest.approx(0.0, abs=1e-6), "n": 24.0}
    scaled = effnet.evaluate(lambda x: predict(x) * 1.1, limit=4)  # same classes, logits 10% off
    assert scaled["top1_agreement"] == 1.0 and scaled["logit_err"] == pytest.approx(0.1, rel=1e-5)
    # onnxruntime-style predict (list of outputs) is accepted too.
    assert effnet.evaluate(lambda x: [predict(x)], limit=4)["top1_agreement"] == 1.0
    rng = np.random.default_rng(0)
    noise = effnet.evaluate(lambda x: rng.standard_normal((1, 1000)).astype(np.float32), limit=24)
    assert noise["top1_agreement"] < 0.2
    assert noise["top5_overlap"] < 0.2
    assert noise["logit_err"] > 0.5


def test_efficientnet_crops_are_deterministic_and_varied() -> None:
    crops = efficientnet_lite0.eval_crops()
    again = efficientnet_lite0._crops(efficientnet_lite0.CROPS_PER_PHOTO, efficientnet_lite0.EVAL_SEED)
    np.testing.assert_array_equal(crops, again)
    calib = efficientnet_lite0._crops(efficientnet_lite0.CALIBRATION_PER_PHOTO, efficientnet_lite0.CALIBRATION_SEED)
    assert not any(np.array_equal(calib[0], c) for c in crops)
    assert crops.shape[1:] == (3, 224, 224) and crops.dtype == np.uint8
    # Crops of the same photo differ (different positions/scales).
    assert not np.array_equal(crops[0], crops[1])


def test_minilm_matches_sentence_transformers_pooling(minilm_spec: models.ModelSpec) -> None:
    out = _check_common(minilm_spec, "minilm", (1, 384))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    # Recompute mean pooling by hand from the encoder's hidden states on unpadded tokens.
    ids, mask = minilm.tokenize(["a domesticated carnivorous mammal"])
    n_tok = int(mask.sum())
    encoder = minilm_spec.module.encoder
    assert isinstance(encoder, torch.nn.Module)
    with torch.inference_mode():
        hidden = encoder(input_ids=torch.from_numpy(ids[:, :n_tok])).last_hidden_state[0]
        emb = minilm_spec.module(torch.from_numpy(ids), torch.from_numpy(mask))[0]
    ref = hidden.mean(0)
    np.testing.assert_allclose(emb.numpy(), (ref / ref.norm()).numpy(), atol=2e-5)


def test_minilm_retrieval_well_above_chance(minilm_spec: models.ModelSpec) -> None:
    pairs = minilm.eval_pairs()
    assert len(pairs) == 1000 and len({p[0] for p in pairs}) == 1000
    metrics = minilm_spec.evaluate(models.torch_predict(minilm_spec.module), limit=120)
    assert metrics["n"] == 120
    assert metrics["top5"] >= 0.45  # chance is 5/120
    assert metrics["top1"] <= metrics["top5"]
    assert metrics["top1"] >= 0.25
    assert metrics["cos_fp32"] == pytest.approx(1.0, abs=1e-6)  # the fp32 module itself
    assert metrics["top1_fp32"] == 1.0
    # Ties count against the model: a predictor that ignores its input retrieves nothing.
    const = minilm_spec.evaluate(lambda ids, mask: np.ones((1, 384), np.float32), limit=50)
    assert const["top1"] == 0.0 and const["top5"] == 0.0
    rng = np.random.default_rng(0)
    noise = minilm_spec.evaluate(lambda ids, mask: rng.standard_normal((1, 384)), limit=120)
    assert noise["top5"] < 0.2
    assert abs(noise["cos_fp32"]) < 0.05  # random directions in 384-d
    assert noise["top1_fp32"] < 0.1  # chance: 1/120


def test_minilm_cos_fp32_tracks_perturbation(minilm_spec: models.ModelSpec) -> None:
    """cos_fp32 is the mean cosine of each embedding to the fp32 one: a known rotation of the output gives
    exactly its cosine, while top-1 barely moves."""
    base = models.torch_predict(minilm_spec.module)
    rng = np.random.default_rng(1)
    direction = rng.standard_normal(384)

    def perturbed(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        e = base(ids, mask).reshape(-1).astype(np.float64)
        d = direction - (direction @ e) * e  # orthogonal to the unit embedding
        return (np.cos(0.2) * e + np.sin(0.2) * d / np.linalg.norm(d))[None]

    m = minilm_spec.evaluate(perturbed, limit=40)
    assert m["cos_fp32"] == pytest.approx(np.cos(0.2), abs=1e-5)
    assert 0.5 < m["top1_fp32"] < 1.0  # a rotation this large moves some of the top-1 choices


def test_minilm_calibration_mixes_nouns_and_glosses_disjoint_from_eval(minilm_spec: models.ModelSpec) -> None:
    pairs = minilm.eval_pairs()
    texts = minilm.calibration_texts()
    assert len(texts) == 2 * minilm.NUM_CALIBRATION_PAIRS
    assert not set(texts) & ({p[0] for p in pairs} | {p[1] for p in pairs})
    # alternating (gloss, noun) of real candidate pairs, so the first 32 samples (int8 calibration) hold both kinds
    glosses, nouns = texts[0::2], texts[1::2]
    assert set(zip(nouns, glosses, strict=True)) <= set(minilm.wordnet_candidates())
    assert all(" " not in n for n in nouns) and all(len(g.split()) >= 2 for g in glosses)
    assert len(set(texts)) == len(texts)
    # deterministic, and what the spec ships
    minilm._selection.cache_clear()
    assert minilm.calibration_texts() == texts
    ids, mask = minilm.tokenize(texts)
    np.testing.assert_array_equal(np.concatenate([s[0] for s in minilm_spec.calibration_data]), ids)
    np.testing.assert_array_equal(np.concatenate([s[1] for s in minilm_spec.calibration_data]), mask)
    # enough real tokens for full-rank GPTQ Hessians of the widest layer input (the FFN down-projection, 4 x 384)
    assert int(mask.sum()) > 2 * 1536


def test_minilm_missing_wordnet_names_debian_package(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(minilm, "WORDNET_DIR", tmp_path)
    minilm.wordnet_candidates.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="wordnet-base"):
            minilm.wordnet_candidates()
    finally:
        minilm.wordnet_candidates.cache_clear()
