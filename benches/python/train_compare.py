#!/usr/bin/env python3
"""Training speed: `sonitor-train fit` (burn, CPU) against train_peer.py (PyTorch, CPU) on the same data set.

Runs the two alternately, `--rounds` times each, with the same network (`--arch small`), loss (sub-cluster AdaCos),
labels (attribute), batch and number of epochs, and reports the training throughput of each epoch (clips per
second of wall time, from each program's own per-epoch line). The first epoch of every run is a warm-up and is
left out of the medians. Both use every core (burn's rayon pool, torch's intra-op pool).

Usage: train_compare.py --data DIR [--epochs 3] [--rounds 3] [--batch 32] [--bin target/release/sonitor-train]
"""
import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
EPOCH = re.compile(r"epoch (\d+)/\d+ loss ([0-9.]+) s ([0-9.]+) ([0-9.]+) s \(([0-9.]+) clips/s\)")


def burn(a, out):
    cmd = [str(a.bin), "fit", "--data", str(a.data), "--out", str(out), "--arch", "small", "--loss",
           "subcluster-adacos", "--labels", "attribute", "--epochs", str(a.epochs), "--batch", str(a.batch),
           "--seed", str(a.seed)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}")
    rows = [{"epoch": int(m[1]), "loss": float(m[2]), "wall_s": float(m[4]), "clips_per_s": float(m[5])}
            for m in EPOCH.finditer(p.stderr)]
    params = re.search(r"network: (\d+) parameters", p.stderr)
    return rows, int(params[1]) if params else None


def torch_peer(a):
    py = HERE / ".venv-train" / "bin" / "python"
    cmd = [str(py if py.exists() else sys.executable), str(HERE / "train_peer.py"), "--data", str(a.data),
           "--epochs", str(a.epochs), "--batch", str(a.batch), "--seed", str(a.seed), "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}")
    params = re.search(r"\((\d+) with BatchNorm running statistics\)", p.stderr)
    rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    return rows, int(params[1]) if params else None, p.stderr.splitlines()[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bin", type=Path, default=REPO / "target" / "release" / "sonitor-train")
    a = ap.parse_args()
    if a.epochs < 2:
        sys.exit("--epochs must be at least 2 (the first epoch of each run is a warm-up)")
    speeds = {"burn": [], "torch": []}
    losses = {"burn": [], "torch": []}
    with tempfile.TemporaryDirectory(prefix="sonitor-train-bench-") as tmp:
        for r in range(a.rounds):
            b_rows, b_params = burn(a, Path(tmp) / f"burn-{r}")
            t_rows, t_params, t_head = torch_peer(a)
            if r == 0:
                print(f"torch peer: {t_head}")
                if b_params != t_params:
                    sys.exit(f"not the same network: burn has {b_params} parameters, the torch peer {t_params}")
                print(f"same network: {b_params} parameters (BatchNorm running statistics included) in both")
            for name, rows in (("burn", b_rows), ("torch", t_rows)):
                if len(rows) != a.epochs:
                    sys.exit(f"{name}: expected {a.epochs} epoch lines, got {len(rows)}")
                speeds[name] += [row["clips_per_s"] for row in rows[1:]]
                losses[name].append([round(row["loss"], 4) for row in rows])
                print(f"round {r + 1} {name:5s}: " + ", ".join(
                    f"epoch {row['epoch']} {row['clips_per_s']:.1f} clips/s (loss {row['loss']:.4f})"
                    for row in rows), flush=True)
    med = {k: statistics.median(v) for k, v in speeds.items()}
    print(json.dumps({"epochs": a.epochs, "rounds": a.rounds, "batch": a.batch,
                      "burn_clips_per_s": med["burn"], "torch_clips_per_s": med["torch"],
                      "burn_time_over_torch": med["torch"] / med["burn"], "losses": losses}))
    print(f"median training throughput (epochs 2..{a.epochs} of {a.rounds} runs each): burn {med['burn']:.1f} "
          f"clips/s, PyTorch {med['torch']:.1f} clips/s; burn takes {med['torch'] / med['burn']:.2f}x the "
          f"time of PyTorch per clip")


if __name__ == "__main__":
    main()
