"""net_bench's report on a row whose repetitions fell at two host speeds
(design.md decisions 995-997): the split is found from the data, each speed's
repetitions and in-speed ratios against uvloop are reported beside the plain
medians, and a row without two speeds is reported exactly as before. Report
only: no server, no network, nothing timed."""

import json
import os
import random
import re
import sys

import pytest
from conftest import bench_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
RUN_J = os.path.join(BENCH, "results", "2026-12-07-j")
ROW = "echo-100k-c10-protocol-tcp"


_bench = bench_module


def _run(rps, cpu):
    return {
        "rps": float(rps),
        "requests": int(rps),
        "p50_us": 100.0,
        "p99_us": 200.0,
        "cpu_us_per_req": float(cpu),
        "server_busy_pct": 95.0,
        "client_busy_pct": 60.0,
        "mode": "epoll",
    }


def _results(per_loop):
    """{loop: [(rps, cpu), ...]} -> net_bench's results for ROW."""
    return {ROW: {lp: {"runs": [_run(*x) for x in xs]} for lp, xs in per_loop.items()}}


def _meta(results):
    meta = dict.fromkeys(["date", "machine", "command", "settings", "versions", "malloc"], "-")
    return dict(meta, _results=results)


def _by_loop(rows):
    return {r["loop"]: r for r in rows}


def test_two_speeds_are_told_apart_with_counts_and_in_speed_ratios():
    """Every loop's repetitions at about 38,000/s or about 16,000/s (run j's
    echo 100 KiB row): the split is found, with each speed's repetitions,
    medians and ratios against uvloop's in the same speed; the plain medians
    stay as they were and the summary's row is marked."""
    nb = _bench("net_bench")
    loops = ["uvloop", "uringloop-io_uring", "uringloop-epoll"]
    results = _results(
        {
            "uvloop": [(38000, 25), (37000, 26), (39000, 24), (16000, 60), (15000, 62)],
            "uringloop-io_uring": [
                (40000, 23),
                (17000, 55),
                (16500, 56),
                (17500, 54),
                (16800, 57),
            ],
            "uringloop-epoll": [(16000, 56), (16200, 57), (15800, 58), (16100, 55), (39500, 24)],
        }
    )
    rows = _by_loop(nb.summarise(results, loops))
    uv, io, ep = rows["uvloop"], rows["uringloop-io_uring"], rows["uringloop-epoll"]
    # the plain medians: the speeds each loop drew more often
    assert uv["rps"] == 37000 and io["rps"] == 17000 and io["ratio"] == 17000 / 37000
    sp = io["speeds"]
    assert (sp["slow_max"], sp["fast_min"]) == (17500, 37000)
    assert sp["both"] == loops and sp["cut"] is None
    assert uv["speeds"]["fast"] == {
        "n": 3,
        "rps": 38000,
        "cpu_us_per_req": 25,
        "ratio": 1.0,
        "cpu_ratio": 1.0,
    }
    assert (uv["speeds"]["slow"]["n"], uv["speeds"]["slow"]["rps"]) == (2, 15500)
    assert sp["fast"]["n"] == 1 and sp["fast"]["ratio"] == pytest.approx(40000 / 38000)
    assert sp["fast"]["cpu_ratio"] == pytest.approx(23 / 25)
    assert sp["slow"]["n"] == 4 and sp["slow"]["rps"] == 16900
    assert sp["slow"]["ratio"] == pytest.approx(16900 / 15500)
    assert sp["slow"]["cpu_ratio"] == pytest.approx(55.5 / 61)
    assert (ep["speeds"]["fast"]["n"], ep["speeds"]["slow"]["n"]) == (1, 4)

    md = nb.markdown(list(rows.values()), _meta(results))
    assert f"| {ROW} (two host speeds: see below) | 37,000/s |" in md
    assert "## Rows at two host speeds: each speed apart (decision 995)" in md
    assert (
        f"| {ROW} | uringloop-io_uring | 0.46 / 2.12 (5) | 1 | 40,000 (23.0 µs) | 1.05 / 0.92 "
        "| 4 | 16,900 (55.5 µs) | 1.09 / 0.91 |" in md
    )
    assert f"- {ROW}: slow ≤ 17,500/s < fast ≥ 37,000/s (Otsu's cut)" in md


def test_chart_says_a_row_has_two_speeds():
    """The chart's bars stay the plain medians; the x label of a row at two
    host speeds says so, in both of its family's panels."""
    pytest.importorskip("matplotlib", reason="matplotlib draws net_bench's chart")
    import matplotlib.pyplot as plt

    nb = _bench("net_bench")
    loops = ["uvloop", "uringloop-io_uring"]
    results = _results(
        {
            "uvloop": [(38000, 25), (37000, 26), (16000, 60), (15000, 62), (15500, 61)],
            "uringloop-io_uring": [(40000, 23), (39000, 24), (17000, 55), (16500, 56), (17500, 54)],
        }
    )
    rows = nb.summarise(results, loops)
    fig = nb.chart_figure(rows, loops, {"date": "-", "reps": 5, "machine_short": "-"})
    try:
        ticks = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]
        assert ticks == ["protocol tcp\n(2 speeds)"] * 2
        rps = [p.get_height() for p in fig.axes[0].patches]
        assert rps == [16.0, 17.5]
    finally:
        plt.close(fig)


def test_one_speed_with_noise_is_left_as_it_was():
    """Repetitions within ±20 % of one level a loop (loops at 0.6x to 1.2x of
    each other) never split: a loop's two sides are then less than 1.2 / 0.8
    = 1.5x apart. The rows, results.md and the summary are what they were."""
    nb = _bench("net_bench")
    loops = ["asyncio", "uvloop", "rloop", "uringloop-io_uring", "uringloop-epoll"]
    levels = [0.6, 1.0, 1.0, 1.2, 1.1]
    for seed in range(40):
        rng = random.Random(seed)
        results = _results(
            {
                lp: [
                    (30000 * lv * rng.uniform(0.8, 1.2), 30 / lv * rng.uniform(0.8, 1.2))
                    for _ in range(7)
                ]
                for lp, lv in zip(loops, levels, strict=True)
            }
        )
        rows = nb.summarise(results, loops)
        assert not any("speeds" in r for r in rows), seed
        assert nb.two_speeds(results[ROW]) is None
        md = nb.markdown(rows, _meta(results))
        assert "two host speeds" not in md and "2 speeds" not in md, seed


def test_one_loop_at_two_speeds_is_no_host_speed():
    """Only one loop's repetitions at two levels (a loop's own modes, decision
    585, or one draw of the host): no split, the row left as it was. A cut
    given by hand (--cut) is applied all the same."""
    nb = _bench("net_bench")
    loops = ["uvloop", "rloop", "uringloop-io_uring"]
    results = _results(
        {
            "uvloop": [(16000, 60), (15500, 61), (16500, 59), (16200, 60), (15800, 60)],
            "rloop": [(40000, 24), (16000, 60), (39000, 25), (15500, 61), (16500, 60)],
            "uringloop-io_uring": [(17000, 55), (16800, 56), (17200, 55), (16900, 56), (17100, 54)],
        }
    )
    assert nb.two_speeds(results[ROW]) is None
    rows = nb.summarise(results, loops)
    assert not any("speeds" in r for r in rows)
    assert "two host speeds" not in nb.markdown(rows, _meta(results))
    cut = _by_loop(nb.summarise(results, loops, {ROW: 25000}))
    assert cut["rloop"]["speeds"]["both"] == ["rloop"] and cut["rloop"]["speeds"]["cut"] == 25000
    assert (cut["rloop"]["speeds"]["fast"]["n"], cut["rloop"]["speeds"]["slow"]["n"]) == (2, 3)
    assert cut["uvloop"]["speeds"]["fast"] == {"n": 0}


def test_run_j_renders_as_published_but_for_the_split():
    """Run j's committed results.json, rendered now: results.md is the
    committed one line for line, but for the marked summary lines of the rows
    at two speeds and the added section, whose echo 100 KiB TCP row has
    uvloop's 3 fast and 2 slow repetitions (decision 978(a))."""
    nb = _bench("net_bench")
    with open(os.path.join(RUN_J, "results.json")) as f:
        saved = json.load(f)
    with open(os.path.join(RUN_J, "results.md")) as f:
        published = f.read()
    rows = nb.summarise(saved["results"], saved["meta"]["loops"])
    md = nb.markdown(rows, dict(saved["meta"], _results=saved["results"]))
    split = {r["workload"] for r in rows if "speeds" in r}
    assert ROW in split and "http-httptools" not in split
    head, rest = md.split("\n## Rows at two host speeds", 1)
    section, tail = rest.split("\n\n\n## ", 1)
    assert head.replace(" (two host speeds: see below)", "") + "\n\n## " + tail == published
    assert sum(f"| {w} (two host speeds: see below) |" in head for w in split) == len(split)
    uv = re.search(rf"\| {ROW} \| uvloop \| [^|]+ \| (\d+) \|[^|]+\|[^|]+\| (\d+) \|", section)
    assert uv.groups() == ("3", "2")


def test_pooled_run_j_gives_978a():
    """pool_runs.py's pooling of run j and its reruns j2-j4: 28 repetitions a
    loop; cut at 25,000/s by hand as in 978(a), its in-speed figures; Otsu's
    own cut puts epoll's 23,901/s repetition with the fast ones."""
    pool_runs = _bench("pool_runs")
    nb = _bench("net_bench")
    files = [os.path.join(RUN_J, "results.json")] + [
        os.path.join(RUN_J, "reruns", j, "results.json") for j in ("j2", "j3", "j4")
    ]
    saved = []
    for path in files:
        with open(path) as f:
            saved.append((path, json.load(f)))
    meta, results = pool_runs.pool(saved, [ROW])
    assert list(results) == [ROW]
    assert {len(e["runs"]) for e in results[ROW].values()} == {28}

    def speeds(cuts):
        rows = _by_loop(nb.summarise(results, meta["loops"], cuts))
        return {
            lp: tuple(
                (s["n"], round(s["ratio"], 2), round(s["cpu_ratio"], 2))
                for s in (r["speeds"]["fast"], r["speeds"]["slow"])
            )
            for lp, r in rows.items()
        }

    hand = speeds({ROW: 25000})
    assert hand["uringloop-io_uring"] == ((9, 1.05, 0.93), (19, 1.08, 0.88))
    assert hand["uringloop-epoll"] == ((7, 1.04, 0.95), (21, 1.08, 0.92))
    assert hand["asyncio"] == ((9, 1.06, 0.94), (19, 1.02, 0.98))
    assert hand["rloop"] == ((9, 1.04, 0.95), (19, 1.04, 0.96))
    assert hand["rsloop"] == ((9, 0.76, 1.29), (19, 0.93, 1.07))
    own = speeds(None)
    assert own["uringloop-io_uring"] == hand["uringloop-io_uring"]
    assert own["uringloop-epoll"] == ((8, 1.02, 0.96), (20, 1.07, 0.93))


def test_pool_runs_will_not_write_next_to_an_input(tmp_path):
    """--out may not be an input's folder: a published run is never rewritten."""
    import subprocess

    src = os.path.join(RUN_J, "reruns", "j4", "results.json")
    mine = tmp_path / "results.json"
    with open(src) as f:
        mine.write_text(f.read())
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "pool_runs.py"), str(mine), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "holds the input" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["results.json"]
