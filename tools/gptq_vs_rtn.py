"""MiniLM WordNet retrieval: fp32 vs weight-only RTN vs GPTQ (exported ONNX run in ONNX Runtime, one thread).

Prints, per variant, the mean cosine similarity of the sentence embeddings (nouns and glosses) to fp32's
(a sensitive proxy: top-1 moves by noise of about 1 point on 1,000 pairs) and the retrieval top-1 / top-5.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python tools/gptq_vs_rtn.py --bits 4 3 --limit 200
    python tools/gptq_vs_rtn.py --bits 3 --damp 0.1 --limit 1000
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

import compiler
import models
from backends.onnx import ort_session, to_standard_onnx
from compiler.frontends import import_model
from models import minilm


def _predict(proto: onnx.ModelProto) -> Any:
    session: Any = ort_session(proto, 1)
    names = [i.name for i in session.get_inputs()]
    return lambda ids, mask: session.run(None, {names[0]: ids, names[1]: mask})[0]


def _embed(predict: Any, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    e = np.stack([np.asarray(predict(ids[i : i + 1], mask[i : i + 1])).reshape(-1) for i in range(len(ids))])
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def main() -> None:
    """Compile each variant, embed the first ``--limit`` eval pairs, print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bits", type=int, nargs="+", default=[4])
    ap.add_argument("--limit", type=int, default=200, help="eval pairs (1000 = the full task)")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--no-act-order", action="store_true")
    args = ap.parse_args()

    spec = models.get("minilm")
    proto = ir.to_proto(import_model(spec.module, spec.example_inputs, input_names=list(spec.input_names)))
    noun_ids, noun_mask, gloss_ids, gloss_mask = (a[: args.limit] for a in minilm._eval_tokens())

    def measure(p: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        predict = _predict(p)
        n, g = _embed(predict, noun_ids, noun_mask), _embed(predict, gloss_ids, gloss_mask)
        sims = n @ g.T  # ranks as models.minilm.evaluate counts them (ties count against the model)
        rank = (sims >= np.diagonal(sims)[:, None] - 1e-6).sum(axis=1) - 1
        return n, g, {"top1": float(np.mean(rank < 1)), "top5": float(np.mean(rank < 5))}

    ref_n, ref_g, ref = measure(proto)
    print(f"{'variant':<16} {'cos(nouns)':>10} {'cos(gloss)':>10} {'top1':>6} {'top5':>6} {'compile s':>9}")
    print(f"{'fp32':<16} {1.0:>10.4f} {1.0:>10.4f} {ref['top1']:>6.3f} {ref['top5']:>6.3f} {0.0:>9.1f}")
    for bits in args.bits:
        for method in ("rtn", "gptq"):
            options: dict[str, Any] = {"method": method, "bits": bits, "group_size": args.group_size}
            if method == "gptq":
                options.update(act_order=not args.no_act_order, damp=args.damp)
            start = time.perf_counter()
            cm = compiler.compile(
                proto,
                target="onnx",
                measure=False,
                passes=["quantize_weight_only"],
                pass_options={"quantize_weight_only": options},
                calibration=spec.calibration_data,
            )
            seconds = time.perf_counter() - start
            n, g, r = measure(to_standard_onnx(cm.ir))
            cos_n, cos_g = float(np.mean((n * ref_n).sum(1))), float(np.mean((g * ref_g).sum(1)))
            label = f"int{bits} {method}"
            print(f"{label:<16} {cos_n:>10.4f} {cos_g:>10.4f} {r['top1']:>6.3f} {r['top5']:>6.3f} {seconds:>9.1f}")


if __name__ == "__main__":
    main()
