"""The synergy controller: a Prefect flow that runs the search of pipeline/search.py over the DVC
pipeline.

Each run of a trial (cheap pass, full run, confirmation seed) is a subflow run in the UI and one
`dvc exp run --name <trial> -S key=value ...` in the workspace, so DVC reruns only the stages the
trial's params change, the run-cache restores every stage it has seen, and `dvc exp show` lists
every run. The subflow publishes the run's dev metrics as an artifact and an event (origin
`controller`, which the controller's own trigger ignores). Prefect only orchestrates: what to
run next, what is feasible and what to recommend is decided in pipeline/search.py, which imports
no Prefect; `control` below is the loop without Prefect, with DVC passed in.

The study is kept in controller/study.log (commit it): a killed controller continues where it
was on its next start. `sec controller --apply` applies the recommended trial's experiment
(`dvc exp apply`); without it the workspace is left with the last run's outputs. With
`workers` (`sec controller --workers`) each run goes to the work pool instead (docs/prefect.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipeline import reference as references
from pipeline import search, search_report
from pipeline._dvc_env import override_value
from pipeline.flows import CONTROLLER_ORIGIN, publish_metrics, run_streaming
from pipeline.measure import Measurement, read_measurement, read_measurement_at
from pipeline.search import RunRequest, Setup
from pipeline.targets import ControllerParams, TargetsError, load_controller_params


def trial_overrides(changes: dict[str, object]) -> list[str]:
    """What follows each `-S` of a trial's run (here, or on a worker)."""
    return [f"{key}={override_value(value)}" for key, value in changes.items()]


def exp_run_command(changes: dict[str, object], name: str) -> list[str]:
    cmd = ["dvc", "exp", "run", "--name", name]
    for override in trial_overrides(changes):
        cmd += ["-S", override]
    return cmd


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def setup_for(repo: Path, study, cfg: ControllerParams) -> Setup:
    """The search's inputs: params.yaml's space and targets, the pinned reference, and the
    repository's values as the study first saw them."""
    base, seed = search.base_values(repo / "params.yaml", cfg.search)
    base, seed = search.pin_base(study, base, seed)
    from_profile = search.pin_profile_keys(
        study, search.profile_keys(repo / "params.yaml", [*cfg.search.knobs, search.FIDELITY_KEY]))
    return Setup(cfg.search, cfg.targets, references.load(repo), base, seed, from_profile)


def keep_files(paths: list[Path]) -> Callable[[], None]:
    """Snapshot files; the returned function writes them back (`dvc exp apply` restores the
    experiment's copy of every tracked file, which would be an older study log)."""
    saved = {path: path.read_bytes() for path in paths if path.is_file()}

    def restore() -> None:
        for path, data in saved.items():
            path.write_bytes(data)
    return restore


def apply_recommendation(repo: Path, study, setup: Setup, dvc: Callable[[list[str]], str],
                         log: Callable[[str], None]) -> str | None:
    chosen = search.recommend(study.get_trials(deepcopy=False), setup.targets)
    if chosen is None:
        log("no trial meets every target with its accuracy confirmed: nothing to apply")
        return None
    name = next(v["experiment"] for k, v in chosen.user_attrs.items() if k.startswith("run:full:"))
    report_dir = repo / search_report.OUT
    restore = keep_files([repo / search.STORAGE, *report_dir.glob("*")])
    try:
        dvc(["dvc", "exp", "apply", name])
    finally:
        restore()
    log(f"applied trial {chosen.number}'s experiment {name}")
    return name


def control(repo: str | Path, trials: int | None, apply: bool, run_experiment: Callable[[RunRequest], str | None],
            dvc: Callable[[list[str]], str], log: Callable[[str], None] = print,
            queued: dict[str, object] | None = None) -> dict:
    """Open (or continue) the study, queue `queued` (a configuration to try next), run `trials`
    more trials, write reports/search/, and with `apply` apply the recommendation.
    run_experiment(request) runs one `dvc exp run`: in this workspace (returns None; the
    measurement is read from the workspace) or elsewhere (returns the experiment's commit, pulled
    into this repository; the measurement is read at that commit)."""
    repo = Path(repo)
    cfg = load_controller_params(repo / "params.yaml")
    if cfg.search is None:
        raise TargetsError(f"{repo / 'params.yaml'}: no `controller.search` section: nothing to search")
    study = search.open_study(repo / search.STORAGE, cfg.search)
    setup = setup_for(repo, study, cfg)
    if queued:
        log(f"queued {search.enqueue(study, cfg.search, queued)}")

    def runner(request: RunRequest) -> Measurement:
        rev = run_experiment(request)
        if rev is None:
            return read_measurement(repo, cfg.deployed_model)
        return read_measurement_at(repo, rev, cfg.deployed_model)

    states = search.search(study, setup, runner, cfg.search.trials if trials is None else trials, log)
    written = search_report.write(study, setup.targets, setup.reference, repo / search_report.OUT)
    chosen = search.recommend(study.get_trials(deepcopy=False), setup.targets)
    applied = apply_recommendation(repo, study, setup, dvc, log) if apply else None
    return {"trials": [state.name for state in states], "study_trials": len(study.trials),
            "recommended": chosen.number if chosen else None, "applied": applied,
            "reports": [str(p) for p in written]}


def pin_reference(runs: list[str], repo: str | Path = ".") -> references.Reference:
    """`sec controller --pin-reference`: the one way controller/reference.json moves."""
    reference = references.pin(runs)
    references.save(reference, repo)
    return reference


# ---------------------------------------------------------------------------------------------
# Prefect: each run a subflow with its metrics artifact.


@task(name="dvc-exp-run", cache_policy=NO_CACHE)
def dvc_exp_run(changes: dict[str, object], name: str, repo: str) -> str:
    logger = get_run_logger()
    return run_streaming(exp_run_command(changes, name), repo, logger.info)


def run_markdown(request: RunRequest, measured: Measurement) -> str:
    return "\n".join([
        f"# Trial {request.trial}, {request.fidelity} run, seed {request.seed} (dev)", "",
        f"Experiment `{request.name}`: " + ", ".join(f"`{k}={v}`" for k, v in request.overrides.items()), "",
        "| dev accuracy % | teacher dev % | size × | speed-up b32 × | b1 × | labels % |", "|---|---|---|---|---|---|",
        f"| {100 * measured.accuracy:.2f} | {100 * measured.teacher_accuracy:.2f} | {measured.size_ratio:.2f} "
        f"| {measured.speedup:.2f} | {measured.speedup_b1 or float('nan'):.2f} | {100 * measured.labelled_fraction:.1f} |",
    ]) + "\n"


@flow(name="sec-controller-trial", flow_run_name="trial-{trial}-{fidelity}-s{seed}")
def controller_trial(trial: int, fidelity: str, seed: int, changes: dict[str, object], name: str,
                     repo: str = ".", deployed: str | None = None) -> dict:
    """One run of a trial: `dvc exp run` with its params, then its dev metrics as an artifact.

    Published with the controller's origin label, which the sec-controller trigger does not
    match: the controller's own runs must not start it again.
    """
    output = dvc_exp_run(changes, name, repo)
    publish_metrics(repo, origin=CONTROLLER_ORIGIN)
    request = RunRequest(trial, name, changes, seed, fidelity)
    create_markdown_artifact(key=f"sec-trial-{trial}-{fidelity}-s{seed}", markdown=run_markdown(request, read_measurement(repo, deployed)),
                             description=f"controller trial {trial}: dev metrics")
    return {"stages_run": stages_run(output)}


@flow(name="sec-controller", log_prints=True)
def sec_controller(trials: int | None = None, apply: bool = False, repo: str = ".",
                   queued: dict[str, object] | None = None, workers: bool = False,
                   git_remote: str | None = None, dvc_remote: str | None = None) -> dict:
    """Run `trials` more trials of the study (default controller.search.trials), the `queued`
    configuration first, write the Pareto front to reports/search/, and with `apply` apply the
    recommended configuration.

    `workers`: each run of a trial is a `sec-experiment` flow run on the work pool (any worker,
    any host; pipeline/fanout.py), pulled back with `dvc exp pull` and measured at its commit; this
    checkout's workspace is not touched. Trials still run one after another (the sampler learns
    from each), so workers give each run a GPU host, not parallelism.
    """
    logger = get_run_logger()
    deployed = load_controller_params(Path(repo) / "params.yaml").deployed_model
    if workers:
        from pipeline.fanout import experiment_on_worker, fanout_target

        root, remotes, commit = fanout_target(repo, git_remote, dvc_remote)

        def run_experiment(r: RunRequest) -> str:
            return experiment_on_worker(r.name, trial_overrides(r.overrides), root, remotes, commit)
    else:
        def run_experiment(r: RunRequest) -> None:
            controller_trial(r.trial, r.fidelity, r.seed, r.overrides, r.name, repo, deployed)
    return control(
        repo, trials, apply, run_experiment=run_experiment,
        dvc=lambda cmd: run_streaming(cmd, repo, logger.info),
        log=logger.info, queued=queued,
    )
