"""Make the model the onboard check needs, with the workstation's torch (run by .ci/onboard-py38).

    python tests/onboard_assets.py OUT_DIR   ->   OUT_DIR/nano.onnx (mean-nano, seeded random weights)
"""

import sys
from pathlib import Path


def make_nano_onnx(out_dir: Path) -> Path:
    import torch

    from meanloc.export.onnx_export import export_onnx
    from meanloc.training.checkpoint import save_checkpoint
    from meanloc.training.model import build_model, resolve_config

    torch.manual_seed(0)
    config = resolve_config("mean-nano")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out_dir / "nano.pt", build_model(config), config)
    export_onnx(out_dir / "nano.pt", out_dir / "nano.onnx", parity=False)
    return out_dir / "nano.onnx"


if __name__ == "__main__":
    print(make_nano_onnx(Path(sys.argv[1])))
