import json, sys
mine = json.load(open(sys.argv[1])); ref = json.load(open(sys.argv[2]))
print(f"{'task':<12} {'metric':<9} {'lmq':>16} {'lm-eval':>16} {'diff (pts)':>10}")
for t in mine["tasks"]:
    r = ref["results"].get("olmo_" + t["task"])
    if r is None: continue
    for m in t["metrics"]:
        v, s = r[m["name"] + ",none"], r[m["name"] + "_stderr,none"]
        print(f"{t['task']:<12} {m['name']:<9} {m['value']:.4f} ± {m['stderr']:.4f} {v:.4f} ± {float(s):.4f} {100*(m['value']-v):>+10.2f}")
    if "samples" in t:
        a = [s["lls"] for s in t["samples"]]
        b = [s["lls"] for s in sorted(ref["samples"]["olmo_" + t["task"]], key=lambda s: s["doc_id"])]
        d = [abs(x - y) for p, q in zip(a, b) for x, y in zip(p, q)]
        print(f"   per-request |Δll| max {max(d):.2e} mean {sum(d)/len(d):.2e} over {len(d)} requests")
