"""`meanloc train`: train MEAN from a YAML and/or command-line config, single process or torchrun DDP.

    meanloc train --dataset university --data-root data/University-1652     # the paper recipe
    meanloc train --dataset sues200 --data-root data/SUES-200 --altitude 150
    meanloc train --dataset synthetic --data-root runs/synth --out-dir runs/demo   # demo: 10 min, 2 cores
    torchrun --nproc-per-node 4 -m meanloc train --config my.yaml             # DDP

Precedence: built-in defaults < the dataset's recipe < --config YAML < options given here. With
--resume the checkpoint's config is the run's: options that contradict it are refused, except where
the run reads and writes, when it stops and what it shows (`config.RESUMABLE`).
"""

import argparse
import os

from .config import add_config_arguments


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML file of options (keys as below, with _ or -)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a non-empty --out-dir (the previous run's checkpoints and logs are replaced once "
                        "this run starts writing its own)")
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from .config import build_config, cli_overrides, input_px, read_yaml_config, resumed_config

    yaml_values, cli_values = (read_yaml_config(args.config) if args.config else {}), cli_overrides(args)
    config = build_config(yaml_values, cli_values)
    stated = {**yaml_values, **cli_values, **({"resume": config.resume} if config.resume else {})}
    if config.resume:
        from .checkpoint import read_checkpoint_manifest

        config = resumed_config(stated, read_checkpoint_manifest(config.resume), config.resume) or config
    config.img_size = input_px(config)  # once, for the data and the model
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0

    from .train_data import load_train_data
    from .trainer import run_training
    from .validation import retrieval_validator

    def data_factory(cfg, ctx):
        if cfg.objective == "ssl":
            from .ssl_pairs import SatelliteCropPairs

            data = SatelliteCropPairs(cfg, cfg.img_size)
        else:
            data = load_train_data(cfg, cfg.img_size, progress=cfg.progress and ctx.is_main)
        validator = retrieval_validator(cfg) if cfg.selection == "val" else None
        return data, validator

    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 holds the folder; if it fails, torchrun stops us
        run_training(config, data_factory)
        return 0
    from meanloc.runtime.run_folder import claim_run_folder

    with claim_run_folder(config.out_dir, "meanloc train", resuming=bool(config.resume), overwrite=args.overwrite):
        result = run_training(config, data_factory)
    best = f", best (validation R@1) {result.best_checkpoint}" if result.best_checkpoint else ""
    print(f"trained {result.steps} steps ({result.images_per_second:.0f} images/s): last {result.last_checkpoint}{best}")
    return 0
