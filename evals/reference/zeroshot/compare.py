"""Compares `evaluate --json --log-samples` output with lm-eval's (`lmeval_run.py`).

    python compare.py OURS.json [OURS2.json ...] -- LMEVAL.json [LMEVAL_CHUNK2.json ...]

Several lm-eval files of one task (chunks run with SAMPLES=A:B) are merged: their docs are
pooled by doc_id and the accuracies recomputed over the pool, weighted by each chunk's size,
with lm-eval's standard error (sample standard deviation / √n). Where lm-eval's docs are only
part of ours (chunks still to run), the log-likelihoods are compared on the docs both have.
"""
import gzip
import json
import math
import sys


def read(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return json.load(f)


def load_ours(paths):
    tasks = {}
    for p in paths:
        d = read(p)
        for t in d["tasks"]:
            tasks[t["task"]] = t
    return tasks


def load_ref(paths):
    """task -> {"docs": {doc_id: lls}, "acc": {metric: (sum, n)}}"""
    ref = {}
    for p in paths:
        d = read(p)
        for name, r in d["results"].items():
            task = name.removeprefix("olmo_")
            entry = ref.setdefault(task, {"docs": {}, "acc": {}})
            n = r.get("sample_len") or len(d["samples"][name])
            for key, v in r.items():
                if key.endswith(",none") and "stderr" not in key:
                    metric = key.split(",")[0]
                    s, m = entry["acc"].get(metric, (0.0, 0))
                    entry["acc"][metric] = (s + v * n, m + n)
            for s in d["samples"].get(name, []):
                entry["docs"][s["doc_id"]] = s["lls"]
    return ref


def stderr(p, n):
    return math.sqrt(p * (1 - p) * n / (n - 1) / n) if n > 1 else float("nan")


def main():
    args = sys.argv[1:]
    cut = args.index("--")
    ours, ref = load_ours(args[:cut]), load_ref(args[cut + 1:])
    print(f"{'task':<14} {'metric':<9} {'n':>6} {'lmq':>17} {'lm-eval':>17} {'diff (pts)':>10}")
    for task, t in ours.items():
        r = ref.get(task)
        if r is None:
            continue
        for m in t["metrics"]:
            if m["name"] not in r["acc"]:
                continue
            s, n = r["acc"][m["name"]]
            v = s / n
            if n != t["n"]:
                print(f"{task:<14} {m['name']:<9} lm-eval has {n} docs, ours {t['n']}: "
                      "compared per request below")
                continue
            print(f"{task:<14} {m['name']:<9} {n:>6} {m['value']:.4f} ± {m['stderr']:.4f} "
                  f"{v:.4f} ± {stderr(v, n):.4f} {100 * (m['value'] - v):>+10.2f}")
        if "samples" in t and r["docs"]:
            diffs = [abs(x - y) for i, s in enumerate(t["samples"]) if i in r["docs"]
                     for x, y in zip(s["lls"], r["docs"][i])]
            flips = sum(1 for i, s in enumerate(t["samples"]) if i in r["docs"]
                        and argmax(s["lls"]) != argmax(r["docs"][i]))
            print(f"   per-request |Δll| max {max(diffs):.2e} mean {sum(diffs) / len(diffs):.2e} "
                  f"over {len(diffs)} requests; argmax differs on {flips} docs")


def argmax(xs):
    return max(range(len(xs)), key=lambda i: xs[i])


if __name__ == "__main__":
    main()
