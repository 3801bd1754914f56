#!/usr/bin/env python3
"""Scaling curves for docs/benchmarks.md, drawn as SVG with the standard library.

Run from the repository root, after `cargo build --release -p squall-examples`,
with etcd on PATH (`source <(bash tests/testenv/provision.sh --print-env)`):

    python3 docs/plots/curves.py            # writes docs/plots/*.svg and *.csv

Three curves over Storm's throughput-vs-latency topology, acking on:
1. sentences acked/s against worker processes (1-4, gRPC between them);
2. sentences acked/s and p99 against maxSpoutPending, one process;
3. complete latency (p50, p99) against offered rate, one process: the spout
   schedules each root (open loop), and latency counts from the schedule, so
   falling behind shows up as latency (no coordinated omission).
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "squall-examples")
MANIFEST = os.path.join(ROOT, "examples", "throughput-vs-latency", "topology.yaml")


def rewrite(text, old, new):
    if old not in text:
        sys.exit(f"the manifest has no {old!r}")
    return text.replace(old, new)


def manifest(workers=1, pending=5000, rate=0):
    m = open(MANIFEST).read()
    m = rewrite(m, "workers: 1\n", f"workers: {workers}\n")
    m = rewrite(m, "maxSpoutPending: 5000\n", f"maxSpoutPending: {pending}\n")
    return rewrite(m, "config: {rate: 0}", f"config: {{rate: {rate:.0f}}}")


def spout_rows(stderr):
    """The spout's acked/s from each row of the live table."""
    rows = []
    for line in stderr.splitlines():
        f = line.split()
        if len(f) > 4 and f[0] == "spout" and f[1] == "spout":
            rows.append(float(f[4]))
    return rows


def run(tmp, text, seconds, etcd=None):
    path = os.path.join(tmp, "topology.yaml")
    with open(path, "w") as f:
        f.write(text)
    args = [BIN, "local", path, "--json", "--duration", f"{seconds}s",
            "--report-interval", "1s"]
    if etcd:
        logs = os.path.join(tmp, "logs")
        shutil.rmtree(logs, ignore_errors=True)
        args += ["--processes", "--etcd", etcd, "--log-dir", logs]
    p = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 120)
    if p.returncode != 0:
        sys.exit(f"run failed: {' '.join(args)}\n{p.stderr[-2000:]}")
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    return summary, spout_rows(p.stderr)


def steady(rows, skip=4):
    rows = rows[skip:] or rows
    return statistics.median(rows) if rows else 0.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_etcd(tmp):
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    p = subprocess.Popen(
        ["etcd", "--data-dir", os.path.join(tmp, "etcd"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"default=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", client), timeout=0.2):
                return p, url
        except OSError:
            time.sleep(0.1)
    p.kill()
    sys.exit("etcd did not start (is it on PATH?)")


def svg(path, title, xlabel, series, ylabel, log_x=False):
    """A line chart: series = [(name, [(x, y), ...]), ...]."""
    import math
    w, h, l, r, t, b = 640, 400, 80, 150, 40, 50
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts]
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    x0, x1 = fx(min(xs)), fx(max(xs))
    y1 = max(ys) * 1.1 or 1
    sx = lambda v: l + (fx(v) - x0) / ((x1 - x0) or 1) * (w - l - r)
    sy = lambda v: h - b - v / y1 * (h - t - b)
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="22" text-anchor="middle" font-size="14">{title}</text>',
           f'<line x1="{l}" y1="{h - b}" x2="{w - r}" y2="{h - b}" stroke="black"/>',
           f'<line x1="{l}" y1="{t}" x2="{l}" y2="{h - b}" stroke="black"/>',
           f'<text x="{(l + w - r) / 2}" y="{h - 12}" text-anchor="middle">{xlabel}</text>',
           f'<text x="16" y="{(t + h - b) / 2}" text-anchor="middle" '
           f'transform="rotate(-90 16 {(t + h - b) / 2})">{ylabel}</text>']
    for i in range(6):
        v = y1 * i / 5
        out.append(f'<line x1="{l - 4}" y1="{sy(v):.1f}" x2="{w - r}" y2="{sy(v):.1f}" '
                   f'stroke="#ddd"/><text x="{l - 6}" y="{sy(v) + 4:.1f}" '
                   f'text-anchor="end">{v:,.3g}</text>')
    for x in sorted(set(xs)):
        out.append(f'<text x="{sx(x):.1f}" y="{h - b + 16}" text-anchor="middle">{x:g}</text>')
    for i, (name, pts) in enumerate(series):
        c = colours[i % len(colours)]
        d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="2"/>')
        for x, y in pts:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{c}"/>')
        out.append(f'<text x="{w - r + 10}" y="{t + 16 * i + 10}" fill="{c}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def csv(path, header, rows):
    with open(path, "w") as f:
        f.write(",".join(header) + "\n")
        for r in rows:
            f.write(",".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "plots"))
    ap.add_argument("--seconds", type=int, default=8, help="per one-process point")
    ap.add_argument("--cluster-seconds", type=int, default=14, help="per worker-count point")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    cores = os.cpu_count()
    tmp = tempfile.mkdtemp(prefix="squall-curves-")
    etcd, url = start_etcd(tmp)
    try:
        # 1. Throughput against worker processes.
        workers = []
        for n in (1, 2, 3, 4):
            s, rows = run(tmp, manifest(workers=n), a.cluster_seconds, etcd=url)
            workers.append((n, steady(rows), s["complete_latency_ms"]["p99"]))
            print(f"workers={n}: {workers[-1][1]:.0f}/s p99 {workers[-1][2]:.1f} ms", flush=True)
        csv(os.path.join(a.out, "workers.csv"), ["workers", "acked_per_s", "p99_ms"], workers)
        svg(os.path.join(a.out, "workers.svg"),
            f"Sentences acked/s against worker processes ({cores} cores)",
            "worker processes", [("acked/s", [(w, r) for w, r, _ in workers])], "sentences/s")

        # 2. Throughput against maxSpoutPending.
        pending = []
        for p in (10, 50, 200, 1000, 5000, 20000):
            s, _ = run(tmp, manifest(pending=p), a.seconds)
            pending.append((p, s["acked_per_s"], s["complete_latency_ms"]["p99"]))
            print(f"maxSpoutPending={p}: {pending[-1][1]:.0f}/s p99 {pending[-1][2]:.2f} ms",
                  flush=True)
        csv(os.path.join(a.out, "pending.csv"), ["max_spout_pending", "acked_per_s", "p99_ms"],
            pending)
        svg(os.path.join(a.out, "pending.svg"),
            f"Sentences acked/s against maxSpoutPending, one process ({cores} cores)",
            "maxSpoutPending (log scale)", [("acked/s", [(p, r) for p, r, _ in pending])],
            "sentences/s", log_x=True)

        # 3. Latency against offered rate (open loop), as fractions of the peak.
        peak = max(r for _, r, _ in pending)
        latency = []
        for f in (0.1, 0.25, 0.5, 0.7, 0.8, 0.9, 1.0):
            s, _ = run(tmp, manifest(rate=peak * f), a.seconds)
            ms = s["complete_latency_ms"]
            latency.append((round(peak * f), s["acked_per_s"], ms["p50"], ms["p99"]))
            print(f"offered={peak * f:.0f}/s: acked {s['acked_per_s']:.0f}/s "
                  f"p50 {ms['p50']:.2f} p99 {ms['p99']:.2f} ms", flush=True)
        csv(os.path.join(a.out, "latency.csv"),
            ["offered_per_s", "acked_per_s", "p50_ms", "p99_ms"], latency)
        svg(os.path.join(a.out, "latency.svg"),
            f"Complete latency against offered rate, one process ({cores} cores)",
            "offered sentences/s",
            [("p50", [(o, p50) for o, _, p50, _ in latency]),
             ("p99", [(o, p99) for o, _, _, p99 in latency])], "ms")
    finally:
        etcd.kill()
        etcd.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
