#!/usr/bin/env python3
"""The Python peer of `sonitor-train fit`: the training loop a user would write in PyTorch instead.

Same work per epoch as crates/sonitor-train/src/train.rs and data.rs, so that the two can be timed on one data set:
  - every training clip (DCASE layout, <type>/train/*.wav) decoded once into memory, not timed;
  - classes at the `attribute` granularity: "<type>/section_SS/<attributes>" (dcase.rs `Labels::Attribute`);
  - per epoch: shuffled, batches of `--batch` (a last batch smaller than 2 dropped), one random window crop per
    clip, mixup of raw waveforms with the reversed batch (lambda ~ U(0,1), labels mixed), as make_batch does;
  - features of the batch in torch (the shared features, features.rs): |STFT| with a periodic Hann window, no
    padding, the Slaney mel filterbank (librosa's), ln(mel + floor), minus each mel bin's mean over the window;
    the spectrum = |rfft| of the whole window, first window/2 bins;
  - the network of model.rs (`--arch small`, the ablation's and the default model's: ResNet-like 2-D branch with
    widths 8/16/32/64 on the per-bin batch-normalised log-mel, max over time; strided 1-D convolutions and dense
    blocks on the spectrum; 64 + 64 embedding, no biases), with the same parameter count (printed);
  - the sub-cluster AdaCos loss of loss.rs (K = 16 fixed random unit centres per class, adaptive scale
    recomputed each batch without gradient, clamped to [1, max(4 s0, 4)]);
  - Adam (lr 1e-3, eps 1e-5 as burn's default), one step per batch.
Not done, as they are not part of an epoch's cost: the checkpoint per epoch and the export.

With `--score DIR` it also scores the test clips after training, as `sonitor-train fit` + `eval` do, so that an
independent implementation of the method checks the scores of the README's ablation and ABLATION.md (not timed):
  - the network in eval mode (BatchNorm's running statistics), every clip cut into windows as data.rs `windows`
    (window 32 000, hop 16 000), each window's embedding unit-normalised;
  - the back end of kmeans.rs / threshold.rs: per section, spherical k-means (k-means++ seeding, k = 16) of the
    source-domain training windows plus every target-domain training window as its own centre; window score = min
    cosine distance; a clip's score = the mean of its windows';
  - DCASE submission files `anomaly_score_<type>_section_SS_test.csv` in DIR, which `sonitor-train metrics --data
    DATA --scores DIR` turns into the official table.
`--labels type` trains on machine types instead of attribute classes (the ablation's last row).

Threads: torch's intra-op pool at its default (one thread per core), as burn's CPU backend uses every core.
Timed per epoch: wall (time.perf_counter) and the process's CPU (time.process_time), from the first batch to the
last optimiser step. Prints one JSON line per epoch with --json.

Usage: train_peer.py --data DIR [--epochs N] [--batch N] [--seed N] [--labels attribute|type] [--score DIR] [--json]
"""
import sys
from pathlib import Path

try:
    import numpy as np
    import soundfile as sf
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import librosa
except ImportError as e:
    from venv_reexec import reexec_or_exit

    reexec_or_exit(".venv-train", e, "`benches/python/setup --trainer`")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

# FeatureParams::default() (crates/sonitor-core/src/features.rs).
SR, WINDOW, N_FFT, HOP, N_MELS, FLOOR = 16000, 32000, 1024, 512, 128, 1e-5
SUBCLUSTERS = 16  # the loss's K (loss.rs)
KMEANS_K = 16  # the back end's k of source-domain centres per section (`fit --kmeans`'s default)


def attribute_class(path):
    """dcase.rs: "<type>/section_SS/<attributes>" from <type>/train/section_SS_<dom>_train_normal_NNNN_<attrs>.wav."""
    parts = path.stem.split("_")
    # section_SS_{source|target}_train_normal_NNNN_<k1>_<v1>_<k2>_<v2>...
    return f"{path.parent.parent.name}/section_{parts[1]}/{'_'.join(parts[6:])}"


def type_class(path):
    """dcase.rs `Labels::Type`: the machine type, <type>/train/…"""
    return path.parent.parent.name


def section_of(path):
    """(machine type, section number, domain) of <type>/{train,test}/section_SS_<dom>_…."""
    parts = path.stem.split("_")
    return path.parent.parent.name, int(parts[1]), parts[2]


def read_clip(f):
    a, sr = sf.read(f, dtype="float32", always_2d=True)
    if sr != SR:
        sys.exit(f"{f}: {sr} Hz, the peer expects {SR} Hz")
    return np.ascontiguousarray(a.mean(axis=1))


def load(data, class_of):
    files = sorted(Path(data).glob("*/train/*.wav"))
    if not files:
        sys.exit(f"{data}: no training clips (expected <type>/train/*.wav)")
    names = sorted({class_of(f) for f in files})
    index = {n: i for i, n in enumerate(names)}
    audio = [read_clip(f) for f in files]
    labels = [index[class_of(f)] for f in files]
    return audio, np.array(labels), names, files


def windows(audio, hop=WINDOW // 2):
    """data.rs `windows`: every full window at multiples of the hop; a clip shorter than one is repeated to its
    length."""
    if len(audio) < WINDOW:
        return np.resize(audio, (1, WINDOW))
    return np.stack([audio[i * hop:i * hop + WINDOW] for i in range((len(audio) - WINDOW) // hop + 1)])


def spherical_kmeans(points, k, rng, max_iter=100):
    """kmeans.rs `spherical_kmeans`: k-means++ seeding with the distance 1 − cos (drawn by its square), then Lloyd
    iterations; with at most k points every point is its own centre."""
    if len(points) <= k:
        return points
    centres = [points[rng.integers(len(points))]]
    d = np.maximum(1 - points @ centres[0], 0)
    while len(centres) < k:
        w = d.astype(np.float64) ** 2
        nxt = rng.integers(len(points)) if w.sum() <= 0 else rng.choice(len(points), p=w / w.sum())
        centres.append(points[nxt])
        d = np.minimum(d, np.maximum(1 - points @ centres[-1], 0))
    c = np.stack(centres)
    assign = None
    for _ in range(max_iter):
        new = np.argmax(points @ c.T, axis=1)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = points[assign == j]
            if len(members):
                m = members.sum(0)
                n = np.linalg.norm(m)
                if n > 0:
                    c[j] = m / n
    return c


def score(data, train, train_audio, fx, model, out, seed):
    """Scores the test clips as `eval` does (the module docstring) and writes the submission files into `out`.
    `train` and `train_audio` are the training clips' paths and audio as `load` returned them."""
    model.eval()

    def embed(clips):
        with torch.no_grad():
            return [F.normalize(model(*fx(torch.from_numpy(windows(a)))), dim=1).numpy() for a in clips]

    test = sorted(Path(data).glob("*/test/*.wav"))
    if not test:
        sys.exit(f"{data}: no test clips (expected <type>/test/*.wav)")
    train_emb, test_emb = embed(train_audio), embed(read_clip(f) for f in test)
    rng = np.random.default_rng(seed)
    Path(out).mkdir(parents=True, exist_ok=True)
    written = []
    # Grouped once: the training windows by (type, section, domain), the test clips by (type, section).
    train_by_key, test_by_key = {}, {}
    for f, e in zip(train, train_emb):
        train_by_key.setdefault(section_of(f), []).append(e)
    for f, e in zip(test, test_emb):
        test_by_key.setdefault(section_of(f)[:2], []).append((f, e))
    for key in sorted(test_by_key):
        source, target = train_by_key.get((*key, "source"), []), train_by_key.get((*key, "target"), [])
        if not source:
            sys.exit(f"{key[0]} section {key[1]:02}: no source-domain training clips")
        centres = np.concatenate([spherical_kmeans(np.concatenate(source), KMEANS_K, rng)] + target)
        rows = [f"{f.name},{float(np.mean(1 - np.max(e @ centres.T, axis=1)))}" for f, e in test_by_key[key]]
        path = Path(out) / f"anomaly_score_{key[0]}_section_{key[1]:02}_test.csv"
        path.write_text("\n".join(rows) + "\n")
        written.append(path.name)
    print(f"scores of {len(test)} test clips in {out}: {', '.join(written)}", file=sys.stderr)


class Features(nn.Module):
    """features.rs on a batch of windows [B, WINDOW] → (log-mel [B, frames, n_mels], spectrum [B, WINDOW/2])."""

    def __init__(self):
        super().__init__()
        mel = librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=N_MELS, fmin=0.0, fmax=SR / 2, htk=False,
                                  norm="slaney", dtype=np.float32)
        self.register_buffer("mel", torch.from_numpy(mel))  # [n_mels, bins]
        self.register_buffer("hann", torch.hann_window(N_FFT, periodic=True))

    def forward(self, w):
        s = torch.stft(w, N_FFT, hop_length=HOP, win_length=N_FFT, window=self.hann, center=False,
                       return_complex=True).abs()  # [B, bins, frames]
        log_mel = torch.log(torch.matmul(self.mel, s) + FLOOR)  # [B, n_mels, frames]
        log_mel = log_mel - log_mel.mean(dim=2, keepdim=True)
        spectrum = torch.fft.rfft(w).abs()[:, : WINDOW // 2]
        return log_mel.transpose(1, 2), spectrum


def conv2(c_in, c_out, k, s, p):
    return nn.Conv2d(c_in, c_out, k, stride=s, padding=p, bias=False)


class ResBlock(nn.Module):
    def __init__(self, c_in, c, stride):
        super().__init__()
        self.conv1, self.bn1 = conv2(c_in, c, 3, stride, 1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = conv2(c, c, 3, 1, 1), nn.BatchNorm2d(c)
        self.shortcut = (nn.Sequential(conv2(c_in, c, 1, stride, 0), nn.BatchNorm2d(c))
                         if c_in != c or stride != 1 else nn.Identity())

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class Model(nn.Module):
    """model.rs `Model` with ModelConfig of `--arch small` for the default features."""

    def __init__(self, frames=61, n_mels=N_MELS, spectrum_len=WINDOW // 2, widths=(8, 16, 32, 64), tf_emb=64,
                 spec_filters=64, kernels=(256, 64, 16), strides=(32, 8, 4), spec_dense=64, dense_blocks=4,
                 spec_emb=64):
        super().__init__()
        self.mel_bn = nn.BatchNorm1d(n_mels)
        self.stem, self.stem_bn = conv2(1, widths[0], 7, 2, 3), nn.BatchNorm2d(widths[0])
        self.pool = nn.MaxPool2d(3, 2, 1)
        blocks, c_in = [], widths[0]
        for i, c in enumerate(widths):
            blocks.append(ResBlock(c_in, c, 2 if i > 0 else 1))
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        with torch.no_grad():
            wo = self.tf_trunk(torch.zeros(2, frames, n_mels)).shape[-1]
        self.tf_flat_bn = nn.BatchNorm1d(c_in * wo)
        self.tf_emb = nn.Linear(c_in * wo, tf_emb, bias=False)
        convs, ch, n = [], 1, spectrum_len
        for k, s in zip(kernels, strides):
            convs += [nn.Conv1d(ch, spec_filters, k, stride=s, bias=False), nn.BatchNorm1d(spec_filters), nn.ReLU()]
            ch, n = spec_filters, (n - k) // s + 1
        self.spec_convs = nn.Sequential(*convs)
        dense, d = [], spec_filters * n
        for _ in range(dense_blocks):
            dense += [nn.Linear(d, spec_dense, bias=False), nn.BatchNorm1d(spec_dense), nn.ReLU()]
            d = spec_dense
        self.spec_dense = nn.Sequential(*dense)
        self.spec_emb = nn.Linear(d, spec_emb, bias=False)

    def tf_trunk(self, log_mel):
        x = self.mel_bn(log_mel.transpose(1, 2)).transpose(1, 2).unsqueeze(1)
        x = self.pool(F.relu(self.stem_bn(self.stem(x))))
        return self.blocks(x).amax(dim=2)  # max over time: [B, C, W]

    def forward(self, log_mel, spectrum):
        tf = self.tf_emb(self.tf_flat_bn(self.tf_trunk(log_mel).flatten(1)))
        sp = self.spec_emb(self.spec_dense(self.spec_convs(spectrum.unsqueeze(1)).flatten(1)))
        return torch.cat([tf, sp], dim=1)


class SubclusterAdaCos:
    """loss.rs `LossKind::SubclusterAdacos`."""

    def __init__(self, n_classes, dim, gen):
        self.c, self.k = n_classes, SUBCLUSTERS
        centres = torch.randn(n_classes * self.k, dim, generator=gen)
        self.centres = F.normalize(centres, dim=1)
        self.s0 = math.sqrt(2) * math.log(n_classes * self.k - 1)
        self.scale = self.s0

    def __call__(self, emb, y):
        cos = F.normalize(emb, dim=1) @ self.centres.T  # [B, C·K]
        with torch.no_grad():
            c = cos.double().clamp(-1 + 1e-7, 1 - 1e-7)
            yk = y.double().repeat_interleave(self.k, dim=1)  # [B, C·K]
            b_avg = torch.where(yk < 1 - 1e-6, torch.exp(self.scale * c), 0).sum(1).mean()
            theta = (yk / y.double().sum(1, keepdim=True).clamp_min(1e-12) / self.k * torch.acos(c)).sum(1)
            s = torch.log(b_avg) / torch.cos(theta.median().clamp(max=math.pi / 4))
            if torch.isfinite(s) and s > 0:
                self.scale = float(s.clamp(1.0, max(4 * self.s0, 4.0)))
        logits = self.scale * cos
        per_class = torch.logsumexp(logits.view(-1, self.c, self.k), dim=2)
        log_p = per_class - torch.logsumexp(logits, dim=1, keepdim=True)
        return -(y * log_p).sum(1).mean()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--labels", choices=["attribute", "type"], default="attribute")
    ap.add_argument("--score", metavar="DIR", help="after training, write the test clips' submission files here")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    t = time.perf_counter()
    audio, labels, names, files = load(a.data, attribute_class if a.labels == "attribute" else type_class)
    fx, model = Features(), Model()
    n_params = sum(p.numel() for p in model.parameters())
    # burn counts a BatchNorm's running mean and variance among its parameters (`fit` prints that sum).
    n_running = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    loss = SubclusterAdaCos(len(names), 128, torch.Generator().manual_seed(a.seed))
    optim = torch.optim.Adam(model.parameters(), lr=a.lr, eps=1e-5)
    print(f"{len(audio)} training clips, {len(names)} classes ({a.labels}), loaded in {time.perf_counter() - t:.1f} s;"
          f" network: {n_params} parameters ({n_params + n_running} with BatchNorm running statistics); torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"python {platform.python_version()}", file=sys.stderr)
    model.train()
    for epoch in range(a.epochs):
        order = rng.permutation(len(audio))
        batches = [b for b in np.array_split(order, range(a.batch, len(order), a.batch)) if len(b) >= 2]
        w0, c0 = time.perf_counter(), time.process_time()
        total, seen = 0.0, 0
        for idx in batches:
            n = len(idx)
            crops = np.empty((n, WINDOW), dtype=np.float32)
            for r, i in enumerate(idx):
                start = rng.integers(0, len(audio[i]) - WINDOW + 1)
                crops[r] = audio[i][start:start + WINDOW]
            lam = rng.random(n).astype(np.float32)
            mixed = lam[:, None] * crops + (1 - lam[:, None]) * crops[::-1]
            y = np.zeros((n, len(names)), dtype=np.float32)
            np.add.at(y, (np.arange(n), labels[idx]), lam)
            np.add.at(y, (np.arange(n), labels[idx][::-1]), 1 - lam)
            with torch.no_grad():
                log_mel, spectrum = fx(torch.from_numpy(mixed))
            value = loss(model(log_mel, spectrum), torch.from_numpy(y))
            optim.zero_grad(set_to_none=True)
            value.backward()
            optim.step()
            total += float(value.detach()) * n
            seen += n
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        row = {"epoch": epoch + 1, "loss": total / seen, "scale": loss.scale, "clips": seen, "wall_s": wall,
               "cpu_s": cpu, "clips_per_s": seen / wall}
        print(json.dumps(row) if a.json else
              f"epoch {epoch + 1}/{a.epochs} loss {row['loss']:.4f} s {loss.scale:.2f} {wall:.1f} s "
              f"({row['clips_per_s']:.1f} clips/s, CPU {cpu:.1f} s)", flush=True)
    if a.score:
        score(a.data, files, audio, fx, model, a.score, a.seed)


if __name__ == "__main__":
    main()
