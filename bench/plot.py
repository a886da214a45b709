"""Decode speed per format and engine, with the memory-bandwidth ceiling: the PNG in bench/README.md.

    python bench/plot.py RUN.json OUT.png      (RUN.json: bench/run.py --json, or WORKDIR/last_run.json)

Needs matplotlib (run.py calls it with whichever of .venv and the peers' venv has it).
"""
from __future__ import annotations

import json
import sys

ORDER = ["f16", "q8_0", "q4_0", "q4_k", "int4_g128"]
COLORS = {"llamacpu": "#1f77b4", "llama.cpp": "#ff7f0e", "transformers fp32": "#7f7f7f",
          "transformers bf16": "#bcbcbc"}


def main(src: str, dst: str) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = json.load(open(src))
    s = run["summary"]
    bw = s.get("bandwidth_gbps")
    rows = [r for r in s["rows"] if not r.get("error") and r["decode"]]
    if not rows:
        print("nothing to plot", file=sys.stderr)
        return 1
    n_key = min({k for r in rows for k in r["decode"]}, key=int)
    groups = []  # (label, shape, llamacpu format)
    for shape in dict.fromkeys(r["shape"] for r in rows):
        fmts = [f for f in ORDER if any(r["shape"] == shape and r["engine"] == "llamacpu" and r["format"] == f
                                        for r in rows)]
        groups += [(f"{f}\n{shape}" if len({r['shape'] for r in rows}) > 1 else f, shape, f) for f in fmts]
    series = ["llamacpu", "llama.cpp", "transformers fp32", "transformers bf16"]
    width = 0.2
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(groups)), 4.6))
    for gi, (label, shape, fmt) in enumerate(groups):
        for si, name in enumerate(series):
            if name.startswith("transformers"):
                if fmt != "f16":
                    continue
                r = next((x for x in rows if x["engine"] == "transformers" and x["format"] == name.split()[1]
                          and x["shape"] == shape), None)
            else:
                r = next((x for x in rows if x["engine"] == name and x["format"] == fmt and x["shape"] == shape), None)
            v = r["decode"].get(n_key) if r else None
            if v:
                x = gi + (si - 1.5) * width
                ax.bar(x, v, width, color=COLORS[name], label=name if gi == 0 or name.startswith("transformers")
                       else None)
                ax.text(x, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
        own = next((x for x in rows if x["engine"] == "llamacpu" and x["format"] == fmt and x["shape"] == shape), None)
        if bw and own and own.get("decode_bytes"):
            ceiling = bw * 1e9 / own["decode_bytes"]
            ax.plot([gi - 2 * width, gi + 2 * width], [ceiling, ceiling], color="black", lw=1, ls="--",
                    label="bandwidth ceiling" if gi == 0 else None)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8, loc="upper left")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g[0] for g in groups])
    ax.set_ylabel(f"decode tokens/s (@{n_key} new tokens)")
    m = run.get("machine", {})
    ax.set_title(f"Decode speed, {', '.join(dict.fromkeys(g[1] for g in groups))}: {m.get('cpu', '')} "
                 f"{run.get('threads')} threads, {run.get('date', '')}"
                 + (f"\nceiling = measured read bandwidth {bw:.1f} GB/s ÷ bytes per token" if bw else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
