"""`meanloc model summary`: parameters and MACs per module of a preset."""

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="model_command", metavar="<subcommand>")
    summary = sub.add_parser("summary", help="print parameters and MACs per module of a MEAN preset")
    summary.add_argument("--preset", default="mean-paper", help="model preset (mean-paper, mean-small, mean-nano)")
    summary.add_argument("--num-classes", type=int, default=None, help="override the number of classes")
    summary.add_argument("--img-size", type=int, default=None, help="override the input size in pixels")
    summary.add_argument("--depth", type=int, default=2, help="module-name depth to group by (default 2)")
    summary.set_defaults(handler=run_summary)


def run_summary(args: argparse.Namespace) -> int:
    import torch

    from .model import build_model, resolve_config
    from .model.summary import MAC_COUNTING_NOTE, count_macs, count_params, summarize

    overrides = {k: v for k, v in (("num_classes", args.num_classes), ("img_size", args.img_size)) if v is not None}
    config = resolve_config(args.preset, **overrides)
    model = build_model(config)
    rows = summarize(model, config.img_size, depth=args.depth)
    embedder = model.embedder().eval()
    inference_macs, _ = count_macs(embedder, torch.zeros(1, 3, config.img_size, config.img_size))

    print(f"MEAN preset {config.preset}: {config.img_size}x{config.img_size} input, {config.num_classes} classes, "
          f"{config.embed_dim}-d embedding")
    print(f"{'module':<44} {'params':>14} {'MACs/image':>16}")
    for row in rows:
        print(f"{row.name:<44} {row.params:>14,} {row.macs:>16,}")
    print(f"{'total (training graph)':<44} {count_params(model):>14,}")
    print(f"{'inference graph (backbone+GAP+LN+L2)':<44} {count_params(embedder):>14,} {inference_macs:>16,}"
          f"  = {inference_macs / 1e9:.2f} GMACs")
    print(MAC_COUNTING_NOTE)
    return 0
