"""Export a training checkpoint as a bundle's ``models/model.pt`` (plain state dict) and record its sha256.

Usage::

    python scripts/export_weights.py --bundle brain_mri_hybrid_loss \
        --checkpoint bundles/brain_mri_hybrid_loss/runs/train/checkpoints/best_model.pt
"""

from __future__ import annotations

from pathlib import Path

import fire

from common.engines.training import export_state_dict, load_state_dict_safely
from common.io.files import sha256sum as sha256
from common.io.nifti import atomic_path

ROOT = Path(__file__).resolve().parents[1]


def main(bundle: str, checkpoint: str, key: str | None = None) -> str:
    """Write ``bundles/<bundle>/models/model.pt`` from ``checkpoint`` and its sha256 to ``models/model.pt.sha256``.

    The repository ships the weights inside the bundle; ``scripts/release.py`` writes the ``large_files.yml`` a
    downloaded bundle needs (URL + sha256) when it publishes them.

    Args:
        bundle: bundle folder name.
        checkpoint: a CheckpointSaver file (``{"model": ...}``) or a plain state dict.
        key: entry holding the network state (default: "model" if present, else the file is the state dict).
    """
    b = ROOT / "bundles" / bundle
    out = b / "models" / "model.pt"
    ckpt = Path(checkpoint)
    if key is None:
        import torch

        obj = torch.load(ckpt, map_location="cpu", weights_only=True)
        key = "model" if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict) else None
    if key is None:
        state = load_state_dict_safely(ckpt)
        import torch

        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            torch.save(state, tmp)
    else:
        export_state_dict(ckpt, out, key)
    digest = sha256(out)
    with atomic_path(b / "models" / "model.pt.sha256") as tmp:
        tmp.write_text(f"{digest}  model.pt\n")  # sha256sum format: `sha256sum -c` checks it
    print(f"export_weights: {out} ({out.stat().st_size / 2**20:.1f} MiB, sha256 {digest})")
    return str(out)


if __name__ == "__main__":
    fire.Fire(main)
