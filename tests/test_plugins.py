"""Methods in any language (qsmbench.plugins): command plugins and imported reconstructions."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from qsmbench import io, plugins, registry
from qsmbench.errors import MethodError
from qsmbench.physics import GAMMA_BAR_MHZ_PER_T, forward_field
from qsmbench.results import collect, evaluate_run
from qsmbench.runner import run_job, run_method
from qsmbench.volume import Volume, default_affine

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "command_plugin" / "tkd_numpy.yaml"

# A program that records what it was given and writes back the field it read, scaled to the
# declared output unit: ppb when its 2nd argument says so.
PROBE = '''
import json, sys
import nibabel as nib, numpy as np
record, out_unit, field, phase, mask, out = sys.argv[1:7]
img = nib.load(field)
f = np.asarray(img.dataobj, dtype=float)
np.savez(record + ".npz", field=f, phase=np.asarray(nib.load(phase).dataobj, dtype=float),
         mask=np.asarray(nib.load(mask).dataobj), zooms=img.header.get_zooms()[:3])
with open(record, "w") as fh:
    json.dump(sys.argv[1:], fh)
gamma_b0 = 42.57747892 * 3.0
chi = f / gamma_b0  # Hz -> ppm
nib.save(nib.Nifti1Image((chi * (1000.0 if out_unit == "ppb" else 1.0)).astype("float32"), img.affine), out)
'''


def small_volume(shape=(10, 12, 8), magnitude=True):
    rng = np.random.default_rng(0)
    mask = np.zeros(shape, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    chi = rng.normal(0, 0.05, shape) * mask
    field = forward_field(chi, (1.0, 1.0, 2.0), (0, 0, 1), d0=0.0)
    return Volume(field_ppm=field.astype(np.float32), mask=mask, voxel_size_mm=(1.0, 1.0, 2.0), b0_tesla=3.0,
                  te_s=0.02, magnitude=np.ones(shape, np.float32) if magnitude else None,
                  affine=default_affine((1.0, 1.0, 2.0)), references={"chi": chi.astype(np.float32)}, name="tiny")


def write_spec(folder: Path, spec: dict, fname: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (fname or f"{spec['name']}.yaml")
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    registry.clear_cache()
    return path


def script_spec(folder: Path, name: str, code: str, *, extra_args=(), **keys) -> Path:
    """A spec running ``code`` (a Python script in ``folder``) as: script FIELD MASK OUT *extra."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(code))
    spec = {"name": name, "references": ["test"],
            "command": ["{python}", f"{{spec_dir}}/{name}.py", "{field}", "{mask}", "{out}", *extra_args], **keys}
    return write_spec(folder, spec)


# --------------------------------------------------------------------------- units and placeholders
def test_unit_conversions_hand_computed():
    f = np.array([1.0, -0.5])
    hz_per_ppm = GAMMA_BAR_MHZ_PER_T * 3.0  # 127.73243676 Hz per ppm at 3 T
    np.testing.assert_allclose(plugins.field_in_unit(f, "hz", 3.0), [127.73243676, -63.86621838], rtol=1e-10)
    np.testing.assert_allclose(plugins.field_in_unit(f, "hz", 3.0), f * hz_per_ppm)
    np.testing.assert_allclose(plugins.field_in_unit(f, "ppb", 3.0), [1000.0, -500.0])
    np.testing.assert_array_equal(plugins.field_in_unit(f, "ppm", 7.0), f)
    np.testing.assert_allclose(plugins.chi_to_ppm(np.array([120.0]), "ppb"), [0.12])
    np.testing.assert_array_equal(plugins.chi_to_ppm(np.array([0.12]), "ppm"), [0.12])
    with pytest.raises(ValueError, match="unit"):
        plugins.field_in_unit(f, "rad", 3.0)


def test_placeholders_are_substituted_per_argument():
    values = {"field": "/a b/field.nii", "voxel_size": [1.0, 1.0, 1.2], "b0_tesla": 3.0, "params.lam": 1e-5,
              "params.flag": True, "params.n": 7, "params.s": "; rm -rf x"}
    argv = plugins.build_argv(["prog", "--in={field}", "{voxel_size}", "{b0_tesla}", "{params.lam}",
                               "{params.flag}", "{params.n}", "{params.s}", "{{literal}}",
                               ["--magnitude", "{magnitude}"]], values)
    assert argv == ["prog", "--in=/a b/field.nii", "1.0,1.0,1.2", "3.0", "1e-05", "true", "7", "; rm -rf x",
                    "{literal}"]
    assert plugins.build_argv(["p", ["--mag", "{magnitude}"]], {"magnitude": "/m.nii"}) == ["p", "--mag", "/m.nii"]
    with pytest.raises(ValueError, match="lone"):
        plugins.placeholders_in("oops {field")


@pytest.mark.parametrize("change,key,message", [
    ({"references": []}, "references", "should be non-empty"),
    ({"command": ["prog", "{fild}", "{out}"]}, "command.1", "unknown placeholder {fild}"),
    ({"command": ["prog", "{params.lam}", "{out}"]}, "command.1", "no parameter 'lam'"),
    ({"command": ["prog", "{field}"]}, "command", "names the output"),
    ({"units": {"field": "tesla"}}, "units.field", "is not one of"),
    ({"parameters": {"t": [1, 2]}}, "parameters.t", "is not of type"),
    ({"command": "prog {field} {out}"}, "command", "is not of type 'array'"),
    ({"type": "precomputed"}, "command", "not allowed for type precomputed"),
    ({"maps": "m/{dataset}.nii"}, "maps", "only for type precomputed"),
    ({"version_command": ["prog", "{field}"]}, "version_command.1", "not known before the run"),
    ({"conda": "missing_env.yaml"}, "conda", "not found"),
    ({"colour": "red"}, "(top level)", "Additional properties"),
])
def test_bad_spec_is_an_error_naming_the_file_and_key(tmp_path, change, key, message):
    spec = {"name": "bad", "references": ["x"], "command": ["prog", "{field}", "{out}"], **change}
    path = write_spec(tmp_path, spec)
    with pytest.raises(MethodError) as err:
        plugins.load_spec(path)
    assert str(path) in str(err.value) and f"key '{key}'" in str(err.value) and message in str(err.value)


def test_bad_spec_in_methods_dir_stops_list_methods_with_the_file_named(tmp_path):
    path = write_spec(tmp_path / "m", {"name": "bad", "references": ["x"], "command": ["p", "{nope}", "{out}"]})
    proc = subprocess.run([sys.executable, "-m", "qsmbench.cli", "list-methods", "--methods-dir", str(tmp_path / "m")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and str(path) in proc.stderr and "command.1" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- registry
def test_specs_register_like_methods_and_missing_programs_are_unavailable(tmp_path):
    folder = tmp_path / "m"
    write_spec(folder, {"name": "ghost", "references": ["x"], "command": ["no-such-program-qsmbench", "{out}"]})
    write_spec(folder, {"name": "env", "channels": ["conda-forge"], "dependencies": ["numpy"]}, "_env.yaml")
    write_spec(folder, {"name": "tool_env", "channels": ["conda-forge"], "dependencies": ["numpy"]}, "tool_env.yml")
    infos = {i.name: i for i in registry.method_infos([folder, EXAMPLE.parent])}
    assert infos["tkd_numpy"].available and infos["tkd_numpy"].cls.parameters == {"threshold": 0.15, "pad": 2.0}
    assert not infos["ghost"].available and "no-such-program-qsmbench" in infos["ghost"].reason
    assert "tool_env" not in infos and "env" not in infos  # conda environment files are not specs
    assert infos["precomputed"].available  # the built-in route for imports from the config
    proc = subprocess.run([sys.executable, "-m", "qsmbench.cli", "list-methods", "--methods-dir", str(folder)],
                          capture_output=True, text=True)
    assert "ghost" in proc.stdout and "not found on PATH" in proc.stdout


# --------------------------------------------------------------------------- command plugins, in process
def test_inputs_are_written_in_the_declared_units_and_the_output_read_in_its_unit(tmp_path):
    folder = tmp_path / "probe"
    (folder).mkdir()
    (folder / "probe.py").write_text(PROBE)
    record = tmp_path / "record.json"
    spec = {"name": "probe", "references": ["test"],
            "command": ["{python}", "{spec_dir}/probe.py", str(record), "ppb", "{field}", "{phase}", "{mask}",
                        "{out}"],
            "units": {"field": "hz", "output": "ppb"},
            "version_command": ["{python}", "-c", "print('probe 0.1')"]}
    path = write_spec(folder, spec)
    cls = plugins.class_from_spec(path)
    vol = small_volume()
    res = run_method(cls(seed=0), vol)
    assert res.status == "ok", res.record["error"]
    saved = np.load(str(record) + ".npz")
    hz_per_ppm = GAMMA_BAR_MHZ_PER_T * 3.0
    np.testing.assert_allclose(saved["field"], vol.field_ppm.astype(np.float32) * hz_per_ppm, rtol=1e-5, atol=1e-5)
    # phase = 2 pi gamma_bar B0 TE f_ppm 1e-6 (rad), computed independently here
    np.testing.assert_allclose(saved["phase"], 2 * np.pi * hz_per_ppm * 0.02 * vol.field_ppm, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(saved["mask"], vol.mask.astype(np.uint8))
    np.testing.assert_allclose(saved["zooms"], [1.0, 1.0, 2.0])
    # the program wrote the field back in ppb; qsmbench reads ppb -> ppm and masks it
    np.testing.assert_allclose(res.chi_ppm, vol.field_ppm * vol.mask, rtol=1e-4, atol=1e-6)
    cmd = res.record["command"]
    assert cmd["argv"][2] == str(record) and cmd["units"] == {"field": "hz", "phase": "rad", "output": "ppb"}
    assert cmd["version"]["output"] == "probe 0.1" and cmd["exit_code"] == 0 and cmd["container"] is None
    assert res.record["cpu_s"] >= cmd["cpu_s"] > 0


def test_placeholders_are_quoted_safely(tmp_path):
    """A path with spaces and a parameter value like '; rm -rf x' reach the program as one literal argument."""
    folder = tmp_path / "my plugins; echo"
    canary = tmp_path / "x"
    canary.write_text("still here")
    code = '''
        import json, shutil, sys
        field, mask, out, value, record = sys.argv[1:6]
        json.dump(sys.argv[1:], open(record, "w"))
        shutil.copy(field, out)
    '''
    path = script_spec(folder, "echo_args", code, extra_args=["{params.value}", str(tmp_path / "argv.json")],
                       parameters={"value": "harmless"})
    cls = plugins.class_from_spec(path)
    res = run_method(cls(seed=0, value="; rm -rf x"), small_volume())
    assert res.status == "ok", res.record["error"]
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[3] == "; rm -rf x" and len(argv) == 5
    assert res.record["command"]["argv"][1] == str(folder.resolve() / "echo_args.py")
    assert canary.read_text() == "still here"
    # $(...) and backticks are not expanded either
    res = run_method(cls(seed=0, value="$(touch pwned) `touch pwned2`"), small_volume())
    assert json.loads((tmp_path / "argv.json").read_text())[3] == "$(touch pwned) `touch pwned2`"


def test_magnitude_in_an_optional_group_is_left_out_without_magnitude(tmp_path):
    code = '''
        import json, shutil, sys
        json.dump(sys.argv[1:], open(sys.argv[4], "w"))
        shutil.copy(sys.argv[1], sys.argv[3])
    '''
    path = script_spec(tmp_path / "m", "maybe_mag", code, extra_args=[str(tmp_path / "a.json"),
                                                                      ["--magnitude", "{magnitude}"]])
    cls = plugins.class_from_spec(path)
    assert "magnitude" in cls.uses
    assert run_method(cls(seed=0), small_volume(magnitude=True)).status == "ok"
    assert json.loads((tmp_path / "a.json").read_text())[-2] == "--magnitude"
    assert run_method(cls(seed=0), small_volume(magnitude=False)).status == "ok"
    assert json.loads((tmp_path / "a.json").read_text())[-1] == str(tmp_path / "a.json")


FAILURES = {
    "exits_nonzero": ('import sys\nprint("cannot invert: singular kernel", file=sys.stderr)\nsys.exit(3)\n',
                      "failed", ["exited with status 3", "cannot invert: singular kernel"]),
    "writes_nothing": ('import sys\nprint("done, I think", file=sys.stderr)\n',
                       "failed", ["wrote no output", "done, I think"]),
    "wrong_shape": ('import sys, nibabel as nib, numpy as np\n'
                    'nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), "float32"), np.eye(4)), sys.argv[3])\n',
                    "failed", ["has shape (4, 4, 4), expected (10, 12, 8)"]),
    "nan_inside": ('import sys, nibabel as nib, numpy as np\nimg = nib.load(sys.argv[1])\n'
                   'nib.save(nib.Nifti1Image(np.full(img.shape, np.nan, "float32"), img.affine), sys.argv[3])\n',
                   "failed", ["non-finite values (NaN/inf) inside the mask"]),
    "hangs": ('import sys, time\nprint("entering the solver loop", file=sys.stderr, flush=True)\ntime.sleep(600)\n',
              "timeout", ["entering the solver loop"]),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failing_programs_are_reported_with_their_output_in_a_workflow_job(tmp_path, case):
    code, status, texts = FAILURES[case]
    folder = tmp_path / "m"
    script_spec(folder, case, code)
    vol_dir = io.save_volume(small_volume(), tmp_path / "vol")
    out = tmp_path / "recon" / "run.json"
    record = run_job(vol_dir, out, run_id=case, method=case, dataset="tiny", extra_dirs=[folder],
                     timeout_s=20.0 if case == "hangs" else None, log_path=tmp_path / "job.log")
    assert record["status"] == status
    written = json.loads(out.read_text())
    assert written["status"] == status and not (out.parent / "chi_ppm.nii.gz").exists()
    for text in texts:
        assert text in (written["error"] or "") + (written["log_tail"] or "")
        assert text in (tmp_path / "job.log").read_text() or case == "wrong_shape"
    if case != "hangs":
        assert texts[0] in written["error"] and written["command"]["argv"][0] == sys.executable
    else:
        assert "entering the solver loop" in written["log_tail"]
    assert not list(out.parent.glob(".qsmbench-run-*"))  # scratch removed


def test_a_hang_in_process_is_stopped_by_the_specs_timeout(tmp_path):
    path = script_spec(tmp_path / "m", "sleepy", 'import time\nprint("zz", flush=True)\ntime.sleep(600)\n',
                       timeout_s=5)
    res = run_method(plugins.class_from_spec(path)(seed=0), small_volume())
    assert res.status == "timeout" and "wall-clock limit of 5 s" in res.record["error"] and "zz" in res.record["error"]


def test_container_image_and_digest_are_recorded():
    pinned = plugins.container_record("docker://ghcr.io/org/qsm@sha256:" + "a" * 64)
    assert pinned["digest"] == "sha256:" + "a" * 64 and pinned["image"].startswith("docker://")
    loose = plugins.container_record("docker://ghcr.io/org/qsm:1.0")
    assert loose["digest"] is None and "@sha256" in loose["digest_note"]


def test_check_method_runs_the_contract_on_a_yaml_spec():
    proc = subprocess.run([sys.executable, "-m", "qsmbench.cli", "check-method", str(EXAMPLE)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS  check_recovers_spheres" in proc.stdout and "all checks passed" in proc.stdout


def test_check_method_fails_a_spec_in_the_wrong_units(tmp_path):
    spec = plugins.load_spec(EXAMPLE)
    data = yaml.safe_load(EXAMPLE.read_text())
    data["units"] = {"field": "hz", "output": "ppb"}  # the program writes ppm: 1000x too small when read as ppb
    data["command"] = [c.replace("{spec_dir}", str(Path(spec["_path"]).parent)) for c in data["command"]]
    data.pop("version_command")
    path = write_spec(tmp_path, data)
    proc = subprocess.run([sys.executable, "-m", "qsmbench.cli", "check-method", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "FAIL  check_recovers_spheres" in proc.stdout and "units" in proc.stdout


# --------------------------------------------------------------------------- imported reconstructions
def test_imported_maps_are_scored_labelled_and_missing_ones_not_run(tmp_path):
    vol = small_volume()
    vol_dir = io.save_volume(vol, tmp_path / "data" / "tiny")
    maps = tmp_path / "imports"
    (maps / "tiny").mkdir(parents=True)
    chi_ppb = vol.references["chi"] * 1000.0
    nib.save(nib.Nifti1Image(np.where(vol.mask, chi_ppb, np.nan).astype("float32"), vol.affine),
             str(maps / "tiny" / "none.nii.gz"))
    write_spec(maps, {"name": "vendor", "type": "precomputed", "references": ["Vendor QSM 2.1, scanner console"],
                      "maps": "{dataset}/{perturbation}.nii.gz", "units": {"output": "ppb"}})
    rec = run_job(vol_dir, tmp_path / "recon/tiny/none/vendor/run.json", run_id="vendor", method="vendor",
                  dataset="tiny", perturbation="none", extra_dirs=[maps])
    assert rec["status"] == "ok" and rec["device"] == "imported" and rec["wall_s"] is None
    assert rec["imported"]["unit"] == "ppb" and rec["isolation"] is None
    chi = nib.load(str(tmp_path / "recon/tiny/none/vendor/chi_ppm.nii.gz")).get_fdata()
    np.testing.assert_allclose(chi, vol.references["chi"] * vol.mask, atol=1e-6)  # ppb -> ppm, NaN outside zeroed
    scored = evaluate_run(tmp_path / "recon/tiny/none/vendor/run.json", vol_dir, tmp_path / "m/none.json")
    rmse = {m["metric"]: m for m in scored["references"]["chi"]}["rmse"]
    assert rmse["status"] == "ok" and rmse["value"] < 1e-3
    missing = run_job(vol_dir, tmp_path / "recon/tiny/noise/vendor/run.json", run_id="vendor", method="vendor",
                      dataset="tiny", perturbation="noise-snr20-seed1", extra_dirs=[maps])
    assert missing["status"] == "not_run"
    assert str(maps.resolve() / "tiny" / "noise-snr20-seed1.nii.gz") in missing["error"]
    evaluate_run(tmp_path / "recon/tiny/noise/vendor/run.json", vol_dir, tmp_path / "m/noise.json")
    table = collect([tmp_path / "m/none.json", tmp_path / "m/noise.json"])
    assert set(table.run_status) == {"ok", "not_run"}

    from qsmbench.report import render_report

    html = render_report(table, tmp_path / "report.html").read_text()
    assert "vendor (imported)" in html and "imported: not timed" in html and "not_run" in html


def test_imported_maps_from_a_config_entry_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    vol = small_volume()
    vol_dir = io.save_volume(vol, tmp_path / "data")
    (tmp_path / "maps").mkdir()
    nib.save(nib.Nifti1Image(vol.references["chi"], vol.affine), str(tmp_path / "maps" / "tiny_none.nii"))
    monkeypatch.chdir(tmp_path)
    params = {"maps": "maps/{dataset}_{perturbation}.nii", "unit": "ppm"}
    rec = run_job(vol_dir, tmp_path / "r/run.json", run_id="tool", method="precomputed", params=params,
                  dataset="tiny")
    assert rec["status"] == "ok" and rec["profile"] == "imported"
    wrong = run_job(vol_dir, tmp_path / "r2/run.json", run_id="tool", method="precomputed",
                    params={**params, "maps": "maps/{dataset}.nii"}, dataset="tiny")
    assert wrong["status"] == "not_run" and "maps/tiny.nii does not exist" in wrong["error"]


# --------------------------------------------------------------------------- the workflow
@pytest.mark.slow
def test_command_plugin_and_import_run_in_the_tiny_workflow_and_appear_in_the_report(tmp_path):
    import pandas as pd

    snakemake = str(Path(sys.executable).parent / "snakemake")
    work = tmp_path / "run dir"  # a space in every path the plugin receives
    work.mkdir()
    cfg = {"datasets": {"tiny": {"type": "phantom", "model": "analytic", "shape": [24, 24, 20],
                                 "voxel_size_mm": [5.0, 5.0, 5.0], "seed": 1}},
           "perturbations": ["none", {"noise": {"snr": [20], "seeds": 1}}],
           "methods": {"tkd": {}, "tkd_numpy": {}, "tkd_numpy_t2": {"method": "tkd_numpy", "params": {"threshold": 0.2},
                                                                    "perturbations": ["none"]},
                       "vendor": {"method": "precomputed",
                                  "params": {"maps": "maps/{dataset}_{perturbation}.nii.gz", "unit": "ppm"}}},
           "method_dirs": [str(EXAMPLE.parent)]}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    base = [snakemake, "-s", str(ROOT / "Snakefile"), "--directory", str(work), "--configfile",
            str(work / "config.yaml"), "--cores", "2"]
    # the imported map of the unperturbed volume only: the reference itself, in ppm
    data = subprocess.run([*base, "results/data/tiny/meta.json"], capture_output=True, text=True, timeout=600)
    assert data.returncode == 0, data.stderr[-3000:]
    (work / "maps").mkdir()
    ref = nib.load(str(work / "results/data/tiny/reference-chi.nii.gz"))
    nib.save(ref, str(work / "maps" / "tiny_none.nii.gz"))
    proc = subprocess.run(base, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_parquet(work / "results" / "metrics.parquet")
    html = (work / "results" / "report" / "index.html").read_text()
    ok = table[(table.status == "ok") & (table.metric == "nrmse")].set_index(["method", "perturbation"]).value
    assert ok[("tkd_numpy", "none")] < 100 and ok[("tkd_numpy_t2", "none")] != ok[("tkd_numpy", "none")]
    assert ok[("vendor", "none")] < 1e-3  # the reference itself
    assert "tkd_numpy" in html and "vendor (imported)" in html
    run = json.loads((work / "results/recon/tiny/none/tkd_numpy/run.json").read_text())
    assert run["status"] == "ok" and run["command"]["version"]["output"].startswith("tkd_numpy 1.0")
    assert run["command"]["argv"][-3] == "0.15" and " " in run["command"]["argv"][3]  # {field}, in 'run dir'
    assert "tkd_numpy: wrote" in (work / "logs/recon/tiny/none/tkd_numpy.log").read_text()
    missing = json.loads((work / "results/recon/tiny/noise-snr20-seed1/vendor/run.json").read_text())
    assert missing["status"] == "not_run" and "tiny_noise-snr20-seed1.nii.gz does not exist" in missing["error"]
    again = subprocess.run([*base, "-n"], capture_output=True, text=True, timeout=600)
    assert "Nothing to be done" in again.stdout + again.stderr


# --------------------------------------------------------------------------- the examples
@pytest.mark.parametrize("spec", sorted((ROOT / "examples").glob("*/*.yaml")), ids=lambda p: p.name)
def test_every_example_spec_is_valid(spec):
    loaded = plugins.load_spec(spec)
    cls = plugins.class_from_spec(spec)
    assert cls.name == loaded["name"] and cls.references and (cls.__doc__ or "").strip()
    if spec.stem == "container_tkd":
        assert plugins.unavailable_reason(cls) == ""  # the program is in the image: not checked on the host
        assert loaded["container"].startswith("docker://")
    if spec.stem == "matlab_tkd":
        assert "{" not in loaded["command"][2]  # nothing substituted into MATLAB code
        assert loaded["env"]["QSMBENCH_INPUTS"] == "{inputs_json}"


def test_container_dockerfile_pins_match_the_package():
    import re

    pins = dict(re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', (ROOT / "pyproject.toml").read_text()))
    docker = (ROOT / "examples" / "container" / "Dockerfile").read_text()
    used = dict(re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s\\]*)", docker))
    assert used and all(pins[name] == version for name, version in used.items())


@pytest.mark.slow
def test_use_conda_gives_a_command_plugin_its_own_environment(tmp_path):
    """`snakemake -n --use-conda` plans the spec's conda env for its run, core.yaml for the others
    (conda cannot run here: the stand-in of tests/test_packaging.py answers its start-up questions)."""
    from test_packaging import _with_fake_conda

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "envtool_env.yaml").write_text("channels: [conda-forge]\ndependencies: [python=3.12, numpy]\n")
    write_spec(folder, {"name": "envtool", "references": ["x"], "command": ["envtool", "{field}", "{out}"],
                        "conda": "envtool_env.yaml"})
    cfg = {"datasets": {"ph": {"type": "phantom", "model": "analytic", "shape": [24, 24, 20],
                               "voxel_size_mm": [5.0, 5.0, 5.0]}},
           "perturbations": ["none"], "methods": {"tkd": {}, "envtool": {}}, "method_dirs": [str(folder)]}
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-s", str(ROOT / "Snakefile"),
                           "--directory", str(tmp_path / "run"), "--configfile", str(tmp_path / "my.yaml"),
                           "--cores", "1", "-n", "--use-conda"], capture_output=True, text=True, timeout=300,
                          env=_with_fake_conda(tmp_path))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    import re

    assert sorted(Path(p).name for p in re.findall(r"Conda environment (\S+) will be created", out)) == \
        ["core.yaml", "envtool_env.yaml"]


def test_env_values_are_substituted_and_can_carry_the_inputs_file(tmp_path):
    code = '''
        import json, os, shutil
        inputs = json.load(open(os.environ["QSMBENCH_INPUTS"]))
        assert os.environ["MY_DIR"].endswith("m") and inputs["units"]["field"] == "ppm"
        shutil.copy(inputs["field"], inputs["out"])
    '''
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "via_env.py").write_text(textwrap.dedent(code))
    path = write_spec(folder, {"name": "via_env", "references": ["x"], "command": ["{python}", "{spec_dir}/via_env.py"],
                               "env": {"QSMBENCH_INPUTS": "{inputs_json}", "MY_DIR": "{spec_dir}"},
                               "version_command": ["{python}", "-c", "import os; print(os.environ['MY_DIR'])"]})
    vol = small_volume()
    res = run_method(plugins.class_from_spec(path)(seed=0), vol)
    assert res.status == "ok", res.record["error"]
    np.testing.assert_allclose(res.chi_ppm, vol.field_ppm * vol.mask, rtol=1e-6)
    assert res.record["command"]["version"]["output"] == str(folder.resolve())
