#!/usr/bin/env python
"""llm-compressor 0.14.0.1 GPTQ (and RTN) reference on SmolLM2-135M-Instruct (GGUF Q4_1 -> f32), CPU.

The peer side of the #3 comparisons: quantize time and peak RSS of GPTQ on the same
calibration windows as `quantize`, and wiki2 perplexity (GPTQ protocol) of its result.
Model loading and the evaluation loop are shared with `llmcompressor_awq.py` (same folder).

Usage (any folder; needs torch, transformers, llmcompressor 0.14.0.1 in the venv):
  python llmcompressor_gptq.py --scheme w4g64 --threads 2                 # GPTQ W4A16 sym g64, 128 x 512
  python llmcompressor_gptq.py --scheme w8-asym --method rtn --windows 200
  python llmcompressor_gptq.py --scheme w4g64 --calib FILE.i32 --seqlen 2048 --windows 0
FILE.i32 is raw little-endian int32 [n, seqlen], e.g. written by `quantize --save-calibration`.
--windows 0 skips the evaluation (timing runs).
"""
import argparse, json, os, resource, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llmcompressor_awq as ref  # noqa: E402  (load_model_and_tok, wiki_ids, eval_windows)

import numpy as np  # noqa: E402
import torch  # noqa: E402

SCHEMES = {
    # name: (bits, symmetric, strategy, group_size)
    "w4g64": (4, True, "group", 64),
    "w4g64-asym": (4, False, "group", 64),
    "w8": (8, True, "channel", None),
    "w8-asym": (8, False, "channel", None),
}


def config_groups(scheme):
    bits, sym, strategy, group = SCHEMES[scheme]
    weights = {"num_bits": bits, "type": "int", "symmetric": sym, "strategy": strategy}
    if group:
        weights["group_size"] = group
    return {"group_0": {"targets": ["Linear"], "weights": weights}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scheme", choices=sorted(SCHEMES), default="w4g64")
    ap.add_argument("--method", choices=["gptq", "rtn"], default="gptq")
    ap.add_argument("--calib", default=ref.CALIB)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--out", default=None, help="JSON result file (default: /tmp/llmc-gptq/TAG.json)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(ref.WORK, exist_ok=True)

    model, tok = ref.load_model_and_tok()
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    groups = config_groups(args.scheme)
    if args.method == "gptq":
        # Defaults otherwise (actorder static, dampening_frac 0.01, block_size 128), as the
        # reference run in ../shared/reference did.
        recipe = GPTQModifier(ignore=["lm_head"], config_groups=groups)
    else:
        recipe = QuantizationModifier(ignore=["lm_head"], config_groups=groups)
    ref.log(f"recipe: {recipe}")

    kw = {}
    calib_sha = None
    if args.method == "gptq":
        from datasets import Dataset
        raw = np.fromfile(args.calib, dtype="<i4")
        calib = raw.reshape(-1, args.seqlen)[: args.nsamples]
        import hashlib
        calib_sha = hashlib.sha256(calib.astype("<i4").tobytes()).hexdigest()
        ref.log(f"calibration {args.calib}: {calib.shape[0]} x {calib.shape[1]}, sha256 {calib_sha}")
        kw = dict(
            dataset=Dataset.from_dict({
                "input_ids": [row.tolist() for row in calib],
                "attention_mask": [[1] * args.seqlen for _ in range(len(calib))],
            }),
            max_seq_length=args.seqlen,
            num_calibration_samples=len(calib),
            shuffle_calibration_samples=False,
        )
    rss0 = ref.rss_gb()
    t0 = time.time()
    model = oneshot(model=model, recipe=recipe, **kw)
    t_one = time.time() - t0
    rss1 = ref.rss_gb()
    ref.log(f"oneshot wall {t_one:.1f}s on {args.threads} threads; peak RSS before {rss0:.3f} GiB, "
            f"after {rss1:.3f} GiB")

    tag = f"llmcompressor-{args.method}-{args.scheme}-calib{args.nsamples}x{args.seqlen}"
    out = {
        "tag": tag, "method": args.method, "scheme": args.scheme, "config_groups": groups,
        "oneshot_s": round(t_one, 1), "threads": args.threads,
        "peak_rss_gib_after_oneshot": round(rss1, 3),
        "calib": args.calib if args.method == "gptq" else None,
        "calib_int32_le_sha256": calib_sha,
    }
    if args.windows > 0:
        ids = ref.wiki_ids(tok)
        ppl, sums = ref.eval_windows(model, ids, args.windows)
        out.update({"ppl": ppl, "windows": args.windows, "predicted_tokens": args.windows * (ref.L - 1),
                    "nll_sum": sum(sums), "per_window_nll_sum": sums})
        ref.log(f"RESULT {tag}: wiki2 {args.windows} x {ref.L} ppl {ppl:.4f}")
    path = args.out or f"/tmp/llmc-gptq/{tag}.json"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    json.dump(out, open(path, "w"), indent=1)
    ref.log(f"wrote {path}; oneshot {t_one:.1f}s, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.3f} GiB")


if __name__ == "__main__":
    main()
