#!/usr/bin/env python3
"""The Python peer of sonitor: what a user would write instead of the daemon, for one machine on one WAV file.

Same work as the daemon's pipeline (src/window.rs, src/features.rs, src/embed.rs), single-threaded and as fast as
plain Python allows:
  WAV → windows of `window_samples` every `window_hop_samples` (first window at sample 0, only full windows)
      → features (librosa: the calls of scripts/reference/librosa_logmel.py, filterbank built once)
      → embedding (onnxruntime, 1 intra-op and 1 inter-op thread, sequential, batch 1 per window)
      → score (min cosine distance to the section's centroids, as crates/sonitor-core/src/score.rs; averaged with
        the level baseline's distance of the window's band means when the bundle's section has one).

Timed: the processing loop only, with time.process_time() (CPU of the whole process, all threads) and
time.perf_counter() (wall), in total and per stage. Not timed: imports, loading the bundle and the ONNX session,
reading the WAV, and one warm-up window before the loop (first-call costs of librosa/numpy/onnxruntime).

Usage:
  peer.py [--model models/default] [--wav FILE] [--section pump/section_00] [--repeat N] [--json]
          [--scores-out FILE.csv] [--features librosa|melspectrogram|numpy] [--channel C]
"""
import os

# Single-threaded numerics: must be set before numpy (and its BLAS) is imported.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
           "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

try:
    import numpy as np  # noqa: E402
    import librosa  # noqa: E402
    import onnxruntime as ort  # noqa: E402
    import scipy.linalg  # noqa: E402  (librosa's own dependency)
    import soundfile as sf  # noqa: E402
except ImportError as e:
    from venv_reexec import reexec_or_exit

    reexec_or_exit(".venv", e, "benches/python/setup")

REPO = Path(__file__).resolve().parents[2]


def section_key(machine_type, section):
    """bundle.rs `section_key`: "<type>/section_SS"."""
    return f"{machine_type}/section_{int(section):02d}"


class Bundle:
    """A model bundle directory: manifest.json + the ONNX file it names (see crates/sonitor-core/src/bundle.rs)."""

    def __init__(self, path):
        self.dir = Path(path)
        self.manifest = json.loads((self.dir / "manifest.json").read_text())
        self.features = self.manifest["features"]
        self.inputs = self.manifest["inputs"]  # [{name, view: log_mel|spectrum, shape}]
        self.output = self.manifest["output"]["name"]
        self.onnx_path = self.dir / self.manifest["onnx_file"]
        self.sections = {section_key(s["machine_type"], s["section"]): s for s in self.manifest["sections"]}

    def section(self, key):
        if key not in self.sections:
            sys.exit(f"section {key!r} is not in {self.dir}; it has: {', '.join(sorted(self.sections))}")
        return self.sections[key]


class Features:
    """The two feature views of one window, as features.rs documents them."""

    def __init__(self, p, mode="librosa"):
        self.p = p
        self.mode = mode
        self.sr = p["sample_rate"]
        self.floor = np.float32(p["log_floor"])
        self.half = p["window_samples"] // 2
        # The filterbank librosa.feature.melspectrogram builds on every call (float32, Slaney scale + norm),
        # built once here.
        self.mel_basis = librosa.filters.mel(
            sr=self.sr, n_fft=p["n_fft"], n_mels=p["n_mels"], fmin=p["fmin_hz"], fmax=p["fmax_hz"],
            htk=False, norm="slaney", dtype=np.float32,
        )
        # librosa.stft's window: periodic Hann in float64 (frames are multiplied in float64, as librosa does).
        self.hann = librosa.filters.get_window("hann", p["n_fft"], fftbins=True)

    def mel(self, w):
        """[frames, n_mels] mel spectrogram of one window."""
        p = self.p
        if self.mode == "melspectrogram":
            # The exact call of scripts/reference/librosa_logmel.py (rebuilds the filterbank every window).
            return librosa.feature.melspectrogram(
                y=w, sr=self.sr, n_fft=p["n_fft"], hop_length=p["stft_hop"], win_length=p["n_fft"],
                window="hann", center=False, power=p["mel_power"], n_mels=p["n_mels"], fmin=p["fmin_hz"],
                fmax=p["fmax_hz"], htk=False, norm="slaney",
            ).T
        if self.mode == "numpy":
            # librosa.stft by hand: frames as a strided view, × window (float64), rfft, |·|; no checks or copies
            # of librosa's general-purpose path.
            frames = np.lib.stride_tricks.sliding_window_view(w, p["n_fft"])[:: p["stft_hop"]]
            S = np.abs(np.fft.rfft(frames * self.hann, axis=-1)).astype(np.float32)  # [frames, bins]
            if p["mel_power"] != 1.0:
                S = S ** p["mel_power"]
            return S @ self.mel_basis.T
        # "librosa": what melspectrogram does inside (librosa.feature.spectral._spectrogram, then the einsum
        # with the filterbank), minus rebuilding the filterbank: |STFT| (periodic Hann, no padding) ** power,
        # then mel_basis @ S.
        S = np.abs(librosa.stft(w, n_fft=p["n_fft"], hop_length=p["stft_hop"], win_length=p["n_fft"],
                                window="hann", center=False))
        if p["mel_power"] != 1.0:
            S = S ** p["mel_power"]
        return (self.mel_basis @ S).T

    def __call__(self, w):
        """Returns (log_mel [frames, n_mels] mean-subtracted per mel bin, spectrum [window_samples/2]), float32,
        and the band means [n_mels] (float64) that were subtracted: what a level baseline scores."""
        log_mel = np.log(self.mel(w) + self.floor)  # [frames, n_mels]
        band_means = log_mel.astype(np.float64).mean(axis=0)
        log_mel = log_mel - log_mel.mean(axis=0, keepdims=True)
        spectrum = np.abs(np.fft.rfft(w.astype(np.float64)))[: self.half]
        return np.ascontiguousarray(log_mel, dtype=np.float32), spectrum.astype(np.float32), band_means


def make_session(onnx_path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])


def min_cosine_distance(emb, centroids):
    """score.rs `min_cosine_distance`: min over unit-norm centroids of 1 - <c, e> / |e| (f32)."""
    norm = np.sqrt(np.dot(emb, emb))
    if norm == 0.0:
        return 1.0 if len(centroids) else float("inf")
    return float(np.min(np.float32(1.0) - (centroids @ emb) / norm))


def read_wav(path, channel):
    """Float32 samples in [-1, 1): integer PCM divided by 2^(bits-1), as sonitor's read_wav."""
    y, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if channel >= y.shape[1]:
        sys.exit(f"{path}: channel {channel} asked, the file has {y.shape[1]}")
    return np.ascontiguousarray(y[:, channel]), sr


def window_starts(n, window, hop):
    """window.rs `process`: a window is cut whenever `window` samples are buffered, then `hop` are dropped:
    starts 0, hop, 2·hop, … while start + window <= n; a partial last window is never scored."""
    return list(range(0, n - window + 1, hop)) if n >= window else []


class LevelBaseline:
    """score.rs `Baseline`, when the section has one (a bundle `sonitor-train combine --bundle` wrote): the
    Mahalanobis distance of the band means to the nearer domain mean (each less its domain offset), mapped onto
    the model's scale and averaged with the cosine distance."""

    def __init__(self, b):
        d = len(b["means"][0])  # the lowest d mel bands (123 of 128 since the band limit; all in older bundles)
        self.d = d
        self.L = np.zeros((d, d))
        self.L[np.tril_indices(d)] = b["cholesky"]  # packed by rows, the lower triangle's row-major order
        self.means = [np.asarray(m, dtype=np.float64) for m in b["means"]]
        self.offsets = b.get("domain_offsets") or [0.0] * len(self.means)
        self.b = b

    def __call__(self, model_score, band_means):
        x = band_means[:self.d]
        dist = min(np.linalg.norm(scipy.linalg.solve_triangular(self.L, x - m, lower=True)) - o
                   for m, o in zip(self.means, self.offsets))
        b = self.b
        mapped = b["score_median"] + b["score_spread"] * (dist - b["distance_median"]) / b["distance_spread"]
        return b["weight"] * model_score + (1.0 - b["weight"]) * mapped


def run_loop(y, starts, p, feats, sess, in_names, out_name, centroids, scores, level=None):
    """One pass over the file; returns (cpu, wall) totals and per-stage (cpu, wall)."""
    W = p["window_samples"]
    ft_c = ft_w = inf_c = inf_w = sc_c = sc_w = 0.0
    c_start, w_start = time.process_time(), time.perf_counter()
    for i, s in enumerate(starts):
        c0, w0 = time.process_time(), time.perf_counter()
        log_mel, spectrum, band_means = feats(y[s:s + W])
        c1, w1 = time.process_time(), time.perf_counter()
        views = {"log_mel": log_mel, "spectrum": spectrum}
        feed = {name: views[view].reshape(shape) for name, view, shape in in_names}
        emb = sess.run([out_name], feed)[0].reshape(-1)
        c2, w2 = time.process_time(), time.perf_counter()
        scores[i] = min_cosine_distance(emb, centroids)
        if level is not None:
            scores[i] = level(scores[i], band_means)
        c3, w3 = time.process_time(), time.perf_counter()
        ft_c += c1 - c0
        ft_w += w1 - w0
        inf_c += c2 - c1
        inf_w += w2 - w1
        sc_c += c3 - c2
        sc_w += w3 - w2
    cpu, wall = time.process_time() - c_start, time.perf_counter() - w_start
    return {"cpu": cpu, "wall": wall,
            "features": (ft_c, ft_w), "inference": (inf_c, inf_w), "scoring": (sc_c, sc_w)}


def default_section(wav, bundle):
    """As `sonitor demo`: the section named by the recording's timeline (same path, `.json`)."""
    t = Path(wav).with_suffix(".json")
    if t.exists():
        sec = json.loads(t.read_text()).get("section")
        if sec:
            return sec
    if len(bundle.sections) == 1:
        return next(iter(bundle.sections))
    sys.exit(f"no --section given and {t} names none; the bundle has: {', '.join(sorted(bundle.sections))}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "models" / "default"), help="bundle directory")
    ap.add_argument("--wav", help="recording (default: MODEL/demo.wav)")
    ap.add_argument("--section", help="section key <type>/section_SS (default: the one the recording's .json "
                    "timeline names, as `sonitor demo` does)")
    ap.add_argument("--channel", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="repeat the loop N times, report the median")
    ap.add_argument("--no-warmup", action="store_true", help="do not run one untimed window first")
    ap.add_argument("--features", choices=["librosa", "melspectrogram", "numpy"], default="librosa",
                    help="librosa: librosa.stft + the filterbank built once (default); melspectrogram: "
                         "librosa.feature.melspectrogram per window (rebuilds the filterbank every call); numpy: "
                         "the STFT by hand with numpy (strided frames, rfft), same filterbank")
    ap.add_argument("--batch", type=int, default=1, help="windows per inference call (only 1: see README)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--scores-out", help="write window,start_sample,t_end_s,score CSV")
    a = ap.parse_args()

    bundle = Bundle(a.model)
    p = bundle.features
    if a.batch != 1:
        shapes = [i["shape"] for i in bundle.inputs]
        sys.exit(f"--batch {a.batch}: the bundle's graph has a fixed batch dimension of 1 (inputs {shapes}, and "
                 "its Reshape constants are [1, …]); the daemon embeds one window at a time, so does the peer")
    wav = Path(a.wav) if a.wav else bundle.dir / "demo.wav"
    key = a.section or default_section(wav, bundle)
    sec = bundle.section(key)
    centroids = np.asarray(sec["centroids"], dtype=np.float32)
    level = LevelBaseline(sec["baseline"]) if sec.get("baseline") else None

    y, sr = read_wav(wav, a.channel)
    if sr != p["sample_rate"]:
        sys.exit(f"{wav}: {sr} Hz, the model expects {p['sample_rate']} Hz; the daemon would resample (rubato), "
                 "the peer does not: resample the file first")
    starts = window_starts(len(y), p["window_samples"], p["window_hop_samples"])
    if not starts:
        sys.exit(f"{wav}: shorter than one window ({p['window_samples']} samples)")

    feats = Features(p, a.features)
    sess = make_session(bundle.onnx_path)
    graph_inputs = {i.name for i in sess.get_inputs()}
    in_names = [(i["name"], i["view"], tuple(i["shape"])) for i in bundle.inputs]
    missing = graph_inputs - {n for n, _, _ in in_names}
    if missing:
        sys.exit(f"graph inputs {sorted(missing)} are not in the manifest")

    scores = np.zeros(len(starts), dtype=np.float64)
    if not a.no_warmup:
        run_loop(y, starts[:1], p, feats, sess, in_names, bundle.output, centroids, np.zeros(1), level)
    runs = [run_loop(y, starts, p, feats, sess, in_names, bundle.output, centroids, scores, level)
            for _ in range(max(1, a.repeat))]

    med = lambda xs: statistics.median(xs)  # noqa: E731
    cpu = med([r["cpu"] for r in runs])
    wall = med([r["wall"] for r in runs])
    stages = {k: {"cpu_seconds": med([r[k][0] for r in runs]), "wall_seconds": med([r[k][1] for r in runs])}
              for k in ("features", "inference", "scoring")}
    audio_s = len(y) / sr
    rate = p["sample_rate"]
    W = p["window_samples"]

    if a.scores_out:
        with open(a.scores_out, "w") as f:
            f.write("window,start_sample,t_end_s,score\n")
            for i, (s, sc) in enumerate(zip(starts, scores)):
                # t_end_s as the daemon stamps it: integer milliseconds of the window's end.
                f.write(f"{i},{s},{((s + W) * 1000 // rate) / 1000:.3f},{sc:.9f}\n")

    out = {
        "peer": "python",
        "wav": str(wav),
        "model": str(bundle.dir),
        "model_id": bundle.manifest["model_id"],
        "section": key,
        "features_mode": a.features,
        "audio_seconds": audio_s,
        "windows": len(starts),
        "repeat": len(runs),
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "cpu_seconds_per_audio_second": cpu / audio_s,
        "cpu_ms_per_window": 1000 * cpu / len(starts),
        "stages": stages,
        "cpu_seconds_runs": [r["cpu"] for r in runs],
        "timed": "the window loop only (features, inference, scoring), median of the repeats; not timed: imports, "
                 "bundle/ONNX session loading, WAV reading" + ("" if a.no_warmup else ", one warm-up window"),
        # Everything the process spent, imports and loading included (not part of the numbers above).
        "process_cpu_seconds_total": time.process_time(),
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": {"onnxruntime_intra_op": 1, "onnxruntime_inter_op": 1, "execution_mode": "sequential",
                    "OMP/OPENBLAS/MKL_NUM_THREADS": 1},
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "librosa": librosa.__version__,
                     "onnxruntime": ort.__version__, "soundfile": sf.__version__},
    }
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"python peer: {key} on {wav} ({audio_s:.1f} s, {len(starts)} windows, features {a.features})")
        print(f"  CPU {cpu:.3f} s, wall {wall:.3f} s (median of {len(runs)}): "
              f"{cpu / audio_s:.5f} CPU s per audio s, {1000 * cpu / len(starts):.2f} CPU ms per window")
        for k, v in stages.items():
            print(f"  {k:9s} CPU {v['cpu_seconds']:.3f} s ({100 * v['cpu_seconds'] / cpu:.0f}%), "
                  f"wall {v['wall_seconds']:.3f} s")
        print(f"  timed: {out['timed']}")
        print(f"  whole process so far: CPU {out['process_cpu_seconds_total']:.2f} s, max RSS "
              f"{out['max_rss_mib']:.0f} MiB")
        print("  " + ", ".join(f"{k} {v}" for k, v in out["versions"].items()))


if __name__ == "__main__":
    main()
