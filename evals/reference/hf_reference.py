#!/usr/bin/env python3
"""Reference figures from transformers (CPU torch) for the GGUF models the project uses.

Not part of the build or the tests: this is how the JSON files beside it were made, so
that anyone can re-make them (see README.md here for the exact commands and versions).

The model is loaded from its GGUF file with
`AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=torch.float32)`:
transformers dequantizes every tensor to f32, so the figures are those of the
dequantized checkpoint, the same source the toolchain imports.

Tasks
  greedy   greedy continuation of --prompt for --new-tokens tokens (raw text, no chat
           template); also the top-k logits at the last prompt position, and a
           forced-length greedy run that does not stop at EOS.
  wiki2    GPTQ-protocol perplexity on the WikiText-2 raw test file:
           the file tokenized once with no special tokens, windows ids[i*L:(i+1)*L]
           for i < min(--windows, n // L), each evaluated on its own from position 0,
           L-1 predicted tokens per window, log-softmax in f32, NLL summed in f64.
           Writes the JSON after every window (atomically), so a killed run keeps
           what it had; --resume continues from such a file.
  tokenize only the wiki2 token count and sha256 (ids as little-endian int32).

Example
  OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python hf_reference.py \
      --model /path/SmolLM2-135M-Instruct.Q4_1.gguf --task wiki2 --seqlen 512 \
      --windows 3 --compare /work/shared/reference/smollm2-135m-f32-wiki2-512x40.json \
      --out smollm2-wiki2-512-first3.json
"""

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time

DEFAULT_WIKI = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..", "..", "..", "shared", "data", "wikitext-2-raw", "wiki.test.raw",
)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ids_sha256(ids):
    import numpy as np

    return hashlib.sha256(np.asarray(ids, dtype="<i4").tobytes()).hexdigest()


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def versions():
    import numpy
    import torch
    import transformers

    try:
        import gguf

        gguf_v = getattr(gguf, "__version__", None)
        if gguf_v is None:
            from importlib.metadata import version

            gguf_v = version("gguf")
    except Exception:  # pragma: no cover
        gguf_v = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gguf": gguf_v,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }


def load(model_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, name = os.path.split(os.path.abspath(model_path))
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    model.eval()
    load_s = time.time() - t0
    info = {
        "model_file": name,
        "model_sha256": sha256_file(model_path),
        "model_type": model.config.model_type,
        "load_s": round(load_s, 2),
        "tokenizer_class": type(tok).__name__,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "vocab_size_config": model.config.vocab_size,
        "tie_word_embeddings": bool(getattr(model.config, "tie_word_embeddings", False)),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "param_dtype": str(next(model.parameters()).dtype),
    }
    return tok, model, info


def tokenize_wiki(tok, path):
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    t0 = time.time()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return ids, {
        "text_file": os.path.basename(path),
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "text_bytes": len(text.encode("utf-8")),
        "n_tokens": len(ids),
        "ids_sha256": ids_sha256(ids),
        "first_ids": ids[:16],
        "tokenize_s": round(time.time() - t0, 2),
    }


def window_nll_sum(model, window):
    """Sum of -log p(x[t+1] | x[..t]) over the L-1 predicted positions of one window."""
    import torch

    with torch.inference_mode():
        x = torch.tensor([window], dtype=torch.long)
        logits = model(input_ids=x, use_cache=False).logits[0, :-1, :].float()
        targets = x[0, 1:]
        logp = torch.log_softmax(logits, dim=-1)  # f32
        nll = -logp.gather(1, targets[:, None])[:, 0]
        return float(nll.double().sum().item()), int(targets.numel())


def task_wiki2(args, tok, model, info):
    ids, tinfo = tokenize_wiki(tok, args.text)
    L = args.seqlen
    n_win_all = len(ids) // L
    n_win = n_win_all if args.windows is None else min(args.windows, n_win_all)
    ref = None
    if args.compare:
        with open(args.compare) as f:
            ref_doc = json.load(f)
        ref = ref_doc
        if "results" in ref_doc:
            ref = ref_doc["results"][str(L)]["per_window_nll_sum"]
        elif "per_window_nll_sum" in ref_doc:
            ref = ref_doc["per_window_nll_sum"]
        if "n_tokens" in ref_doc:
            tinfo["ref_n_tokens"] = ref_doc["n_tokens"]
        if "ids_sha256" in ref_doc:
            tinfo["ref_ids_sha256_match"] = ref_doc["ids_sha256"] == tinfo["ids_sha256"]
    out = {
        "task": "wiki2",
        "protocol": "GPTQ: tokenize whole file once, no special tokens; windows ids[i*L:(i+1)*L], "
        "each from position 0, no cache between windows; L-1 predicted tokens per window; "
        "log-softmax f32, NLL summed f64; ppl = exp(sum NLL / predicted tokens)",
        **info,
        **tinfo,
        "seqlen": L,
        "windows_available": n_win_all,
        "windows_requested": n_win,
        "versions": versions(),
        "per_window_nll_sum": [],
        "per_window_seconds": [],
    }
    if args.resume and os.path.exists(args.out):
        with open(args.out) as f:
            prev = json.load(f)
        if prev.get("ids_sha256") == tinfo["ids_sha256"] and prev.get("seqlen") == L:
            out["per_window_nll_sum"] = prev["per_window_nll_sum"]
            out["per_window_seconds"] = prev.get("per_window_seconds", [])
            out["resumed_from_window"] = len(out["per_window_nll_sum"])
            print(f"resuming at window {out['resumed_from_window']}", flush=True)
    t_start = time.time()
    prev_s = sum(out["per_window_seconds"])
    for i in range(len(out["per_window_nll_sum"]), n_win):
        t0 = time.time()
        s, npred = window_nll_sum(model, ids[i * L:(i + 1) * L])
        dt = time.time() - t0
        out["per_window_nll_sum"].append(s)
        out["per_window_seconds"].append(round(dt, 2))
        done = len(out["per_window_nll_sum"])
        total = sum(out["per_window_nll_sum"])
        out["windows_done"] = done
        out["predicted_tokens"] = done * (L - 1)
        out["nll_sum"] = total
        out["ppl"] = math.exp(total / (done * (L - 1)))
        out["eval_s"] = round(prev_s + time.time() - t_start, 1)
        out["complete"] = done == n_win
        msg = f"window {i}: nll_sum {s:.6f} ({dt:.1f}s) running ppl {out['ppl']:.6f}"
        if ref is not None and i < len(ref):
            rel = abs(s - ref[i]) / abs(ref[i])
            out.setdefault("ref_rel_diff", []).append(rel)
            msg += f" ref {ref[i]:.6f} rel {rel:.2e}"
        print(msg, flush=True)
        write_json(args.out, out)
    if ref is not None:
        k = min(len(ref), len(out["per_window_nll_sum"]))
        if k:
            out["ref_ppl_same_windows"] = math.exp(sum(ref[:k]) / (k * (L - 1)))
            out["ref_max_rel_diff"] = max(out["ref_rel_diff"][:k]) if "ref_rel_diff" in out else None
    out["peak_rss_mib"] = peak_rss_mib()
    write_json(args.out, out)
    print(json.dumps({k: out[k] for k in ("n_tokens", "ids_sha256", "windows_done", "predicted_tokens", "ppl", "eval_s")}), flush=True)


def task_tokenize(args, tok, model, info):
    ids, tinfo = tokenize_wiki(tok, args.text)
    out = {"task": "tokenize", **info, **tinfo, "versions": versions()}
    write_json(args.out, out)
    print(json.dumps(tinfo), flush=True)


def task_greedy(args, tok, model, info):
    import torch

    prompt = args.prompt
    enc_default = tok(prompt)["input_ids"]
    enc = tok(prompt, add_special_tokens=False)["input_ids"]
    x = torch.tensor([enc], dtype=torch.long)
    out = {
        "task": "greedy",
        **info,
        "prompt": prompt,
        "prompt_ids": enc,
        "prompt_ids_default_call": enc_default,
        "tokenizer_adds_special_tokens_by_default": enc_default != enc,
        "versions": versions(),
    }
    t0 = time.time()
    with torch.inference_mode():
        logits = model(input_ids=x, use_cache=False).logits[0, -1, :].float()
        top = torch.topk(logits, args.topk)
        logp = torch.log_softmax(logits, dim=-1)
    out["last_prompt_position_topk"] = {
        "k": args.topk,
        "ids": top.indices.tolist(),
        "logits": top.values.tolist(),
        "logprobs": logp[top.indices].tolist(),
        "tokens": [tok.decode([i]) for i in top.indices.tolist()],
    }
    # 1) transformers' own generate(): greedy, stops at EOS if the model emits it.
    with torch.inference_mode():
        gen = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=args.new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        )
    new = gen[0, x.shape[1]:].tolist()
    out["generate"] = {
        "max_new_tokens": args.new_tokens,
        "generated_ids": new,
        "n_generated": len(new),
        "text": tok.decode(new),
        "prompt_plus_text": tok.decode(enc + new),
        "eos_token_ids": model.generation_config.eos_token_id,
    }
    # 2) A plain greedy loop with a KV cache that never stops at EOS: exactly N tokens,
    #    with the top-1/top-2 logit margin at each step (a small margin marks a step
    #    where a correct implementation may legitimately pick the other token).
    ids = list(enc)
    steps = []
    with torch.inference_mode():
        res = model(input_ids=x, use_cache=True)
        past = res.past_key_values
        lg = res.logits[0, -1, :].float()
        for _ in range(args.new_tokens):
            t2 = torch.topk(lg, 2)
            nxt = int(t2.indices[0])
            steps.append({"id": nxt, "logit": float(t2.values[0]), "margin_to_2nd": float(t2.values[0] - t2.values[1]), "second_id": int(t2.indices[1])})
            ids.append(nxt)
            res = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past = res.past_key_values
            lg = res.logits[0, -1, :].float()
    forced = [s["id"] for s in steps]
    out["greedy_no_eos_stop"] = {
        "generated_ids": forced,
        "text": tok.decode(forced),
        "steps": steps,
        "min_margin": min(s["margin_to_2nd"] for s in steps),
        "agrees_with_generate_prefix": forced[: len(new)] == new,
    }
    out["seconds"] = round(time.time() - t0, 2)
    out["peak_rss_mib"] = peak_rss_mib()
    write_json(args.out, out)
    print(json.dumps({"prompt_ids": enc, "generated_ids": new, "text": out["generate"]["text"], "top": out["last_prompt_position_topk"]["ids"][:5]}), flush=True)


def peak_rss_mib():
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    except Exception:  # pragma: no cover
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="path to the .gguf file")
    ap.add_argument("--task", required=True, choices=["greedy", "wiki2", "tokenize"])
    ap.add_argument("--out", required=True, help="output JSON path")
    ap.add_argument("--text", default=DEFAULT_WIKI, help="wiki2 raw test file")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--windows", type=int, default=None, help="first N windows (default: all)")
    ap.add_argument("--compare", default=None, help="reference JSON with per-window NLL sums")
    ap.add_argument("--resume", action="store_true", help="continue a partial --out file")
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    tok, model, info = load(args.model)
    info["command"] = " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])
    {"greedy": task_greedy, "wiki2": task_wiki2, "tokenize": task_tokenize}[args.task](args, tok, model, info)


if __name__ == "__main__":
    main()
