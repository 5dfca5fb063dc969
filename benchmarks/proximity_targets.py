"""What SafeR-CLIP's proximity targets are on the demo world, and what the base text space ranks by.

SafeR-CLIP moves each unsafe caption to the nearest safe caption of the training pool under the
FROZEN base text encoder. Whether that target is a semantic neighbour depends on what the base
space ranks captions by. For a finished ``safeclip demo`` folder this script measures, on the
training split (the pool SafeR-CLIP trains with):

- how often the target is the caption's own safe twin, and the median cosine to the target and
  to the twin;
- for the other targets: how many share an object with the unsafe caption, or its background;
- zero-shot accuracy of the base on the test images by object name and by background, with the
  same prompt family, as a reading of which of the two the base space encodes.

    python benchmarks/proximity_targets.py --demo demo-output --json proximity.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, write_json  # noqa: E402

from safeclip_sdk.demo.world import BACKGROUND_WORDS  # noqa: E402
from safeclip_sdk.evaluation.protocol import zero_shot_folder_accuracy  # noqa: E402
from safeclip_sdk.methods import load_checked_model  # noqa: E402
from safeclip_sdk.methods.safer_clip.targets import nearest_safe_captions  # noqa: E402


def background_of(caption: str) -> str:
    return next(name for name, words in BACKGROUND_WORDS.items() if words in caption)


def embedder(model):
    def embed(texts: list[str]) -> torch.Tensor:
        return model.model.encode_text(model.tokenizer(texts))
    return embed


def unit(values: np.ndarray) -> np.ndarray:
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def class_folder(rows: list[dict], world: Path, out: Path, label) -> Path:
    """An ImageFolder of the test split's safe images, one subfolder per ``label(row)``."""
    for index, row in enumerate(rows):
        folder = out / label(row).replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / f"{index:05d}.png"
        if not link.exists():
            link.symlink_to((world / row["safe_image"]).resolve())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=Path("demo-output"), help="a finished safeclip demo folder")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    world = args.demo / "world"
    rows = [json.loads(line) for line in (world / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    base = load_checked_model(str(args.demo / "base" / "model"))
    base.model.eval()
    embed = embedder(base)
    unsafe, safe = [row["unsafe_text"] for row in rows], [row["safe_text"] for row in rows]
    targets = nearest_safe_captions(unsafe, safe, embed, progress=False).indices
    with torch.no_grad():
        unsafe_emb = unit(np.concatenate([embed(unsafe[i:i + 256]).numpy() for i in range(0, len(unsafe), 256)]))
        safe_emb = unit(np.concatenate([embed(safe[i:i + 256]).numpy() for i in range(0, len(safe), 256)]))
    own = np.arange(len(rows))
    to_target = np.sum(unsafe_emb * safe_emb[targets], axis=1)
    to_twin = np.sum(unsafe_emb * safe_emb, axis=1)
    others = [(i, int(t)) for i, t in enumerate(targets) if t != i]
    shares_object = np.mean([bool(set(rows[i]["objects"]) & set(rows[t]["objects"])) for i, t in others])
    same_background = np.mean([background_of(rows[i]["safe_text"]) == background_of(rows[t]["safe_text"])
                               for i, t in others])
    result = {
        "captions": len(rows),
        "target is the own twin %": 100 * float(np.mean(targets == own)),
        "median cosine to target": float(np.median(to_target)),
        "median cosine to twin": float(np.median(to_twin)),
        "other targets sharing an object %": 100 * float(shares_object),
        "other targets with the same background %": 100 * float(same_background),
        "examples": [{"unsafe": rows[i]["unsafe_text"], "target": rows[t]["safe_text"]} for i, t in others[:3]],
    }
    test = [json.loads(line) for line in (world / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    with tempfile.TemporaryDirectory(prefix="zero-shot-") as scratch:
        for name, label, prompt in (("objects", lambda row: row["label"], "a picture showing a {}"),
                                    ("backgrounds", lambda row: BACKGROUND_WORDS[background_of(row["safe_text"])],
                                     "a picture showing a thing {}")):
            score = zero_shot_folder_accuracy(base, class_folder(test, world, Path(scratch) / name, label), prompt=prompt)
            result[f"base zero-shot on {name} %"] = score["top1"]
            result[f"chance on {name} %"] = 100 / score["classes"]
    for key, value in result.items():
        print(f"{key}: {value:.3f}" if "cosine" in key else f"{key}: {value:.1f}" if isinstance(value, float)
              else f"{key}: {value}")
    if args.json:
        write_json(args.json, {"machine": machine_info(), **result})


if __name__ == "__main__":
    main()
