"""The README.md written into every trained model folder."""

from __future__ import annotations

from typing import Any

METHOD_NAMES = {
    "safe-clip": "Safe-CLIP (Poppi et al., ECCV 2024)",
    "base": "base CLIP (no safety fine-tuning)",
}


def render_model_card(metadata: dict[str, Any]) -> str:
    method = metadata.get("method", "unknown")
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
        f"Produced by safeclip {metadata.get('safeclip_version', '')} with {METHOD_NAMES.get(method, method)}.",
        "Unsafe text and images are redirected to where their safe counterparts were in the original",
        "embedding space; safe inputs stay where they were, so existing indexes and downstream models",
        "keep working. LoRA adapters were merged: this folder holds plain open_clip weights.",
        "",
        "## Use",
        "```python",
        "import safeclip_sdk",
        "model = safeclip_sdk.load_model('PATH_TO_THIS_FOLDER')",
        "# or with open_clip alone:",
        "import open_clip",
        "clip = open_clip.create_model('local-dir:PATH_TO_THIS_FOLDER')",
        "```",
        "",
        "## Training",
        f"- data: `{data.get('train')}` ({data.get('train_items', '?')} quadruplets"
        + (", text-only: no unsafe images" if data.get("text_only") else "") + ")",
        f"- LoRA rank {lora.get('rank')}, alpha {lora.get('alpha')}, dropout {lora.get('dropout')}, "
        f"targets {lora.get('targets')}, towers {lora.get('towers')}",
        f"- lr {config.get('lr')}, batch {config.get('batch_size')}, epochs {config.get('epochs')}, "
        f"tau {config.get('loss', {}).get('tau')}, precision {config.get('precision')}",
        f"- steps {metrics.get('steps')}, best validation step {metrics.get('best_step')}",
    ]
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
