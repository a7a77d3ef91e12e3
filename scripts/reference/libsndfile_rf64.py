#!/usr/bin/env python3
"""RF64 files written by libsndfile (through soundfile), and libsndfile's own reading of them, for the Rust WAV
reader's test: a second producer of the format than the test's own byte-building.

Usage: libsndfile_rf64.py OUT_DIR

Writes OUT_DIR/rf64_<subtype>.wav (stereo, 16 kHz, every PCM and float subtype libsndfile offers for RF64 that
sonitor reads) and OUT_DIR/rf64.json: per file its name, rate, channels, frames and libsndfile's float32 samples,
interleaved. libsndfile writes 0xFFFFFFFF as the data chunk's length and the real one in the ds64 chunk, even for
a small file.
"""
import json
import os
import sys

import numpy as np
import soundfile as sf


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(7)
    t = np.arange(1600) / 16000.0
    left = 0.6 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    right = -0.4 * np.sin(2 * np.pi * 97 * t)
    audio = np.clip(np.stack([left, right], axis=1), -1.0, 0.999).astype(np.float32)
    files = []
    for subtype in ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"]:
        name = f"rf64_{subtype.lower()}.wav"
        path = os.path.join(out, name)
        sf.write(path, audio, 16000, format="RF64", subtype=subtype)
        read, rate = sf.read(path, dtype="float32", always_2d=True)
        files.append(
            {
                "name": name,
                "rate": rate,
                "channels": read.shape[1],
                "frames": read.shape[0],
                "samples": read.reshape(-1).tolist(),
            }
        )
    with open(os.path.join(out, "rf64.json"), "w") as f:
        json.dump({"libsndfile": sf.__libsndfile_version__, "files": files}, f)


if __name__ == "__main__":
    main()
