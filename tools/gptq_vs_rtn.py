"""MiniLM WordNet retrieval: fp32 vs weight-only RTN vs GPTQ (exported ONNX run in ONNX Runtime, one thread).

Prints, per variant, the mean cosine similarity of the sentence embeddings (nouns and glosses) to fp32's
(a sensitive proxy: top-1 moves by noise of about 1 point on 1,000 pairs), the retrieval top-1 / top-5, the
compile time, and for GPTQ a paired comparison with RTN at the same bits: ``+a/-b`` = pairs GPTQ retrieves and
RTN misses / the reverse, with McNemar's exact two-sided p-value.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python tools/gptq_vs_rtn.py --bits 4 3 --limit 1000
    python tools/gptq_vs_rtn.py --bits 4 --samples 16 64 0 --limit 200   # calibration samples (0 = all)
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
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


def mcnemar_p(wins: int, losses: int) -> float:
    """Exact two-sided McNemar p-value for ``wins`` vs ``losses`` discordant pairs (binomial, p = 1/2)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def main() -> None:
    """Compile each variant, embed the first ``--limit`` eval pairs, print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bits", type=int, nargs="+", default=[4])
    ap.add_argument("--limit", type=int, default=200, help="eval pairs (1000 = the full task)")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--samples", type=int, nargs="+", default=[0], help="GPTQ calibration samples (0 = all)")
    ap.add_argument("--no-act-order", action="store_true")
    ap.add_argument("--save", default=None, help="directory for each variant's embeddings (.npz)")
    args = ap.parse_args()

    spec = models.get("minilm")
    proto = ir.to_proto(import_model(spec.module, spec.example_inputs, input_names=list(spec.input_names)))
    noun_ids, noun_mask, gloss_ids, gloss_mask = (a[: args.limit] for a in minilm._eval_tokens())

    def measure(p: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        predict = _predict(p)
        n, g = minilm.embed(predict, noun_ids, noun_mask), minilm.embed(predict, gloss_ids, gloss_mask)
        sims = n @ g.T  # ranks as models.minilm.evaluate counts them (ties count against the model)
        rank = (sims >= np.diagonal(sims)[:, None] - 1e-6).sum(axis=1) - 1
        return n, g, rank

    ref_n, ref_g, ref_rank = measure(proto)
    save = Path(args.save) if args.save else None
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        np.savez(save / "fp32.npz", nouns=ref_n, glosses=ref_g)
    print(f"calibration: {len(spec.calibration_data)} samples; eval pairs: {len(ref_rank)}")
    head = f"{'variant':<22} {'1-cos(nouns)':>12} {'1-cos(gloss)':>12} {'top1':>6} {'top5':>6} {'compile s':>9}"
    print(f"{head}  GPTQ vs RTN top-1 (+wins/-losses, McNemar p)")
    print(f"{'fp32':<22} {0.0:>12.4f} {0.0:>12.4f} {np.mean(ref_rank < 1):>6.3f} {np.mean(ref_rank < 5):>6.3f}")
    for bits in args.bits:
        rtn_right: np.ndarray | None = None
        variants = [("rtn", 0)] + [("gptq", n) for n in args.samples]
        for method, samples in variants:
            options: dict[str, Any] = {"method": method, "bits": bits, "group_size": args.group_size}
            if method == "gptq":
                options.update(act_order=not args.no_act_order, damp=args.damp, samples=samples)
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
            n, g, rank = measure(to_standard_onnx(cm.ir))
            if save is not None:
                np.savez(save / f"int{bits}-{method}-{samples}.npz", nouns=n, glosses=g)
            err_n, err_g = 1.0 - float(np.mean((n * ref_n).sum(1))), 1.0 - float(np.mean((g * ref_g).sum(1)))
            right = rank < 1
            paired = ""
            if rtn_right is None:
                rtn_right = right
            else:
                wins, losses = int((right & ~rtn_right).sum()), int((~right & rtn_right).sum())
                paired = f"  +{wins}/-{losses}, p={mcnemar_p(wins, losses):.2f}"
            label = f"int{bits} {method}"
            if method == "gptq":
                label += f" {samples or len(spec.calibration_data)} samples"
            print(
                f"{label:<22} {err_n:>12.4f} {err_g:>12.4f} {np.mean(right):>6.3f} {np.mean(rank < 5):>6.3f} "
                f"{seconds:>9.1f}{paired}",
                flush=True,
            )


if __name__ == "__main__":
    main()
