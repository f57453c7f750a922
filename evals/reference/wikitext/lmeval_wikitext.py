"""lm-evaluation-harness 0.4.13's `wikitext` metrics (word/byte perplexity, bits per byte) on
the WikiText-2 raw test file, for checking `evaluate --ppl wiki2 --ppl-style lm-eval`.

Documents: the raw file cut into articles by the rule of EleutherAI's
`wikitext_document_level` dataset (the dataset the task loads; no hub here, so the rule is
applied to the same raw file). Detokenization, word and byte counts: lm-eval's own
`wikitext_detokenizer` and `process_results`. Log-likelihoods: lm-eval's
`HFLM.loglikelihood_rolling` on SmolLM2 loaded by transformers from the same GGUF, f32.

    python lmeval_wikitext.py WIKI_TEST_RAW MODEL_DIR GGUF_FILE N_SCORED OUT.json

Writes, for every article, its words, bytes, token count and the sha256 of its detokenized
text; for the first N_SCORED articles also lm-eval's log-likelihood; and the aggregated
metrics over those N_SCORED articles. `MAX_LENGTH=N` sets lm-eval's window length (default:
the model's context, 8192 for SmolLM2); `THREADS` torch's threads.
"""
import hashlib
import json
import math
import os
import sys
import time

import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer


def articles(text):
    """EleutherAI wikitext_document_level: a new page at each level-1 `= Title =` line."""
    pages, lines = [], []
    for line in text.split("\n"):
        closed = line.replace("= = =", "===").replace("= =", "==").strip()
        if closed.startswith("= ") and closed.strip().endswith(" ="):
            page = "\n".join(lines)
            if page.strip():
                pages.append(page)
            lines = []
        lines.append(line)
    pages.append("\n".join(lines))
    return pages


def main():
    raw, model_dir, gguf, n_scored, out = sys.argv[1:6]
    n_scored = int(n_scored)
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    pages = articles(open(raw, encoding="utf-8").read())
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf, dtype=torch.float32).eval()
    max_length = int(os.environ["MAX_LENGTH"]) if "MAX_LENGTH" in os.environ else None
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1, max_length=max_length)
    docs = []
    for page in pages:
        doc = {"page": page}
        text = wikitext_detokenizer(doc)
        counts = process_results(doc, [0.0])
        docs.append({
            "words": counts["word_perplexity"][1],
            "bytes": counts["byte_perplexity"][1],
            "tokens": len(lm.tok_encode(text)),
            "detok_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        })
    t0 = time.time()
    for i, page in enumerate(pages[:n_scored]):
        doc = {"page": page}
        req = Instance(request_type="loglikelihood_rolling", doc=doc,
                       arguments=(wikitext_detokenizer(doc),), idx=0)
        docs[i]["loglikelihood"] = lm.loglikelihood_rolling([req], disable_tqdm=True)[0]
        print(f"article {i}: {docs[i]}", file=sys.stderr)
    secs = time.time() - t0
    scored = docs[:n_scored]
    ll = sum(d["loglikelihood"] for d in scored)
    words = sum(d["words"] for d in scored)
    nbytes = sum(d["bytes"] for d in scored)
    result = {
        "articles": len(pages),
        "prefix_token_id": lm.prefix_token_id,
        "max_length": lm.max_length,
        "scored_articles": n_scored,
        "seconds": secs,
        "word_perplexity": math.exp(-ll / words) if scored else None,
        "byte_perplexity": math.exp(-ll / nbytes) if scored else None,
        "bits_per_byte": -ll / nbytes / math.log(2) if scored else None,
        "docs": docs,
    }
    json.dump(result, open(out, "w"), indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "docs"}, indent=1))


if __name__ == "__main__":
    main()
