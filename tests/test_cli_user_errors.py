"""Bad input, the way a user meets it: the installed CLI in a subprocess, over real files.

Each case runs ``python -m safeclip_sdk ...`` once and checks what a user sees and keeps: a
non-zero exit, one ``Error:`` line on stderr naming the item that is wrong, no traceback, and
every file that existed before the command byte-for-byte unchanged after it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.service

WEIGHTS = "open_clip_model.safetensors"
LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")  # the CLI's logging format
PROGRESS_LINE = re.compile(r"^[\w .-]*: *\d+%\|")  # a tqdm progress bar


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory) -> Path:
    """Every input the cases use, in one folder: images, datasets, configs, models, an export."""
    root = tmp_path_factory.mktemp("user")
    images = root / "images"
    images.mkdir()
    for index, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]):
        Image.new("RGB", (32, 24), colour).save(images / f"{index}.png")

    def row(index: int, **fields) -> dict:
        base = {"safe_text": f"a photo number {index}", "unsafe_text": f"a violent photo number {index}",
                "safe_image": f"images/{index}.png", "category": "gore"}
        return {key: value for key, value in {**base, **fields}.items() if value is not None}

    def write_rows(name: str, rows: list[dict]) -> None:
        (root / name).write_text("".join(json.dumps(item) + "\n" for item in rows), encoding="utf-8")

    Image.new("1", (20000, 20000)).save(images / "huge.png")  # 400 Mpx: past PIL's own hard limit
    Image.new("1", (10000, 10000)).save(images / "large.png")  # 100 Mpx: past max_pixels, where PIL only warns
    write_rows("good.jsonl", [row(i) for i in range(4)])
    write_rows("huge_image.jsonl", [row(0), row(1, safe_image="images/huge.png")])
    write_rows("large_image.jsonl", [row(0), row(1, safe_image="images/large.png")])
    write_rows("missing_field.jsonl", [row(0), row(1, safe_text=None), row(2)])
    write_rows("missing_image.jsonl", [row(0), row(1, safe_image="images/gone.png")])
    latin1 = json.dumps(row(1, unsafe_text="un café brûlé"), ensure_ascii=False).encode("latin-1")
    (root / "latin1.jsonl").write_bytes(json.dumps(row(0)).encode() + b"\n" + latin1 + b"\n")

    (root / "train.yaml").write_text(
        "base_model: safeclip-tiny\npretrained: null\ndevice: cpu\nbatch_size: 2\nmax_steps: 1\n"
        "data:\n  train: good.jsonl\n", encoding="utf-8")
    (root / "broken.yaml").write_text(
        "base_model: safeclip-tiny\ndata:\n  train: [good.jsonl\nlr: 1e-4\n", encoding="utf-8")
    (root / "texts.txt").write_text("a red car\na dog on the grass\n", encoding="utf-8")
    (root / "more_texts.txt").write_text("a boat at sea\n", encoding="utf-8")
    junk = root / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"this is not a png")
    (junk / "b.jpg").write_bytes(b"nor is this a jpeg")
    (root / "earlier.npy").write_bytes(b"embeddings from an earlier run")   # what a failed run must keep
    (root / "earlier.json").write_text('{"an earlier": "report"}', encoding="utf-8")

    shutil.copytree(tiny_model_dir, root / "model")
    truncated = shutil.copytree(tiny_model_dir, root / "model-truncated")
    data = (truncated / WEIGHTS).read_bytes()
    (truncated / WEIGHTS).write_bytes(data[: len(data) // 3])
    metadata = json.loads((truncated / "safeclip.json").read_text())
    del metadata["weights"]  # an older folder with no recorded hash: the file itself is judged
    (truncated / "safeclip.json").write_text(json.dumps(metadata))
    tampered = shutil.copytree(tiny_model_dir, root / "model-tampered")
    data = bytearray((tampered / WEIGHTS).read_bytes())
    data[-1] ^= 0x01
    (tampered / WEIGHTS).write_bytes(bytes(data))

    from safeclip_sdk.export import export_onnx

    export_onnx(root / "model", root / "onnx")  # a real export a failed command must keep
    from safeclip_sdk.runtime.embed import embed

    embed(root / "model", root / "texts.txt", root / "texts.npy", progress=False)  # a real output of texts.txt
    from safetensors.torch import save_file

    from safeclip_sdk.model.folder import load_model

    other = load_model("safeclip-demo").model.state_dict()  # a checkpoint of another architecture
    save_file({key: value.contiguous() for key, value in other.items()}, str(root / "other.safetensors"))
    # a checkpoint with a pickled object beside its tensors, as many training scripts save them;
    # protocol 4 (what large checkpoints need) is where torch adds a warning of its own
    torch.save({"state_dict": other, "args": argparse.Namespace(lr=1e-4)}, root / "pickled.pt", pickle_protocol=4)

    export = root / "export"
    export.mkdir()
    (root / "image_encoder.onnx").write_bytes(b"outside the export folder")
    entry = {"sha256": "0" * 64}
    (export / "manifest.json").write_text(json.dumps({
        "format": "safeclip-onnx", "format_version": 1, "source_model": "model", "embed_dim": 64,
        "image": {"input": "pixel_values", "output": "image_embeds", "size": [64, 64],
                  "mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28]},
        "text": {"input": "input_ids", "output": "text_embeds", "tokenizer": "open_clip:simple",
                 "context_length": 77},
        "variants": {"fp32": {"image_encoder": {"file": "../image_encoder.onnx", **entry},
                              "text_encoder": {"file": "text_encoder.onnx", **entry}}},
    }))
    return root


@dataclass
class Case:
    name: str
    args: Callable[[Path], list[str]]
    names: Callable[[Path], list[str]]  # what the error line must mention


def embed_args(model: str, inputs: str, *extra: str, output: str = "earlier.npy",
               overwrite: bool = True) -> Callable[[Path], list[str]]:
    """With --overwrite by default: a failed run must keep the earlier output even when asked to replace it."""
    flag = ["--overwrite"] if overwrite else []
    return lambda w: ["embed", str(w / model), str(w / inputs), str(w / output), *flag, *extra]


def eval_args(data: str) -> Callable[[Path], list[str]]:
    return lambda w: ["eval", str(w / "model"), "--data", str(w / data), "--no-base", "--device", "cpu",
                      "--json", str(w / "earlier.json")]


def train_args(*options: str, config: str = "train.yaml") -> Callable[[Path], list[str]]:
    return lambda w: ["train", "-c", str(w / config), "-o", str(w / "runs" / "new"), *options]


CASES = [
    Case("bad row", eval_args("missing_field.jsonl"),
         lambda w: [f"{w / 'missing_field.jsonl'}:2: missing field 'safe_text'", "--skip-bad"]),
    Case("bad row in training data", train_args("--train-data", "missing_field.jsonl"),
         lambda w: ["missing_field.jsonl:2: missing field 'safe_text'", "--skip-bad"]),
    Case("missing image", eval_args("missing_image.jsonl"),
         lambda w: [f"{w / 'missing_image.jsonl'}:2: safe image not found: {w / 'images' / 'gone.png'}"]),
    Case("non-UTF-8 line", eval_args("latin1.jsonl"),
         lambda w: [f"{w / 'latin1.jsonl'}:2: not UTF-8", "--skip-bad"]),
    Case("20000x20000 image", eval_args("huge_image.jsonl"),
         lambda w: ["huge.png: image too large: 400000000 pixels exceeds max_pixels=89478485"]),
    Case("10000x10000 image", eval_args("large_image.jsonl"),
         lambda w: ["large.png: image too large: 10000x10000 = 100000000 pixels exceeds max_pixels=89478485"]),
    Case("missing dataset file", eval_args("nowhere.jsonl"),
         lambda w: [f"{w / 'nowhere.jsonl'}: dataset file not found"]),
    Case("corrupt safetensors", embed_args("model-truncated", "texts.txt"),
         lambda w: [f"{w / 'model-truncated' / WEIGHTS}: corrupt or truncated safetensors file"]),
    Case("tampered weights", embed_args("model-tampered", "texts.txt"),
         lambda w: [f"{w / 'model-tampered' / WEIGHTS}: sha256 ", "does not match", "safeclip.json"]),
    Case("manifest path outside the export", embed_args("export", "texts.txt", "--backend", "onnx"),
         lambda w: [f"{w / 'export' / 'manifest.json'}: 'variants.fp32.image_encoder.file'",
                    "'../image_encoder.onnx' leads outside the export folder"]),
    Case("every item fails", embed_args("model", "junk"),
         lambda w: ["every one of the 2 images failed", f"{w / 'earlier.npy.failures.json'}",
                    "a.png: not an image"]),
    Case("OUTPUT made from another input", embed_args("model", "more_texts.txt", output="texts.npy", overwrite=False),
         lambda w: [f"{w / 'texts.npy'} was made from {w / 'texts.txt'} with model {w / 'model'}, "
                    f"not from {w / 'more_texts.txt'}", "--overwrite"]),
    Case("OUTPUT of unknown origin", embed_args("model", "texts.txt", overwrite=False),
         lambda w: [f"{w / 'earlier.npy'} already exists and no earlier.npy.source.json says", "--overwrite"]),
    Case("--epochs 0", train_args("--epochs", "0"), lambda w: ["'epochs'"]),
    Case("--batch-size -4", train_args("--batch-size", "-4"), lambda w: ["'batch_size'"]),
    Case("--lr 0", train_args("--lr", "0"), lambda w: ["'lr'"]),
    Case("bad YAML", train_args(config="broken.yaml"), lambda w: [f"{w / 'broken.yaml'}:4:"]),
    Case("batch not divisible by accumulation", train_args("--batch-size", "3", "--grad-accum-steps", "2"),
         lambda w: ["batch_size 3 is not divisible", "grad_accum_steps = 2"]),
    Case("bf16 on a CPU", train_args("--precision", "bf16"), lambda w: ["precision bf16 needs a GPU"]),
    Case("checkpoint of another architecture", train_args("--pretrained", "other.safetensors"),
         lambda w: ["other.safetensors: tensor '", "but safeclip-tiny needs", "another architecture"]),
    Case("pickled checkpoint", train_args("--pretrained", "pickled.pt"),
         lambda w: ["pickled.pt: refused: the file holds pickled Python objects", "save the weights as safetensors"]),
    Case("export with bad eval data", lambda w: ["export", str(w / "model"), "--onnx", str(w / "onnx"), "--int8",
                                                 "--eval-data", str(w / "missing_field.jsonl")],
         lambda w: [f"{w / 'missing_field.jsonl'}:2: missing field 'safe_text'"]),
]


def file_hashes(root: Path) -> dict[Path, str]:
    return {path: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and not path.is_symlink()}


def safeclip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed CLI as a user runs it (``python -m safeclip_sdk`` of this environment)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "safeclip_sdk", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_gives_one_line_and_changes_nothing(world, case):
    before = file_hashes(world)
    assert not (world / "runs").exists(), "an earlier case left a run folder behind"
    result = safeclip(*case.args(world), cwd=world)
    after = file_hashes(world)

    stderr = result.stderr
    assert result.returncode != 0, f"exit code 0 for {case.name}; stdout: {result.stdout[-500:]}"
    assert "Traceback" not in stderr and "Traceback" not in result.stdout, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, stderr[-2000:]
    others = [line for line in stderr.splitlines() if line.strip() and line not in errors]
    assert all(LOG_LINE.match(line) or PROGRESS_LINE.match(line) for line in others), \
        f"the message spans lines: {stderr[-2000:]}"
    for part in case.names(world):
        assert part in errors[0], errors[0]
    assert "weights_only=False" not in errors[0]
    assert {path: digest for path, digest in after.items() if path in before} == before, \
        f"{case.name} changed files that existed before it ran"
