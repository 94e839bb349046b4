"""Make what the onboard check needs, with the workstation's torch and rasterio (run by .ci/onboard-py38).

    python tests/onboard_assets.py OUT_DIR   ->   OUT_DIR/nano.onnx (mean-nano, seeded random weights),
                                                  OUT_DIR/fine/ (a bank with local features, oblique frames)
"""

import json
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


def make_fine_assets(out_dir: Path, model: Path) -> Path:
    """`fine/bank` (the date-1 orthophoto of a synthetic town, embedded by `model`, with its
    local-feature layer), `fine/frames/*.png` (oblique frames of date 2 along a straight line, one
    fixed attitude) and `fine/flight.json` (that attitude, the true look-at points, a prior)."""
    import cv2

    from meanloc.runtime.backends import open_backend
    from meanloc.runtime.bank.build import build_bank_from_orthophoto
    from meanloc.runtime.bank.feature_build import LayerParams
    from meanloc.runtime.geo.camera import CameraIntrinsics, Pose
    from meanloc.runtime.sim.render import render_view
    from meanloc.training.data.synth.world import WorldSpec, generate_world_pair

    folder = out_dir / "fine"
    (folder / "frames").mkdir(parents=True, exist_ok=True)
    date1, date2 = generate_world_pair(WorldSpec(seed=3, width_m=1400.0, height_m=1400.0, gsd_m=1.0))
    date1.save_geotiff(folder / "date1.tif")
    with open_backend(str(model)) as backend:
        build_bank_from_orthophoto(folder / "date1.tif", backend, folder / "bank", tile_m=200.0, overlap=0.5,
                                   local_features=LayerParams(), progress=False)
    attitude = {"altitude_m": 150.0, "pitch_deg": 35.0, "heading_deg": 90.0, "hfov_deg": 70.0}
    camera = CameraIntrinsics(640, 480, attitude["hfov_deg"])
    x0, y0 = date2.center_world()
    truths = []
    for index in range(6):  # eastwards through the town's centre, 15 m per frame
        target = (x0 - 200.0 + 15.0 * index, y0 - 150.0)
        view = render_view(date2, camera, Pose(target, attitude["altitude_m"], attitude["pitch_deg"],
                                                attitude["heading_deg"]))
        cv2.imwrite(str(folder / "frames" / f"{index:03d}.png"), view.image_bgr)
        lon, lat = date2.world_to_lonlat(*target)
        truths.append([float(lat), float(lon)])
    (folder / "flight.json").write_text(json.dumps(dict(attitude, truths=truths)))
    return folder


if __name__ == "__main__":
    nano = make_nano_onnx(Path(sys.argv[1]))
    print(nano, make_fine_assets(Path(sys.argv[1]), nano))
