"""The README.md written into every trained model folder."""

from __future__ import annotations

from typing import Any

from ..evaluation.verdict import Verdict
from ..methods import available_methods, get_method, method_sections

BASE = ("base CLIP (no safety fine-tuning)", "A CLIP trained without safety fine-tuning.")


def _method_text(name: str) -> tuple[str, str]:
    """(title, summary) of a registered method; the base model and unknown names get plain ones."""
    if name in available_methods():
        method = get_method(name)
        return method.title, method.summary
    return BASE if name == "base" else (name, "")


def _method_settings(config: dict[str, Any], method: str) -> str:
    """The method section's scalar settings (``tau 0.01, normalization sum``), older folders' ``loss`` too."""
    sections = method_sections()
    section = next((values for key, values in config.items()
                    if key in sections and sections[key].name == method and isinstance(values, dict)), {})
    return ", ".join(f"{key} {value}" for key, value in section.items() if isinstance(value, (int, float, str)))


def _method_notes(metadata: dict[str, Any]) -> list[str]:
    """The method's own paragraphs about its model (a hyperbolic space, say), each after a blank line."""
    name = metadata.get("method")
    if name not in available_methods():
        return []
    return [line for note in get_method(name).model_card_notes(metadata) for line in ("", note)]


def render_model_card(metadata: dict[str, Any]) -> str:
    method = metadata.get("method", "unknown")
    title, summary = _method_text(method)
    base = metadata.get("base_model", {})
    base_name = base.get("source", "?") + (f" ({base['pretrained']})" if base.get("pretrained") else "")
    config = metadata.get("config", {})
    lora = config.get("lora", {})
    data = metadata.get("data", {})
    metrics = metadata.get("metrics", {})
    validation = metrics.get("validation") or {}
    lines = [
        "---",
        "library_name: open_clip",
        "tags: [clip, safety, safeclip, " + method + "]",
        "---",
        f"# {method} fine-tune of {base_name}",
        "",
        f"Produced by safeclip {metadata.get('safeclip_version', '')} with {title}.",
        summary,
        "LoRA adapters were merged: this folder holds plain open_clip weights.",
        "",
        "## Use",
        "```python",
        "import safeclip_sdk",
        "model = safeclip_sdk.load_model('PATH_TO_THIS_FOLDER')",
        "# or with open_clip alone:",
        "import open_clip",
        "clip = open_clip.create_model('local-dir:PATH_TO_THIS_FOLDER')",
        "```",
        *_method_notes(metadata),
        "",
        "## Training",
        f"- data: `{data.get('train')}` ({data.get('train_items', '?')} quadruplets"
        + (", text-only: no unsafe images" if data.get("text_only") else "") + ")",
        f"- LoRA rank {lora.get('rank')}, alpha {lora.get('alpha')}, dropout {lora.get('dropout')}, "
        f"targets {lora.get('targets')}, towers {lora.get('towers')}",
        f"- lr {config.get('lr')}, batch {config.get('batch_size')}, epochs {config.get('epochs')}, "
        f"precision {config.get('precision')}",
        f"- {method} settings: {_method_settings(config, method) or 'defaults'}",
        f"- steps {metrics.get('steps')}, best validation step {metrics.get('best_step')}",
    ]
    if metadata.get("verdict"):
        verdict = Verdict.from_dict(metadata["verdict"])
        lines += ["", "## Safety verdict", "", f"**{verdict.headline()}**.", "", verdict.table()]
        lines += [f"- {note}" for note in verdict.notes]
    if validation:
        lines += ["", "## Validation (last epoch)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in validation.items() if isinstance(value, float)]
    lines += [
        "",
        "## Limitations",
        "Safety fine-tuning reduces, but does not remove, the retrieval and generation of unsafe content;",
        "measure it on your data with `safeclip eval` before deploying.",
        "",
    ]
    return "\n".join(lines)
