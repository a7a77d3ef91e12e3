#!/usr/bin/env python3
"""Score equivalence of the Python peer with the daemon.

Usage: compare.py PEER_SCORES_CSV TIMELINE_CSV [--tolerance 1e-4] [--json]

PEER_SCORES_CSV: `peer.py --scores-out` (window,start_sample,t_end_s,score).
TIMELINE_CSV: `sonitor demo --out DIR` → DIR/timeline.csv (t_end_s,score,threshold,alarm,fault), written by the
real daemon pipeline (tract on the same ONNX), scores with 6 decimals (so differences below 5e-7 are rounding).

Windows are matched by the stamp of their end, in integer milliseconds as the daemon stamps them. Exits 1 when the
largest absolute difference exceeds the tolerance, or when the two files do not hold the same windows.
"""
import argparse
import csv
import json
import statistics
import sys


def by_end_ms(path):
    with open(path, newline="") as f:
        return {round(float(r["t_end_s"]) * 1000): float(r["score"]) for r in csv.DictReader(f)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("peer")
    ap.add_argument("timeline")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="max allowed |Δ score| (default 1e-4; measured: 9e-7)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    peer, daemon = by_end_ms(a.peer), by_end_ms(a.timeline)
    common = sorted(peer.keys() & daemon.keys())
    only_peer, only_daemon = sorted(peer.keys() - daemon.keys()), sorted(daemon.keys() - peer.keys())
    diffs = [abs(peer[t] - daemon[t]) for t in common]
    worst = max(common, key=lambda t: abs(peer[t] - daemon[t])) if common else None
    rel = [abs(peer[t] - daemon[t]) / max(abs(daemon[t]), 1e-12) for t in common]
    out = {
        "windows_compared": len(common),
        "windows_only_in_peer": len(only_peer),
        "windows_only_in_daemon": len(only_daemon),
        "max_abs_diff": max(diffs) if diffs else None,
        "median_abs_diff": statistics.median(diffs) if diffs else None,
        "max_rel_diff": max(rel) if rel else None,
        "worst_window_t_end_s": worst / 1000 if worst is not None else None,
        "score_range_daemon": [min(daemon.values()), max(daemon.values())] if daemon else None,
        "tolerance": a.tolerance,
    }
    ok = bool(common) and not only_peer and not only_daemon and max(diffs) <= a.tolerance
    out["ok"] = ok
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{len(common)} windows compared ({len(only_peer)} only in the peer, {len(only_daemon)} only in the "
              f"daemon's timeline)")
        if diffs:
            print(f"|Δ score|: max {out['max_abs_diff']:.3g} (window ending at {out['worst_window_t_end_s']:.3f} s), "
                  f"median {out['median_abs_diff']:.3g}; max relative {out['max_rel_diff']:.3g}; "
                  f"daemon scores in [{out['score_range_daemon'][0]:.4f}, {out['score_range_daemon'][1]:.4f}]")
        print(f"{'OK' if ok else 'FAIL'}: tolerance {a.tolerance:g}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
