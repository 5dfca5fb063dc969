"""``safeclip export``: a thin wrapper over :func:`safeclip_sdk.export.export_onnx`,
:func:`~safeclip_sdk.export.openvino.export_openvino`, :func:`~safeclip_sdk.export.build_tensorrt_engines`
and :func:`~safeclip_sdk.export.hf.export_hf`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from safeclip_sdk.export.manifest import Manifest


@click.command()
@click.argument("model_dir")
@click.option("--onnx", "onnx_dir", type=click.Path(file_okay=False),
              help="Write ONNX encoders (fp32, checked against torch) and manifest.json here.")
@click.option("--openvino", "openvino_dir", type=click.Path(file_okay=False),
              help="Write OpenVINO IR (fp32 from the ONNX encoders, checked against torch) into this export "
                   "folder, and time every CPU variant for --backend auto.")
@click.option("--fp16", is_flag=True, help="Also write the float16 ONNX variant.")
@click.option("--int8", is_flag=True,
              help="Also write the int8 variant (ONNX: dynamic; OpenVINO: NNCF, calibrated on your data); "
                   "kept only if it passes its accuracy checks.")
@click.option("--eval-data", type=click.Path(exists=True, dir_okay=False),
              help="Quadruplet file for the int8 retrieval check (R@1 may drop by at most 1 point).")
@click.option("--calibration-data", type=click.Path(exists=True, dir_okay=False),
              help="Quadruplet file whose texts and images calibrate the OpenVINO int8 variant "
                   "(default: --eval-data).")
@click.option("--calibration-size", type=click.IntRange(min=1), default=300, show_default=True,
              help="Calibration inputs per tower for the OpenVINO int8 variant.")
@click.option("--image-root", type=click.Path(exists=True, file_okay=False),
              help="Image folder for --eval-data and --calibration-data (as for training data).")
@click.option("--tensorrt", is_flag=True,
              help="Also build FP16 TensorRT engines (needs tensorrt and an NVIDIA GPU); implies --fp16.")
@click.option("--hf", "hf_dir", type=click.Path(file_okay=False),
              help="Write a Hugging Face transformers CLIPModel folder here.")
@click.option("--opset", type=int, help="ONNX opset (default: the exporter's).")
def command(model_dir, onnx_dir, openvino_dir, fp16, int8, eval_data, calibration_data, calibration_size, image_root,
            tensorrt, hf_dir, opset):
    """Export MODEL_DIR (a model folder or any model source) to ONNX, OpenVINO, TensorRT and/or Hugging Face."""
    if not onnx_dir and not hf_dir and not openvino_dir:
        raise click.UsageError("nothing to do: pass --onnx OUT_DIR and/or --hf OUT_DIR (or --openvino OUT_DIR)")
    onnx_only = [name for name, value in (("--fp16", fp16), ("--tensorrt", tensorrt), ("--opset", opset)) if value]
    if onnx_only and not onnx_dir:
        raise click.UsageError(f"{', '.join(onnx_only)} need --onnx OUT_DIR")
    int8_options = [name for name, value in (("--int8", int8), ("--eval-data", eval_data),
                                             ("--image-root", image_root)) if value]
    if int8_options and not onnx_dir and not openvino_dir:
        raise click.UsageError(f"{', '.join(int8_options)} need --onnx OUT_DIR or --openvino OUT_DIR")
    if (eval_data or image_root or calibration_data) and not int8:
        raise click.UsageError("--eval-data, --calibration-data and --image-root are used by the int8 check: "
                               "add --int8")
    if openvino_dir and int8 and not (calibration_data or eval_data):
        raise click.UsageError("the OpenVINO int8 variant is calibrated on your data: add --calibration-data "
                               "and/or --eval-data")
    if calibration_data and not openvino_dir:
        raise click.UsageError("--calibration-data calibrates the OpenVINO int8 variant: add --openvino OUT_DIR")

    from safeclip_sdk.model.folder import load_model

    loaded = load_model(model_dir)
    if onnx_dir:
        _export_onnx(loaded, Path(onnx_dir), fp16=fp16 or tensorrt, int8=int8, eval_data=eval_data,
                     image_root=image_root, opset=opset, tensorrt=tensorrt)
    if openvino_dir:
        _export_openvino(loaded, Path(openvino_dir), int8=int8, calibration_data=calibration_data,
                         eval_data=eval_data, image_root=image_root, calibration_size=calibration_size)
    if hf_dir:
        from safeclip_sdk.export.hf import export_hf

        out = export_hf(loaded, hf_dir)
        click.echo(f"Hugging Face CLIPModel folder written to {out}")


def _export_onnx(loaded, out: Path, *, fp16: bool, int8: bool, eval_data, image_root, opset, tensorrt: bool) -> None:
    from safeclip_sdk.export.manifest import load_manifest
    from safeclip_sdk.export.onnx import export_onnx

    export_onnx(loaded, out, fp16=fp16, int8=int8, eval_data=eval_data, image_root=image_root, opset=opset)
    if tensorrt:
        from safeclip_sdk.export.tensorrt import build_tensorrt_engines

        build_tensorrt_engines(out)
    manifest = load_manifest(out, verify_hashes=False)
    click.echo(f"ONNX export in {out} (opset {manifest.opset}, embed dim {manifest.embed_dim}):")
    for line in _summary_lines(out, manifest):
        click.echo(f"  {line}")


def _export_openvino(loaded, out: Path, **options) -> None:
    from safeclip_sdk.export.manifest import load_manifest
    from safeclip_sdk.export.openvino import export_openvino

    export_openvino(loaded, out, **options)
    manifest = load_manifest(out, verify_hashes=False)
    click.echo(f"OpenVINO {manifest.openvino['openvino_version']} IR in {out} (embed dim {manifest.embed_dim}):")
    for line in _variant_lines(out, manifest.openvino["variants"], "OpenVINO"):
        click.echo(f"  {line}")
    speed = manifest.speed
    click.echo(f"Speed on this machine ({speed['cpu']}, batch {speed['batch']}, median of {speed['repeats']}), "
               f"images/s and texts/s; backend auto picks the fastest:")
    for key, rates in speed["items_per_s"].items():
        click.echo(f"  {key}: {rates['image']:.1f} images/s, {rates['text']:.1f} texts/s")


def _summary_lines(out: Path, manifest: Manifest) -> list[str]:
    """One line per variant: files, sizes, parity and (int8) retrieval numbers."""
    lines = _variant_lines(out, manifest.variants, "ONNX")
    if manifest.tensorrt:
        precision = manifest.tensorrt.get("precision", "unknown precision")
        lines.append(f"tensorrt ({precision}): {_files_with_sizes(out, manifest.tensorrt)}")
    return lines


def _variant_lines(out: Path, variants: dict, runtime: str) -> list[str]:
    lines = []
    for variant, entry in variants.items():
        files = _files_with_sizes(out, entry)
        lines.append(f"{variant}: {files}; parity vs torch: {_parity_text(entry['parity'])}")
        for direction, before in entry.get("retrieval", {}).get("fp32", {}).items():
            after = entry["retrieval"]["int8"][direction]
            lines.append(f"{variant}: {direction} R@1 {before:.2f} (fp32 {runtime}) -> {after:.2f}")
    return lines


def _files_with_sizes(out: Path, section: dict) -> str:
    # an OpenVINO encoder is its .xml graph and its .bin weights: show the weights
    names = [section[encoder].get("weights", section[encoder])["file"] for encoder in ("image_encoder", "text_encoder")]
    return ", ".join(f"{name} ({(out / name).stat().st_size / 2**20:.1f} MiB)" for name in names)


def _parity_text(parity: dict) -> str:
    towers = []
    for tower in ("image", "text"):
        result = parity[tower]
        if result.get("checked", True):
            towers.append(f"{tower} min cos {result['min_cosine']:.6f}, max |diff| {result['max_abs_diff']:.1e}")
        else:
            towers.append(f"{tower} {result['reason']}")
    return "; ".join(towers)
