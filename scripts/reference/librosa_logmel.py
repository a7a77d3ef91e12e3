#!/usr/bin/env python3
"""Reference log-mel features from librosa, for the Rust parity test.

Usage: librosa_logmel.py WAV PARAMS_JSON OUT_JSON

PARAMS_JSON is sonitor's FeatureParams (serialised by the Rust test). The output holds the raw log-mel matrix
[frames][n_mels] of the whole file (no mean subtraction) and the same after per-bin temporal mean subtraction of
the first analysis window, so the Rust side can compare both.
"""
import json
import sys

import librosa
import numpy as np
import soundfile as sf


def main():
    wav, params_path, out_path = sys.argv[1:4]
    p = json.load(open(params_path))
    y, sr = sf.read(wav, dtype="float32", always_2d=False)
    assert sr == p["sample_rate"], (sr, p["sample_rate"])
    mel = librosa.feature.melspectrogram(
        y=y,
        sr=sr,
        n_fft=p["n_fft"],
        hop_length=p["stft_hop"],
        win_length=p["n_fft"],
        window="hann",
        center=False,
        power=p["mel_power"],
        n_mels=p["n_mels"],
        fmin=p["fmin_hz"],
        fmax=p["fmax_hz"],
        htk=False,
        norm="slaney",
    )  # [n_mels, frames]
    log_mel = np.log(mel + np.float32(p["log_floor"])).T  # [frames, n_mels]

    w = y[: p["window_samples"]]
    wmel = librosa.feature.melspectrogram(
        y=w, sr=sr, n_fft=p["n_fft"], hop_length=p["stft_hop"], window="hann", center=False,
        power=p["mel_power"], n_mels=p["n_mels"], fmin=p["fmin_hz"], fmax=p["fmax_hz"], htk=False, norm="slaney",
    )
    wlog = np.log(wmel + np.float32(p["log_floor"])).T
    wlog = wlog - wlog.mean(axis=0, keepdims=True)
    spectrum = np.abs(np.fft.rfft(w.astype(np.float64)))[: p["window_samples"] // 2]

    json.dump(
        {
            "librosa_version": librosa.__version__,
            "log_mel": log_mel.astype(float).tolist(),
            "window_log_mel": wlog.astype(float).tolist(),
            "window_spectrum": spectrum.astype(float).tolist(),
        },
        open(out_path, "w"),
    )


if __name__ == "__main__":
    main()
