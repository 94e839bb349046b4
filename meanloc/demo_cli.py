"""`meanloc demo`: the whole pipeline on the embedded synthetic world, in one command."""

import argparse

from meanloc.cli_args import add_batch_size, positive_float


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="meanloc-demo",
                        help="folder for every artifact and the report (default ./meanloc-demo)")
    parser.add_argument("--fresh", action="store_true", help="delete the work folder and start over")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="training steps (default: the synthetic recipe's 1000, about 8 min on 2 idle cores; a "
                        "busy machine takes longer but trains the same model)")
    parser.add_argument("--train-minutes", type=float, default=30.0,
                        help="stop training after this many minutes at the latest (default 30)")
    parser.add_argument("--flight-frames", type=int, default=150,
                        help="frames of the synthetic flight (default 150)")
    parser.add_argument("--flight-pattern", default="lawnmower", help="synthetic flight pattern: lawnmower or straight")
    parser.add_argument("--flight-altitude", type=positive_float, default=200.0, help="flight height above ground in m (default 200)")
    parser.add_argument("--flight-pitch", type=float, default=40.0,
                        help="camera pitch from nadir in degrees (default 40; 0 = nadir)")
    parser.add_argument("--no-pose-aware", dest="pose_aware", action="store_false",
                        help="embed drone frames as captured (MEAN as published) instead of rectifying them with "
                        "the camera attitude")
    parser.add_argument("--cross-source", action="store_true",
                        help="render drone views and the flight from the world's second date (harder; the default "
                        "uses one date, an optimistic setting)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world, training and flight (default 0)")
    parser.add_argument("--data-preset", default="demo",
                        help="synthetic dataset preset of `meanloc data synth` (default demo; tiny for a smoke run)")
    parser.add_argument("--model-preset", default="mean-small", help="model preset to train (default mean-small)")
    add_batch_size(parser, None, help="training batch in pairs (default: the synthetic recipe's; must not exceed the classes)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from .demo import DemoOptions, run_demo

    return run_demo(DemoOptions(
        workdir=args.workdir, fresh=args.fresh, train_minutes=args.train_minutes, train_steps=args.train_steps,
        flight_frames=args.flight_frames, seed=args.seed, data_preset=args.data_preset,
        model_preset=args.model_preset, batch_size=args.batch_size or 0, flight_pattern=args.flight_pattern,
        cross_source=args.cross_source, flight_altitude_m=args.flight_altitude, flight_pitch_deg=args.flight_pitch,
        pose_aware=args.pose_aware,
    ))
