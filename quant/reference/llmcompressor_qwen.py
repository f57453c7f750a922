#!/usr/bin/env python
"""llm-compressor 0.14.0.1 RTN and AWQ on Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M -> f32), CPU.

The peer side of #5's Qwen rows: does llm-compressor's AWQ beat its own RTN on this
checkpoint, on the calibration windows lmq used? W4A16 (or W3A16) asymmetric, group 128,
`ignore: [lm_head]`, AWQModifier defaults (mappings inferred for Qwen2, duo scaling, 20 grid
points). Evaluation: wiki2 GPTQ protocol (`llmcompressor_awq.eval_windows`), windows of 512.

Usage (needs torch, transformers, gguf, datasets, llmcompressor 0.14.0.1):
  python llmcompressor_qwen.py --method fp                       # float model, first 40 windows
  python llmcompressor_qwen.py --method rtn --bits 4
  python llmcompressor_qwen.py --method awq --bits 4 --calib calib.i32 --nsamples 8
calib.i32 is raw little-endian int32 [n, 512], e.g. from
`quantize --recipe recipes/awq-w4g128.yaml --save-calibration calib.i32 …`.
"""
import argparse, hashlib, json, os, resource, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llmcompressor_awq as ref  # noqa: E402  (eval_windows, log, rss_gb)

import numpy as np  # noqa: E402
import torch  # noqa: E402

CACHE = os.environ.get("LMQ_CACHE", os.path.expanduser("~/.cache/lmq"))
GGUF_NAME = "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"  # as `cargo xtask fetch` names it
WORK = "/tmp/llmc-qwen"
WIKI = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                    "..", "..", "..", "shared", "data", "wikitext-2-raw", "wiki.test.raw")


def find_gguf():
    for root, _, files in os.walk(CACHE):
        if GGUF_NAME in files:
            return root
    sys.exit(f"{GGUF_NAME} not under {CACHE}: run `cargo xtask fetch qwen-0.5b` first")


def load_model_and_tok():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    f32_dir = f"{WORK}/qwen05-f32"
    if not os.path.exists(f"{f32_dir}/config.json"):
        gdir = find_gguf()
        gmodel = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=GGUF_NAME, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gdir, gguf_file=GGUF_NAME)
        cfg = gmodel.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        # A plain f32 model with the dequantized weights (the GGUF-loaded one refuses
        # save_pretrained and carries a GGUF quantizer llm-compressor does not expect).
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(gmodel.state_dict(), strict=False)
        ref.log(f"rebuilt plain model: missing {missing} unexpected {unexpected}")
        del gmodel
        model.save_pretrained(f32_dir)
        tok.save_pretrained(f32_dir)
    model = AutoModelForCausalLM.from_pretrained(f32_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(f32_dir)
    model.eval()
    return model, tok


def wiki_ids(tok):
    cache = f"{WORK}/wiki2-test-ids.i32"
    if os.path.exists(cache):
        ids = np.fromfile(cache, dtype="<i4")
    else:
        text = open(WIKI, encoding="utf-8").read()
        ids = np.asarray(tok(text, add_special_tokens=False)["input_ids"], dtype="<i4")
        ids.tofile(cache)
    ref.log(f"wiki2 tokens {len(ids)} sha256 {hashlib.sha256(ids.tobytes()).hexdigest()}")
    return ids


def quant_modifier(bits):
    from llmcompressor.modifiers.quantization import QuantizationModifier
    weights = {"num_bits": bits, "type": "int", "symmetric": False, "strategy": "group",
               "group_size": 128}
    return QuantizationModifier(ignore=["lm_head"],
                                config_groups={"group_0": {"targets": ["Linear"], "weights": weights}})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=["fp", "rtn", "awq"], required=True)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--calib", default=None)
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(WORK, exist_ok=True)

    model, tok = load_model_and_tok()
    ids = wiki_ids(tok)
    tag = "fp" if args.method == "fp" else f"{args.method}-w{args.bits}g128-asym"
    t_one, n_calib = 0.0, 0
    if args.method != "fp":
        from datasets import Dataset
        from llmcompressor import oneshot
        from llmcompressor.pipelines.cache import IntermediatesCache
        if not torch.cuda.is_available():
            # 0.14.0.1 pins cached activations, which fails on a CUDA torch without a GPU.
            IntermediatesCache.pin_memory = lambda self, *a, **k: None
        if args.method == "awq":
            from llmcompressor.modifiers.transform.awq import AWQModifier
            recipe = [AWQModifier(), quant_modifier(args.bits)]
            calib = np.fromfile(args.calib, dtype="<i4").reshape(-1, 512)[: args.nsamples]
            tag += f"-calib{len(calib)}"
        else:
            recipe = [quant_modifier(args.bits)]
            calib = np.asarray(ids[:512], dtype="<i4").reshape(1, 512)  # RTN reads no data
        n_calib = len(calib)
        ds = Dataset.from_dict({"input_ids": [r.tolist() for r in calib],
                                "attention_mask": [[1] * 512 for _ in calib]})
        t0 = time.time()
        model = oneshot(model=model, dataset=ds, recipe=recipe, max_seq_length=512,
                        num_calibration_samples=n_calib, shuffle_calibration_samples=False)
        t_one = time.time() - t0
        ref.log(f"oneshot {t_one:.1f}s, peak RSS {ref.rss_gb():.3f} GiB")
    ppl, sums = ref.eval_windows(model, ids, args.windows, f"{WORK}/{tag}.jsonl")
    out = {"tag": tag, "ppl": ppl, "windows": args.windows, "oneshot_s": round(t_one, 1),
           "calib_samples": n_calib, "peak_rss_gib": round(ref.rss_gb(), 3),
           "per_window_nll_sum": sums, "torch_threads": args.threads}
    json.dump(out, open(f"{WORK}/{tag}.json", "w"), indent=1)
    ref.log(f"RESULT {tag}: ppl {ppl:.4f}")


if __name__ == "__main__":
    main()
