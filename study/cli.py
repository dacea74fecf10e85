"""The `study` command line.

    study data synth --out DIR      generate the embedded synthetic COCO dataset
    study data check ANNOTATIONS    validate a COCO instances file and its images
    study data split ANNOTATIONS    hold out a deterministic val split of one COCO file
    study pretrain --out CKPT       pre-train a backbone as a classifier (the ImageNet stage)
    study run [SPACE.yaml]          run a whole study on Ray Tune (default: search_spaces/default.yaml)
    study plan SPACE.yaml           what a study trains: cells, trials, iterations, GPU-hours
    study analyze RUN_DIR [...]     tables, figures and a report of a study's results (several runs
                                    of one study with different seeds: judged as one)
    study trial SPACE.yaml --set K=V  run exactly one trial (Ray Train, or --no-ray)
    study config SPACE.yaml         validate a study file and print it resolved

Exit codes: 0 success, 1 the data has errors, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from models.choices import BACKBONES, NORMS, PRECISIONS
from study import layout
from study.config import PretrainConfig, StudyConfig, dump_study, load_study
from study.errors import ConfigError, DataError, StorageError
from study.plan.schedule import schedule_for
from study.plan.trials import Size, Trial


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from study.data.synthetic import SynthSpec, write_synthetic

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(SynthSpec)}
    spec = SynthSpec(**{**given, "classes": tuple(args.classes.split(","))})
    start = time.perf_counter()
    print(f"writing {spec.train_images} train + {spec.val_images} val images "
          f"({spec.image_size} px, seed {spec.seed}) to {args.out}")
    paths = write_synthetic(args.out, spec, force=args.force, progress=print)
    print(f"done in {time.perf_counter() - start:.1f} s:")
    for split in ("train", "val"):
        ann, img = getattr(paths, f"{split}_annotations"), getattr(paths, f"{split}_images")
        print(f"  {split}: {ann}  (images in {img})")
        print(f"         check it with: study data check {ann} --images {img}")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from study.data.checks import check_file

    level = "none" if args.images is None else ("header" if args.quick else "decode")
    start = time.perf_counter()
    report, data = check_file(args.annotations, args.images, images=level)
    print(report.summary())
    if report.problems:
        print(report.problems_text(limit=args.max_problems))
    else:
        print("no problems found")
    if report.ok and args.self_eval and data is not None:
        from study.data.coco import index_coco
        from study.train.evaluation import evaluate_coco, ground_truth_as_detections

        coco = index_coco(data)
        dets = ground_truth_as_detections(coco)
        for iou in ("bbox", "segm"):
            ap = evaluate_coco(coco, dets, iou)
            print(f"self-eval {iou}: AP {ap['AP']:.1f}  AP50 {ap['AP50']:.1f}  AP75 {ap['AP75']:.1f}"
                  "  (ground truth against itself: 100.0 expected, a little less with instances"
                  " that have no area)")
    print(f"checked in {time.perf_counter() - start:.1f} s")
    return 0 if report.ok else 1


def _cmd_data_split(args: argparse.Namespace) -> int:
    from study.data.coco import split_coco

    train, val = split_coco(args.annotations, args.out, val_fraction=args.val_fraction, seed=args.seed)
    print(f"wrote {train} and {val}; images stay where {args.annotations.name}'s file_names point")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from study.tune.weights import run_pretrain

    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if args.study is not None:  # that study's pretrain section and backbone, then the flags
        cfg = load_study(args.study)
        pcfg, backbone = dataclasses.replace(cfg.pretrain, **given), args.backbone or cfg.model.backbone
    else:
        pcfg, backbone = PretrainConfig(**given), args.backbone or "resnet18"
    if pcfg.gpus_per_worker is None:  # no study, no flag: the GPU if there is one
        import torch

        pcfg = dataclasses.replace(pcfg, gpus_per_worker=1.0 if torch.cuda.is_available() else 0.0)
    out = args.out.resolve()
    data_dir = args.data_dir or out.parent / "pretrain_data"
    record = run_pretrain(pcfg, backbone=backbone, out=out, data_dir=data_dir)
    print(f"{record.images_seen} images seen ({record.epochs:.1f} epochs), val accuracy "
          f"{100 * record.val_accuracy:.1f}% (chance {100 * record.chance_accuracy:.1f}%); "
          f"use it with init: pretrained and model.pretrained_weights: {out}")
    return 0


def _parse_trial(cfg: StudyConfig, assignments: list[str]) -> Trial:
    """A Trial from `key=value` pairs; unset keys take the grid's first value (LR: the first
    listed, or the geometric middle of an Optuna range)."""
    lr = cfg.lr.values[0] if cfg.lr.values else (cfg.lr.low * cfg.lr.high) ** 0.5  # type: ignore[operator]
    size = (Size(train_images=cfg.grid.train_images[0]) if cfg.grid.train_images
            else Size(train_images=None, data_fraction=cfg.grid.data_fraction[0]))
    fields: dict[str, object] = {"init": cfg.grid.init[0], "schedule": cfg.grid.schedule[0],
                                 "base_lr": lr, "seed": cfg.grid.seeds[0]}
    kinds = {"init": str, "schedule": float, "base_lr": float, "seed": int}
    for item in assignments:
        key, _, value = item.partition("=")
        if key == "train_images":
            size = Size(train_images=value if value == "full" else int(value))
        elif key == "data_fraction":
            size = Size(train_images=None, data_fraction=float(value))
        elif key in kinds:
            fields[key] = kinds[key](value)
        else:
            raise ConfigError("--set", f"{item!r}: expected KEY=VALUE with KEY one of "
                                       f"{', '.join([*kinds, 'data_fraction', 'train_images'])}")
    if fields["init"] not in ("scratch", "pretrained"):
        raise ConfigError("--set init", f"{fields['init']!r} is not valid: expected 'scratch' or 'pretrained'")
    schedule_for(float(fields["schedule"]), cfg.solver)  # type: ignore[arg-type]
    return Trial(**fields, size=size)  # type: ignore[arg-type]


def _cmd_trial(args: argparse.Namespace) -> int:
    from study.train.build import trial_device
    from study.train.loop import train_trial
    from study.tune.weights import study_weights

    cfg = load_study(args.space)
    trial = _parse_trial(cfg, args.set)
    storage = args.storage.resolve()
    out = storage / layout.trial_path(cfg.name, trial.name())
    weights = study_weights(cfg, storage) if trial.init == "pretrained" else cfg.model.pretrained_weights
    print(f"trial {trial.name()} -> {out}")
    if args.no_ray:
        from study.tune.inputs import localized

        cfg, weights = localized(cfg, weights)  # inputs given as URIs: this machine's copies
        row = train_trial(cfg, trial, out_dir=out, data_root=storage / layout.DATA, pretrained_weights=weights,
                          device=trial_device(cfg), report=lambda r, _c: print(_row_text(r)))
    else:
        from study.tune.jobs import run_trial_on_ray

        result = run_trial_on_ray(cfg, trial, out_dir=out, data_root=storage / layout.DATA,
                                  pretrained_weights=weights)
        row = result.metrics or {}
        for r in layout.read_metrics(out):
            print(_row_text(r))
    print(f"{row.get('status', '?')} at iteration {row.get('iteration', '?')}; metrics in {out / layout.METRICS}")
    return 0 if row.get("status") == "finished" else 1


def _row_text(r: dict) -> str:
    ap = f"  bbox AP {r['bbox_AP']:.1f}  segm AP {r['segm_AP']:.1f}" if "bbox_AP" in r else ""
    return f"  it {r['iteration']}  {r['status']}  lr {r['lr']:.5f}  loss {r['loss']:.3f}{ap}"


DEFAULT_SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "default.yaml"


def _cmd_run(args: argparse.Namespace) -> int:
    from study.tune.driver import study_run

    start = time.perf_counter()
    cfg = load_study(args.space)
    name = args.name or cfg.name
    try:
        run = study_run(cfg, storage=args.storage, name=name, address=args.address, resume=args.resume,
                        forking=not args.no_fork)
    except ConfigError as e:  # a value of the study file (data paths, sizes): name the file
        raise (e.in_file(args.space) if e.file is None and e.key[:1].isalpha() else e) from None
    _print_summary(run.summary, run.report)
    print(f"study {name} done in {time.perf_counter() - start:.0f} s: "
          + ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in run.phases_s.items()))
    if run.errored:  # a script around `study run` must not take a partial study for a whole one
        print(f"study: {run.errored} trial(s) errored (the summary lists them; each one's {layout.FAILED} "
              "says why): the report leaves them out. Fix the cause, then `study run` again with --resume "
              "retries them.", file=sys.stderr)
        return 1
    return 0


def _print_summary(summary: str, report: str) -> None:
    print(f"\n{summary}\n")
    print(f"report: {report} (and report.html, claims.json, figures, results.parquet/.csv beside it)")


def _cmd_analyze(args: argparse.Namespace) -> int:
    if args.tol is not None and args.tol <= 0:
        raise ConfigError("--tol", f"{args.tol!r} must be > 0 (AP)")
    from study.layout import is_uri
    from study.tune.storage import analyze_stored, fetch_run, open_run

    if len(args.run_dir) == 1 and is_uri(args.run_dir[0]):  # shared storage: copy the metric logs here
        store, name = open_run(args.run_dir[0])
        out = (args.out or Path(f"{name}-report")).resolve()
        _print_summary(*analyze_stored(store, name, out=out, tol=args.tol))
        return 0
    from study.analysis.report import write_report

    if len(args.run_dir) > 1 and args.out is None:
        raise ConfigError("--out", "pooling several runs needs a report folder of its own: pass --out DIR")
    with tempfile.TemporaryDirectory() as tmp:
        run_dirs = []
        for i, location in enumerate(args.run_dir):
            if is_uri(location):  # each run's metric logs (not its checkpoints) copied here
                store, name = open_run(location)
                run_dirs.append(fetch_run(store, name, Path(tmp) / str(i) / name))
                continue
            run_dir = Path(location).resolve()
            if not (run_dir / layout.TRIALS).is_dir():
                raise ConfigError("RUN_DIR", f"{run_dir} is not a study run (no {layout.TRIALS}/ folder): "
                                             "pass STORAGE/NAME, e.g. runs/default")
            run_dirs.append(run_dir)
        out = (args.out or run_dirs[0] / layout.REPORT).resolve()
        report, summary = write_report(run_dirs, out, tol=args.tol)
    _print_summary(summary, str(report))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from study.plan.budget import format_plan, plan_study
    from study.train.state import checkpoint_bytes

    cfg = load_study(args.space)
    plan = plan_study(cfg, lrs=args.lrs, keep=args.keep)
    print(format_plan(cfg, plan, checkpoint_bytes=checkpoint_bytes(cfg), s_per_iter=args.s_per_iter))
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    cfg = load_study(args.space)
    print(dump_study(cfg), end="")
    return 0


def _storage_option(parser: argparse.ArgumentParser, uri: bool = False) -> None:
    if uri:
        parser.add_argument("--storage", default=os.environ.get("STUDY_STORAGE") or "runs",
                            help="results, data and the pre-training cache go here: a folder, or a URI "
                                 "every node reaches (s3://bucket/runs, gs://..., file://...); default "
                                 "$STUDY_STORAGE if set (cluster.yaml sets it), else runs/")
    else:
        parser.add_argument("--storage", type=Path, default=Path("runs"),
                            help="results, data and the pre-training cache go here (default runs/)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="study",
        description="Rethinking ImageNet Pre-training as a Ray Tune study: Mask R-CNN from scratch "
                    "vs pretrained, across schedules, training-set sizes and learning rates.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for add in (_add_data, _add_pretrain, _add_trial, _add_run, _add_analyze, _add_plan, _add_config):
        add(verbs)
    return parser


def _add_data(verbs: argparse._SubParsersAction) -> None:
    data = verbs.add_parser("data", help="generate or check detection datasets",
                            description="Generate the synthetic dataset or check a COCO file.")
    data_verbs = data.add_subparsers(dest="data_verb", required=True, metavar="ACTION")

    synth = data_verbs.add_parser(
        "synth", help="write the synthetic COCO instance-segmentation set",
        description="Write a COCO-format instance-segmentation set of shapes on textured "
                    "backgrounds (train.json, val.json and PNG images), deterministic for a seed. "
                    "An existing set with the same options is reused unless --force.")
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    _synth_flags(synth)
    synth.add_argument("--force", action="store_true", help="regenerate even if the set exists")
    synth.set_defaults(func=_cmd_data_synth)

    check = data_verbs.add_parser(
        "check", help="validate a COCO instances file and its images",
        description="Validate a COCO instances file: ids, categories, boxes, polygons, RLEs and "
                    "(with --images) every image file. Exits 1 if anything would break training.")
    check.add_argument("annotations", type=Path, help="COCO instances JSON file")
    check.add_argument("--images", type=Path, default=None,
                       help="folder the file_names are relative to (without it, files are not checked)")
    check.add_argument("--quick", action="store_true",
                       help="read image headers only instead of decoding every image")
    check.add_argument("--self-eval", action="store_true",
                       help="also evaluate the ground truth against itself with COCOeval (AP 100)")
    check.add_argument("--max-problems", type=int, default=50, help="problems to print (default 50)")
    check.set_defaults(func=_cmd_data_check)

    split = data_verbs.add_parser(
        "split", help="split one COCO file into train.json and val.json, deterministically",
        description="Hold out a seeded fraction of the images of a COCO instances file as val "
                    "(for sets that ship no split). The image folder is shared by both files.")
    split.add_argument("annotations", type=Path, help="COCO instances JSON file")
    split.add_argument("--out", type=Path, required=True, help="folder for train.json and val.json")
    split.add_argument("--val-fraction", type=float, default=0.25, help="default 0.25")
    split.add_argument("--seed", type=int, default=0, help="default 0")
    split.set_defaults(func=_cmd_data_split)


# What each `study data synth` flag sets; its default is SynthSpec's.
SYNTH_HELP = {
    "train_images": "training images", "val_images": "validation images",
    "image_size": "longer image side in pixels", "seed": "generation seed",
    "min_objects": "objects per image, at least", "max_objects": "objects per image, at most",
    "min_radius": "smallest object circumradius, a fraction of the shorter side",
    "max_radius": "largest object circumradius, a fraction of the shorter side",
    "labels": "shape: one category per shape class; object: one class-agnostic category for every instance",
    "classes": "the shape classes drawn: a comma-separated subset, in this order, of",
}


def _synth_flags(synth: argparse.ArgumentParser) -> None:
    """One flag per SynthSpec field, its default the dataclass's."""
    from study.data.synthetic import SynthSpec

    spec = SynthSpec()
    for f in dataclasses.fields(SynthSpec):
        default = getattr(spec, f.name)
        flag = "--" + f.name.replace("_", "-")
        if f.name == "classes":
            synth.add_argument(flag, default=",".join(default),
                               help=f"{SYNTH_HELP[f.name]} {','.join(default)} (default: all)")
        elif f.name == "labels":
            synth.add_argument(flag, choices=("shape", "object"), default=default,
                               help=f"{SYNTH_HELP[f.name]} (default {default})")
        else:
            synth.add_argument(flag, type=type(default), default=default,
                               help=f"{SYNTH_HELP[f.name]} (default {default})")


def _add_pretrain(verbs: argparse._SubParsersAction) -> None:
    pretrain = verbs.add_parser(
        "pretrain", help="pre-train a backbone as a classifier (the ImageNet stage)",
        description="Train the detector's backbone as an image classifier and write the checkpoint "
                    "that init: pretrained loads. 'synthetic' generates an object-centric shape "
                    "set (cached in --data-dir); 'imagefolder:PATH' reads PATH/train/<class>/* and "
                    "PATH/val/<class>/* (e.g. ImageNet).")
    pretrain.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    pretrain.add_argument("--study", type=Path, default=None,
                          help="take the pretrain section and backbone of this study file (the "
                               "checkpoint its pretrained arm would make); flags override it")
    pretrain.add_argument("--data", default=None, help="synthetic (default) or imagefolder:PATH")
    pretrain.add_argument("--data-dir", type=Path, default=None,
                          help="where the synthetic set is generated (default: beside --out)")
    pretrain.add_argument("--backbone", choices=BACKBONES, default=None,
                          help="default resnet18 (or the --study's)")
    pretrain.add_argument("--norm", choices=NORMS, default=None,
                          help="the classifier's norm (default gn, or the one whose tensors all load "
                               "into the --study's detector)")
    pretrain.add_argument("--precision", choices=PRECISIONS, default=None,
                          help="default auto: bf16 autocast where the device has native bf16")
    pretrain.add_argument("--optimizer", choices=("sgd", "adamw"), default=None, help="default adamw")
    pretrain.add_argument("--gpus-per-worker", dest="gpus_per_worker", type=float, default=None,
                          help="GPUs per worker (default: the --study's resources.gpus_per_worker, else 1 "
                               "where a GPU is visible, else 0); with GPUs it runs as a Ray Train job, "
                               "one worker included")
    defaults = PretrainConfig()
    for flag, key, kind in (("--epochs", "epochs", float), ("--image-size", "image_size", int),
                            ("--batch-size", "batch_size", int), ("--lr", "base_lr", float),
                            ("--warmup-iters", "warmup_iters", int),
                            ("--train-images", "train_images", int), ("--val-images", "val_images", int),
                            ("--seed", "seed", int), ("--workers", "workers", int),
                            ("--loader-workers", "loader_workers", int)):
        pretrain.add_argument(flag, dest=key, type=kind, default=None,
                              help=f"default {getattr(defaults, key)}")
    pretrain.set_defaults(func=_cmd_pretrain)


def _add_trial(verbs: argparse._SubParsersAction) -> None:
    trial = verbs.add_parser(
        "trial", help="run exactly one trial (outside Tune), for debugging and benchmarks",
        description="Run one trial of a study on Ray Train (or in this process with --no-ray): "
                    "KEY=VALUE pairs pick init, schedule, train_images | data_fraction, base_lr and "
                    "seed; unset keys take the grid's first value.")
    trial.add_argument("space", type=Path, help="study YAML")
    trial.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                       help="e.g. init=scratch schedule=2 train_images=500 base_lr=0.02 seed=0")
    _storage_option(trial)
    trial.add_argument("--no-ray", action="store_true", help="train in this process, without Ray")
    trial.set_defaults(func=_cmd_trial)


def _add_run(verbs: argparse._SubParsersAction) -> None:
    run = verbs.add_parser(
        "run", help="run a whole study on Ray Tune (the main job)",
        description="Train every trial of a study (init x schedule x size x seed x LR) on Ray Tune, "
                    "shorter schedules forked from the longest, then print the convergence summary. "
                    "Creates the synthetic set and the pre-trained backbone first if missing (cached "
                    "under --storage).")
    run.add_argument("space", type=Path, nargs="?", default=DEFAULT_SPACE,
                     help="study YAML (default: the embedded search_spaces/default.yaml)")
    _storage_option(run, uri=True)
    run.add_argument("--name", default=None, help="results folder under --storage (default: the study's name)")
    run.add_argument("--address", default=None,
                     help="join a running Ray cluster ('auto', or HOST:PORT) instead of starting one")
    run.add_argument("--resume", action="store_true",
                     help="continue an interrupted run (Tune restore; trials resume from checkpoints)")
    run.add_argument("--no-fork", action="store_true",
                     help="train every schedule from iteration 0 instead of forking from the trunk")
    run.set_defaults(func=_cmd_run)


def _add_analyze(verbs: argparse._SubParsersAction) -> None:
    analyze = verbs.add_parser(
        "analyze", help="tables, figures and a report from a study run's stored results",
        description=f"Read RUN_DIR/{layout.TRIALS}/*/{layout.METRICS} (no Ray needed) and write report.md, a "
                    "self-contained report.html, claims.json (the paper's claims with 95% intervals "
                    "over paired seeds and a verdict each), the figures and results.parquet/.csv; "
                    "print the summary. Works on a run still in progress (partial results, stated as such). "
                    "Several runs of the same study with different seeds (a second seed set run later "
                    "under another name) are judged as one: their paired seeds pooled.")
    analyze.add_argument("run_dir", nargs="+",
                         help="a study run: STORAGE/NAME, e.g. runs/default or s3://bucket/runs/NAME; "
                              "several runs of one study with different seeds are judged as one "
                              "(their configs may differ only in name, grid.seeds and resources)")
    analyze.add_argument("--out", type=Path, default=None,
                         help="report folder (default RUN_DIR/report; NAME-report here for a URI; "
                              "required for several runs)")
    analyze.add_argument("--tol", type=float, default=None,
                         help="narrow the catch-up margin to this many AP (it cannot widen the study "
                              "file's analysis.margin, nor its cap: max(1.5, 5%% of pretrained's AP), and "
                              "at most a quarter of that AP)")
    analyze.set_defaults(func=_cmd_analyze)


def _add_plan(verbs: argparse._SubParsersAction) -> None:
    plan = verbs.add_parser(
        "plan", help="validate a study and print what it trains, without starting Ray",
        description="Print the cells, trials, lineages, fork points and iterations: naive (every "
                    "trial from 0), forked, and forked + successive halving over the schedules; with "
                    "--s-per-iter, the trial-hours and GPU-hours of each.")
    plan.add_argument("space", type=Path, help="study YAML")
    plan.add_argument("--s-per-iter", type=float, default=None,
                      help="seconds per training iteration of one trial, for the time estimate")
    plan.add_argument("--lrs", type=int, default=None,
                      help="price it with this many LR candidates per cell (default: the study's own)")
    plan.add_argument("--keep", type=float, default=None,
                      help="halving's fraction kept per schedule (default: lr.halving.keep, else 0.5)")
    plan.set_defaults(func=_cmd_plan)


def _add_config(verbs: argparse._SubParsersAction) -> None:
    config = verbs.add_parser("config", help="validate a study file and print it resolved",
                              description="Load a search-space YAML, validate every key and print "
                                          "the resolved config (defaults filled in, paths absolute).")
    config.add_argument("space", type=Path, help="study YAML, e.g. search_spaces/default.yaml")
    config.set_defaults(func=_cmd_config)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):  # progress lines appear as they happen, also in a log file
        sys.stdout.reconfigure(line_buffering=True)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"study: config error: {e}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"study: data error: {e}", file=sys.stderr)
        return 1
    except (layout.DiskFull, StorageError) as e:
        print(f"study: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
