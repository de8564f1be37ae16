"""Pool the repetitions of several net_bench runs into one report (decision 996).

    python benchmarks/pool_runs.py benchmarks/results/2026-12-07-j/results.json \\
        benchmarks/results/2026-12-07-j/reruns/j*/results.json --out /tmp/pooled-j
    python benchmarks/pool_runs.py A/results.json B/results.json --out /tmp/p \\
        --workloads echo-100k-c10-protocol-tcp --cut echo-100k-c10-protocol-tcp=25000

Each (workload, loop)'s repetitions are the files' runs one after another, in
the order given; a workload or a loop a file lacks adds nothing. The report
is net_bench's (`write_report`): results.json, results.md and chart.png in
--out, the plain medians over every pooled repetition and, for a row whose
repetitions fell at two host speeds, each speed apart (decision 995; --cut
gives a row's cut by hand). It measures nothing, and --out may not be the
folder of an input: a published run's files are never rewritten.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import net_bench  # noqa: E402


def pool(saved, prefixes=()):
    """saved: [(path, {"meta", "results"})] -> (meta, results) pooled."""
    results, loops = {}, []
    sources = []
    for path, run in saved:
        meta = run["meta"]
        nreps = {}
        for wid, per in run["results"].items():
            if prefixes and not wid.startswith(tuple(prefixes)):
                continue
            into = results.setdefault(wid, {})
            for lp, entry in per.items():
                if lp not in loops:
                    loops.append(lp)
                got = into.setdefault(lp, {"runs": []})
                got["runs"].extend(entry.get("runs", []))
                nreps[wid] = max(nreps.get(wid, 0), len(entry.get("runs", [])))
                for k in ("skip", "error"):
                    if entry.get(k):
                        got.setdefault(k, entry[k])
        reps = sorted(set(nreps.values()))
        sources.append(
            f"{path}: `{meta.get('command', '?')}` ({meta.get('date', '?')}, "
            f"{'/'.join(map(str, reps)) or 0} repetitions a loop)"
        )
    for per in results.values():
        for entry in per.values():
            # a loop that ran in one file is not skipped in the pool: the
            # other files' skips or errors stay out of the report
            if entry["runs"]:
                entry.pop("skip", None)
                entry.pop("error", None)
    first = saved[0][1]["meta"]
    order = [lp for lp in first.get("loops") or net_bench.ALL_LOOPS if lp in loops]
    meta = dict(first)
    meta.update(
        {
            "command": "python benchmarks/pool_runs.py " + " ".join(sys.argv[1:]),
            "note": "Pooled repetitions of: " + "; ".join(sources),
            "reps": "all pooled repetitions",
            "loops": order + [lp for lp in loops if lp not in order],
        }
    )
    return meta, results


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("files", nargs="+", metavar="RESULTS_JSON", help="net_bench results.json files")
    ap.add_argument("--out", required=True, help="folder for the pooled report")
    ap.add_argument(
        "--workloads", default="", help="comma-separated id prefixes (default: every row)"
    )
    ap.add_argument(
        "--cut",
        action="append",
        metavar="WORKLOAD=REQ_PER_S",
        help="split that row's repetitions into two host speeds at that req/s (repeatable)",
    )
    ap.add_argument("--no-chart", action="store_true")
    opts = ap.parse_args()
    out = os.path.abspath(opts.out)
    for path in opts.files:
        if os.path.dirname(os.path.abspath(path)) == out:
            sys.exit(f"pool_runs: --out {opts.out} holds the input {path}: name another folder")
    saved = []
    for path in opts.files:
        with open(path) as f:
            saved.append((path, json.load(f)))
    prefixes = [p.strip() for p in opts.workloads.split(",") if p.strip()]
    meta, results = pool(saved, prefixes)
    if not results:
        sys.exit("pool_runs: no workload left (--workloads)")
    os.makedirs(out, exist_ok=True)
    net_bench.write_report(meta, results, out, opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
