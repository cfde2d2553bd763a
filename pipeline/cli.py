"""`sec`: the project's command line: predict, compare, export, and the Prefect server, worker, deployments and flows."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import yaml

WORK_POOL = "sec-gpu"


def prefect_env() -> dict[str, str]:
    """Telemetry off, and a project-local Prefect home unless one is set."""
    env = dict(os.environ)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("PREFECT_HOME", os.path.abspath(".cache/prefect"))
    # prefect.yaml's pull step runs flows in this checkout.
    env.setdefault("SEC_REPO_DIR", os.getcwd())
    # Flow runs report a heartbeat this often (Prefect's minimum); the grid's automation marks a run
    # silent for 90 s Crashed (pipeline/fanout.py), so a killed worker's cell does not stay Running.
    env.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
    return env


def _prefect(*args: str) -> int:
    return subprocess.call([os.path.join(os.path.dirname(sys.executable), "prefect"), *args], env=prefect_env())


def _server(args) -> int:
    print(f"Prefect UI: http://127.0.0.1:{args.port}  (set PREFECT_API_URL=http://127.0.0.1:{args.port}/api for clients)")
    return _prefect("server", "start", "--host", "127.0.0.1", "--port", str(args.port))


def _worker(args) -> int:
    # Idle OpenMP threads sleep instead of spinning, so workers sharing a CPU host share its cores:
    # two 2-thread training runs on 2 cores took 5.1 s a step with spinning threads against 0.30 s
    # alone, and 0.5 s with this (reports/fanout/). The wait policy changes no thread count and no
    # summation order: the cells' numbers were identical with one worker and with two.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # The pool is created on first use; a process pool runs flows in this checkout.
    _prefect("work-pool", "create", args.pool, "--type", "process")
    if args.gpu_limit:
        _prefect("global-concurrency-limit", "create", args.gpu_limit, "--limit", "1")
    # --limit: flow runs this worker takes at once (one per GPU it has), so the rest of a fanned-out
    # grid stays on the pool for the other workers instead of queueing here for the GPU slot.
    return _prefect("worker", "start", "--pool", args.pool, "--type", "process", "--limit", str(args.limit),
                    *(["--name", args.name] if args.name else []))


def _grid(args) -> int:
    selection = [*(["--only", *args.only] if args.only else []), *(["--seeds", str(args.seeds)] if args.seeds else []),
                 *(["--profile", args.profile] if args.profile else []), *(["--full"] if args.full else [])]
    if not args.workers:  # one experiment at a time in this checkout (dvc queue)
        from pipeline.grid import main as grid_main

        return grid_main(["run", "--out-dir", args.out_dir, *selection,
                          *(["--timeout", str(args.timeout)] if args.timeout else [])])
    from pipeline.fanout import grid_fanout
    from pipeline.fanout_plan import FanoutError

    try:
        summary = grid_fanout(only=args.only, profile=args.profile, seeds=args.seeds, full=args.full,
                              git_remote=args.git_remote, dvc_remote=args.dvc_remote, out_dir=args.out_dir,
                              timeout_s=args.timeout)
    except FanoutError as err:
        print(f"sec grid: {err}", file=sys.stderr)
        return 2
    print(f"{len(summary['cells'])} cell(s): {len(summary['submitted'])} submitted, "
          f"{len(summary['failed'])} failed ({', '.join(summary['failed']) or 'none'}), "
          f"{len(summary['missing'])} missing; tables in {args.out_dir}")
    return 1 if summary["failed"] or summary["missing"] else 0


def _deploy(args) -> int:
    return _prefect("deploy", "--all")


def _pipeline(args) -> int:
    from pipeline.flows import sec_pipeline

    overrides = json.loads(args.set) if args.set else {}
    sec_pipeline(overrides=overrides, profile=args.profile)
    return 0


def _controller(args) -> int:
    if args.pin_reference:
        from pipeline.controller import pin_reference

        ref = pin_reference(args.pin_reference)
        print(f"pinned controller/reference.json: teacher dev accuracy {100 * ref.teacher_dev_accuracy:.2f} % "
              f"(mean over seeds {ref.seeds}: {', '.join(f'{100 * v:.2f}' for v in ref.values)})")
        return 0
    from pipeline.controller import sec_controller

    queued = {}
    for item in args.enqueue or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--enqueue {item!r}: expected KEY=VALUE, e.g. prune.ratio=0.4")
        queued[key] = yaml.safe_load(value)
    from pipeline.fanout_plan import FanoutError

    try:
        summary = sec_controller(trials=args.trials, apply=args.apply, queued=queued or None, workers=args.workers,
                                 git_remote=args.git_remote, dvc_remote=args.dvc_remote)
    except FanoutError as err:
        print(f"sec controller: {err}", file=sys.stderr)
        return 2
    print(f"{len(summary['trials'])} trial(s) run ({', '.join(summary['trials']) or 'none'}); "
          f"{summary['study_trials']} in the study; recommended: "
          f"{'trial ' + str(summary['recommended']) if summary['recommended'] is not None else 'none'}"
          + (f"; applied {summary['applied']}" if summary["applied"] else ""))
    print("reports: " + ", ".join(summary["reports"]))
    return 0


def _predict(args) -> int:
    from pipeline.predict import predict_file

    n = predict_file(args.model_dir, args.input, args.output, batch_size=args.batch_size, max_length=args.max_length,
                     device=args.device)
    print(f"wrote {n} predictions to {args.output}")
    return 0


def _export(args) -> int:
    from stages._onnx import export_model_dir

    metrics = export_model_dir(args.model_dir, args.out_dir, precision="int8" if args.int8 else "fp32",
                               optimize=not args.no_optimize, opset=args.opset, max_length=args.max_length)
    fused = metrics["steps"].get("optimize", {}).get("fused", {})
    print(f"wrote {args.out_dir}: {metrics['precision']} {metrics['size_mb']} MB" + (f", fused {fused}" if fused else ""))
    return 0


def _compare(args) -> int:
    from pipeline.compare import run_cli

    return run_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sec", description="SEC pipeline command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="score a Parquet/JSONL file of premise/hypothesis pairs")
    p.add_argument("model_dir", help="any model directory the pipeline wrote, e.g. models/quantized")
    p.add_argument("input", help="Parquet or JSONL with premise and hypothesis columns")
    p.add_argument("output", help="JSONL to write: premise, hypothesis, label, label_name, probs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to score (auto: cuda when there is one; env SEC_DEVICE overrides); int8 and ONNX models stay on the CPU")
    p.set_defaults(func=_predict)

    p = sub.add_parser("export", help="export a model directory to ONNX (fp32 or int8) that runs with onnxruntime only")
    p.add_argument("model_dir", help="float model directory, e.g. models/distilled (not the torch int8 one)")
    p.add_argument("out_dir", help="directory to write: model.onnx, tokenizer, sec.json, sec_onnx.py")
    p.add_argument("--int8", action="store_true", help="ONNX Runtime dynamic int8 (per-channel weights)")
    p.add_argument("--no-optimize", action="store_true", help="skip ONNX Runtime's fusions (attention, LayerNorm, GELU)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--max-length", type=int, default=128)
    p.set_defaults(func=_export)

    p = sub.add_parser("server", help="start a local Prefect server and UI on 127.0.0.1 (telemetry off)")
    p.add_argument("--port", type=int, default=4200)
    p.set_defaults(func=_server)

    p = sub.add_parser("worker", help="start a Prefect worker on the work pool (one per GPU host)")
    p.add_argument("--pool", default=WORK_POOL)
    p.add_argument("--gpu-limit", default=os.environ.get("SEC_GPU_LIMIT"), help="global concurrency limit to create, e.g. gpu-0")
    p.add_argument("--limit", type=int, default=1, help="flow runs this worker runs at once (default 1: one per GPU)")
    p.add_argument("--name", default=None, help="worker name shown in the UI and on the grid's cells (default: Prefect's)")
    p.set_defaults(func=_worker)

    p = sub.add_parser("grid", help="the ablation grid; --workers: one flow run per cell on the work pool's workers")
    p.add_argument("--workers", action="store_true",
                   help="fan the missing cells out to the pool's workers (needs a git remote and a DVC remote; see docs/prefect.md)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="rows, experiments or tables (as python -m pipeline.grid)")
    p.add_argument("--seeds", type=int, help="seeds of the claim rows (default: params.yaml grid.seeds)")
    p.add_argument("--profile", choices=["cpu", "gpu", "tiny"], default=None)
    p.add_argument("--full", action="store_true", help="run the whole pipeline for data-only variants too")
    p.add_argument("--out-dir", default="reports/grid")
    p.add_argument("--git-remote", help="URL workers clone from (default: `git remote get-url origin`)")
    p.add_argument("--dvc-remote", help="DVC remote URL workers share (default: the default remote in .dvc/config)")
    p.add_argument("--timeout", type=float, help="seconds to wait for the cells (they go on after it)")
    p.set_defaults(func=_grid)

    p = sub.add_parser("deploy", help="register the deployments in prefect.yaml")
    p.set_defaults(func=_deploy)

    p = sub.add_parser("pipeline", help="run the pipeline flow here (one task run per DVC stage)")
    p.add_argument("--profile", choices=["cpu", "gpu", "tiny"], default=None)
    p.add_argument("--set", default=None, help='JSON of dotted params overrides, e.g. \'{"prune.ratio": 0.5}\'')
    p.set_defaults(func=_pipeline)

    p = sub.add_parser("controller", help="run the synergy controller's search here (Optuna study, one dvc exp run per trial)")
    p.add_argument("--trials", type=int, default=None, help="trials to add to the study (default controller.search.trials; 0: report only)")
    p.add_argument("--apply", action="store_true", help="dvc exp apply the recommended trial's experiment at the end")
    p.add_argument("--enqueue", nargs="+", metavar="KEY=VALUE", default=None,
                   help="a configuration for the study to try next (knobs left out are sampled)")
    p.add_argument("--pin-reference", nargs="+", metavar="RUN", default=None,
                   help="pin controller/reference.json from these runs' teacher dev accuracy (checkouts differing only in seed), then exit")
    p.add_argument("--workers", action="store_true",
                   help="run each trial's runs as flow runs on the work pool's workers (git and DVC remotes as sec grid --workers)")
    p.add_argument("--git-remote", help="with --workers: URL workers clone from (default: `git remote get-url origin`)")
    p.add_argument("--dvc-remote", help="with --workers: DVC remote URL workers share (default: the default remote)")
    p.set_defaults(func=_controller)

    p = sub.add_parser("compare", help="did B help over A? paired bootstrap CIs and McNemar on per-example predictions")
    for side in ("a", "b"):
        p.add_argument(
            side,
            metavar=side.upper(),
            help="git commit/branch/tag, DVC experiment name, predictions directory or model directory; "
            "comma-separated for several seeds (seed i of A is paired with seed i of B)",
        )
    p.add_argument(
        "--model",
        default=None,
        help="model whose predictions to compare (default: quantized, "
        "or teacher when some side only has evaluate_teacher predictions)",
    )
    p.add_argument(
        "--split", choices=["dev", "test", "both"], default="both", help="dev decides; test is reported only"
    )
    p.add_argument("--resamples", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_compare)
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
