"""`sec`: the project's command line (predict now; the Prefect commands join it)."""

from __future__ import annotations

import argparse
import sys


def _predict(args) -> int:
    from pipeline.predict import predict_file

    n = predict_file(args.model_dir, args.input, args.output, batch_size=args.batch_size, max_length=args.max_length)
    print(f"wrote {n} predictions to {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sec", description="SEC pipeline command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="score a Parquet/JSONL file of premise/hypothesis pairs")
    p.add_argument("model_dir", help="any model directory the pipeline wrote, e.g. models/quantized")
    p.add_argument("input", help="Parquet or JSONL with premise and hypothesis columns")
    p.add_argument("output", help="JSONL to write: premise, hypothesis, label, label_name, probs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.set_defaults(func=_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    from stages._io import DataError
    from stages._models import ModelError
    from stages._params import ParamsError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ModelError, ParamsError) as err:
        print(f"sec: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
