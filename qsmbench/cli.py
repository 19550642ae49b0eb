"""The ``qsmbench`` command line (see ARCHITECTURE.md, "The command line").

Errors go to stderr as one paragraph naming the file, option or value at fault, without a
traceback (``--debug`` shows it), and the exit status is non-zero (2 for bad input or usage, 1
for a failed reconstruction or failed contract checks); ``--json`` prints exactly one JSON object
on stdout.  No command leaves a partial output behind: every file is written under a temporary
name and renamed (:func:`qsmbench.io.atomic_write`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import traceback
from pathlib import Path

from . import __version__
from .errors import QsmbenchError


def _params(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise QsmbenchError(f"--param expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def cmd_list_methods(args) -> int:
    from .registry import method_infos  # noqa: PLC0415 - keep start-up fast

    infos = method_infos(args.methods_dir or [])
    if args.json:
        print(json.dumps({"methods": [i.as_dict() for i in infos]}, indent=2))
        return 0
    width = max((len(i.name) for i in infos), default=4)
    for i in infos:
        state = "available" if i.available else f"unavailable: {i.reason}"
        print(f"{i.name:<{width}}  {state}")
    return 0


def cmd_phantom(args) -> int:
    from .phantom import write_phantom  # noqa: PLC0415

    if Path(args.outdir).exists() and not Path(args.outdir).is_dir():
        raise QsmbenchError(f"OUTDIR {args.outdir} exists and is not a folder; expected a folder to write the "
                            "phantom to")
    out = write_phantom(args.outdir, shape=tuple(args.shape), voxel_size_mm=tuple(args.voxel_size), model=args.model,
                        seed=args.seed, calcification=args.calcification, b0_dir=tuple(args.b0_dir),
                        subject=args.subject)
    print(f"wrote phantom to {out}", file=sys.stderr)
    return 0


def cmd_reconstruct(args) -> int:
    from .devices import resolve_profile  # noqa: PLC0415
    from .io import volume_from_files, write_json, write_nifti  # noqa: PLC0415
    from .registry import get_method_class  # noqa: PLC0415
    from .runner import method_device, run_method  # noqa: PLC0415

    out = Path(args.out)
    if not out.name.endswith((".nii", ".nii.gz")):
        raise QsmbenchError(f"--out {out}: the output must be a NIfTI file name ending with .nii or .nii.gz")
    _check_acquisition(args)
    params = _params(args.param)
    vol = volume_from_files(args.field, args.mask, magnitude=args.magnitude, b0_dir=tuple(args.b0_dir),
                            b0_tesla=args.b0, te_s=args.te)
    # say which profile and device run before a possibly long training (run_method resolves the same)
    cls = get_method_class(args.method, extra_dirs=args.methods_dir or [])
    device = method_device(cls, args.device)
    profile, reason = resolve_profile(cls, args.profile, device, requested_device=args.device)
    print(f"{args.method}: profile {profile} ({reason}); device {device}", file=sys.stderr)
    result = run_method(args.method, vol, params=params, profile=args.profile,
                        seed=args.seed, device=args.device, extra_dirs=args.methods_dir or [],
                        identity={"dataset": str(args.field), "perturbation": "none"})
    if result.status != "ok":
        print(f"error: method '{args.method}' did not succeed (status {result.status}): {result.record['error']}; "
              f"nothing was written to {out}", file=sys.stderr)
        if args.debug and result.record.get("traceback"):
            print(result.record["traceback"], file=sys.stderr)
        return 1
    write_nifti(out, result.chi_ppm, vol.affine)
    record = {k: v for k, v in result.record.items() if k != "traceback"}
    record["output"] = str(out)
    if args.run_json:
        write_json(args.run_json, record)
    print(f"{args.method}: wrote {out} ({record['wall_s']:.2f} s, peak RSS {record['peak_rss_mb']:.0f} MB; "
          f"profile {record['profile']}, {record['device']})", file=sys.stderr)
    return 0


def _check_acquisition(args) -> None:
    """The acquisition options, checked before any file is read, each error naming its option."""
    b0_dir = [float(x) for x in args.b0_dir]
    if not all(math.isfinite(x) for x in b0_dir) or not any(b0_dir):
        raise QsmbenchError(f"--b0-dir {' '.join(f'{x:g}' for x in b0_dir)}: the B0 direction must be three finite "
                            "numbers, not all zero (array coordinates, e.g. 0 0 1)")
    if args.b0 is not None and not (math.isfinite(args.b0) and args.b0 > 0):
        raise QsmbenchError(f"--b0 {args.b0:g}: the field strength must be a positive number of tesla (e.g. 3)")
    if args.te is not None and not (math.isfinite(args.te) and args.te > 0):
        raise QsmbenchError(f"--te {args.te:g}: the echo time must be a positive number of seconds (e.g. 0.025)")


def cmd_evaluate(args) -> int:
    from .io import check_same_grid, read_nifti  # noqa: PLC0415
    from .metrics import evaluate  # noqa: PLC0415

    recon, aff_r, zooms = read_nifti(args.recon, role="reconstruction")
    truth, aff_t, _ = read_nifti(args.truth, role="reference")
    mask, aff_m, _ = read_nifti(args.mask, role="mask", kind="binary")
    check_same_grid(args.recon, recon.shape, aff_r, args.truth, truth.shape, aff_t)
    check_same_grid(args.recon, recon.shape, aff_r, args.mask, mask.shape, aff_m)
    labels = None
    if args.labels:
        labels, aff_l, _ = read_nifti(args.labels, role="labels", kind="labels")
        check_same_grid(args.recon, recon.shape, aff_r, args.labels, labels.shape, aff_l)
    extras = {"label_scheme": args.label_scheme} if args.label_scheme else {}
    results = evaluate(recon, truth, mask, labels=labels, voxel_size_mm=zooms, extras=extras,
                       names={"recon": f"reconstruction {args.recon}", "truth": f"reference {args.truth}",
                              "mask": f"mask {args.mask}", "labels": f"labels {args.labels}"})
    if args.json:
        print(json.dumps({"recon": str(args.recon), "truth": str(args.truth),
                          "metrics": {r.metric: r.as_dict() for r in results}}, indent=2))
        return 0
    width = max(len(r.metric) for r in results)
    for r in results:
        if r.status == "ok":
            print(f"{r.metric:<{width}}  {r.value:12.5g} {r.unit:<3}  ({r.better} is better)")
        else:
            print(f"{r.metric:<{width}}  {'n/a':>12}      ({r.reason})")
    return 0


def cmd_fetch(args) -> int:
    from .datasets import fetch, format_plan, plan_fetch  # noqa: PLC0415

    if args.dry_run:
        print(format_plan(*plan_fetch(args.dataset, cache=args.cache, mirror=args.mirror)))
        return 0
    result = fetch(args.dataset, cache=args.cache, mirror=args.mirror)
    print(f"{result.manifest.name}: {len(result.files)} file(s) verified"
          + (f" in the cache {result.cache}" if result.cache else ""))
    for key, path in sorted(result.files.items()):
        print(f"  {key:<20}  {path}")
    return 0


def cmd_provenance(args) -> int:
    from .provenance import report  # noqa: PLC0415

    text, reproducible = report(args.results_dir, configfile=args.configfile)
    print(text)
    return 1 if args.check and not reproducible else 0


def cmd_rescore(args) -> int:
    from .results import rescore  # noqa: PLC0415

    root = Path(args.results_dir)
    if (root / "results" / "recon").is_dir():  # the workflow's directory
        root = root / "results"
    written = rescore(root)
    print(f"re-scored {len(written)} reconstruction(s) in {root}; the next `snakemake` re-aggregates the table "
          "and redraws the report")
    return 0


def cmd_check_method(args) -> int:
    from .contract import run_contract  # noqa: PLC0415
    from .registry import classes_in_module, import_method_file  # noqa: PLC0415

    path = Path(args.file)
    if not path.exists():
        raise QsmbenchError(f"method file not found: {path}")
    if path.suffix in (".yaml", ".yml"):
        return _check_spec(path)
    try:
        module = import_method_file(path)  # errors (syntax, import, duplicates) name the file and line
    except ImportError as exc:
        raise QsmbenchError(f"method file {path} cannot be imported: {exc} (a missing dependency? install it, "
                            "or list it in the class's requirements)") from None
    classes = classes_in_module(module)
    if not classes:
        raise QsmbenchError(f"{path} defines no subclass of qsmbench.method.Method")
    failed = 0
    for cls in classes:
        print(f"{cls.__name__} ({cls.name or '?'}) from {path}")
        for check, ok, msg in run_contract(cls):
            print(f"  {'PASS' if ok else 'FAIL'}  {check}{': ' + msg if msg else ''}")
            failed += not ok
    print(f"{'all checks passed' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0


def _check_spec(path: Path) -> int:
    """check-method on a YAML method spec: the same contract for a command plugin; for imported
    maps (no program to test) the spec is validated and the maps found are counted."""
    from .contract import run_contract  # noqa: PLC0415
    from .plugins import class_from_spec, is_imported, unavailable_reason  # noqa: PLC0415

    cls = class_from_spec(path)  # errors name the file and the key
    print(f"{cls.__name__} ({cls.name}) from {path}")
    if is_imported(cls):
        pattern = str(cls.base_dir / cls.maps)
        found = sorted(Path(p) for p in _glob_pattern(pattern))
        print(f"  PASS  spec: imported maps {pattern}, unit {cls.output_unit}; {len(found)} map(s) found")
        print("  (the contract tests reconstruct a test volume; they do not apply to imported maps)")
        return 0
    reason = unavailable_reason(cls)
    if reason:
        raise QsmbenchError(f"{path}: the method cannot run here: {reason}")
    failed = 0
    for check, ok, msg in run_contract(cls):
        print(f"  {'PASS' if ok else 'FAIL'}  {check}{': ' + msg if msg else ''}")
        failed += not ok
    print(f"{'all checks passed' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0


def _glob_pattern(pattern: str) -> list[str]:
    import glob  # noqa: PLC0415
    import re  # noqa: PLC0415

    return glob.glob(re.sub(r"\{(dataset|perturbation|run)\}", "*", pattern.replace("{{", "{").replace("}}", "}")))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qsmbench", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"qsmbench {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error (for bug reports)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    methods_dir = {"action": "append", "metavar": "DIR",
                   "help": "extra folder of method plugin files (repeatable)"}

    s = sub.add_parser("list-methods", help="list registered reconstruction methods")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--methods-dir", **methods_dir)
    s.set_defaults(func=cmd_list_methods)

    s = sub.add_parser("phantom", help="write the embedded numerical head phantom")
    s.add_argument("outdir")
    s.add_argument("--model", choices=["mni", "analytic", "brainweb"], default="mni",
                   help="mni: real anatomy from the MNI ICBM152 template (default); analytic: ellipsoids (fast); "
                        "brainweb: a BrainWeb anatomical model (downloaded on first use; needs --subject)")
    s.add_argument("--subject", type=int, default=None, help="BrainWeb subject number (--model brainweb), e.g. 4")
    s.add_argument("--shape", type=int, nargs=3, default=[80, 96, 80], metavar=("X", "Y", "Z"))
    s.add_argument("--voxel-size", type=float, nargs=3, default=[2.0, 2.0, 2.0],
                   metavar=("DX", "DY", "DZ"), help="mm")
    s.add_argument("--seed", type=int, default=0,
                   help="the subject; benchmark data use test seeds 0..999999 (qsmbench.seeds)")
    s.add_argument("--b0-dir", type=float, nargs=3, default=[0.0, 0.0, 1.0], metavar=("X", "Y", "Z"))
    s.add_argument("--calcification", action="store_true", help="add a calcification (label 16)")
    s.set_defaults(func=cmd_phantom)

    s = sub.add_parser("reconstruct", help="run one method on a local field (ppm)")
    s.add_argument("method")
    s.add_argument("--field", required=True, help="local field NIfTI, ppm")
    s.add_argument("--mask", required=True)
    s.add_argument("--out", required=True, help="output chi NIfTI (ppm)")
    s.add_argument("--magnitude")
    s.add_argument("--b0-dir", type=float, nargs=3, default=[0.0, 0.0, 1.0], metavar=("X", "Y", "Z"),
                   help="B0 direction in array coordinates (default: third axis)")
    s.add_argument("--b0", type=float, default=None, help="field strength, T (default 3)")
    s.add_argument("--te", type=float, default=None, help="echo time, s (default 0.025)")
    s.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter (repeatable)")
    s.add_argument("--profile", default="auto",
                   help="method profile: auto (default, as in the workflow: paper on a CUDA GPU, quick on the CPU), "
                        "quick, paper or another the method defines")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--device", default="auto", type=_device,
                   help="auto (default: CUDA when available), cpu, cuda or cuda:N")
    s.add_argument("--run-json", default=None, help="also write the run record (timing, memory) here")
    s.add_argument("--methods-dir", **methods_dir)
    s.set_defaults(func=cmd_reconstruct)

    s = sub.add_parser("evaluate", help="score a reconstruction against a reference")
    s.add_argument("recon")
    s.add_argument("truth")
    s.add_argument("--mask", required=True)
    s.add_argument("--labels")
    s.add_argument("--label-scheme", choices=["rc2", "qsm2016"], default=None,
                   help="numbering of --labels (default rc2)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("fetch", help="download and verify a dataset into the data cache")
    s.add_argument("dataset", help="data manifest name (see data_manifests/) or path to a manifest YAML")
    s.add_argument("--dry-run", action="store_true",
                   help="print what would be downloaded, where to and how big; download nothing")
    s.add_argument("--mirror", default=None,
                   help="base URL serving the files under their cache paths (default: $QSMBENCH_MIRROR)")
    s.add_argument("--cache", default=None, help="data cache folder (default: $QSMBENCH_DATA or the per-user cache)")
    s.set_defaults(func=cmd_fetch)

    s = sub.add_parser("provenance", help="what produced a results folder; would this checkout reproduce it?")
    s.add_argument("results_dir", metavar="RESULTS_DIR", help="a results folder (results/ or the workflow's directory)")
    s.add_argument("--configfile", help="compare the results' config hash with this configuration's")
    s.add_argument("--check", action="store_true", help="exit with status 1 when this checkout would not reproduce it")
    s.set_defaults(func=cmd_provenance)

    s = sub.add_parser("rescore", help="score every reconstruction of a results folder again (no method runs)")
    s.add_argument("results_dir", metavar="RESULTS_DIR", help="a results folder (results/ or the workflow's directory)")
    s.set_defaults(func=cmd_rescore)

    s = sub.add_parser("check-method", help="run the method contract tests on a plugin file (.py, or a .yaml spec)")
    s.add_argument("file")
    s.set_defaults(func=cmd_check_method)
    return p


def _device(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", force=True)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written under the output's final name", file=sys.stderr)
        return 130
    except Exception as exc:  # every error a user can cause: one paragraph, no traceback
        if args.debug:
            traceback.print_exc()
        print(f"error: {_describe(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, QsmbenchError | ValueError | OSError) else 1


def _describe(exc: BaseException) -> str:
    """One paragraph: our own errors are sentences already; others get their type and a hint."""
    if isinstance(exc, QsmbenchError):
        return " ".join(str(exc).split("\n")).strip()
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"cannot read or write {exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, ValueError | OSError):
        return f"{exc}"
    return (f"{type(exc).__name__}: {exc} -- this is a bug in qsmbench or in a method plugin; run again with "
            "--debug for the traceback and report it")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
