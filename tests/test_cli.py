"""The qsmbench command line: each subcommand, JSON output, and clean errors on bad input."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from qsmbench.cli import main
from qsmbench.io import write_nifti


@pytest.fixture
def files(tmp_path, small_volume):
    v = small_volume
    paths = {
        "field": write_nifti(tmp_path / "field.nii.gz", v.field_ppm, v.affine),
        "mask": write_nifti(tmp_path / "mask.nii.gz", v.mask, v.affine),
        "truth": write_nifti(tmp_path / "chi.nii.gz", v.references["chi"], v.affine),
    }
    return paths


def test_list_methods(capsys):
    assert main(["list-methods"]) == 0
    out = capsys.readouterr().out
    assert "tkd" in out and "cfl2" in out and "available" in out
    assert main(["list-methods", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = {m["name"]: m for m in data["methods"]}
    assert names["tkd"]["parameters"]["variant"] == "official2016"
    assert names["cfl2"]["references"]


def test_reconstruct_then_evaluate(files, tmp_path, capsys):
    out = tmp_path / "out" / "chi.nii.gz"
    rc = main(["reconstruct", "tkd", "--field", str(files["field"]), "--mask", str(files["mask"]),
               "--out", str(out), "--param", "variant=shmueli", "--run-json", str(tmp_path / "run.json")])
    assert rc == 0 and out.exists()
    img = nib.load(str(out))
    assert img.shape == (24, 24, 20)
    np.testing.assert_allclose(img.header.get_zooms(), (1.0, 1.0, 1.2))
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["parameters"]["variant"] == "shmueli" and run["status"] == "ok"
    capsys.readouterr()
    assert main(["evaluate", str(out), str(files["truth"]), "--mask", str(files["mask"]), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert metrics["nrmse"]["status"] == "ok" and 0 < metrics["nrmse"]["value"] < 100
    assert metrics["pearson"]["value"] > 0.5
    assert main(["evaluate", str(out), str(files["truth"]), "--mask", str(files["mask"])]) == 0
    assert "rmse" in capsys.readouterr().out


def test_reconstruct_rejects_bad_input_without_output(tmp_path, files, capsys):
    out = tmp_path / "never.nii.gz"
    field4d = tmp_path / "f4.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), str(field4d))
    cases = [
        (["--field", str(field4d), "--mask", str(files["mask"])], "must be 3-D"),
        (["--field", str(files["field"]), "--mask", str(files["truth"].parent / "missing.nii.gz")], "not found"),
    ]
    for args, message in cases:
        assert main(["reconstruct", "tkd", *args, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
    assert main(["reconstruct", "nosuch", "--field", str(files["field"]), "--mask", str(files["mask"]),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nosuch'" in err and "tkd" in err
    assert main(["reconstruct", "tkd", "--field", str(files["field"]), "--mask", str(files["mask"]),
                 "--out", str(out), "--param", "nonsense=1"]) == 2
    assert "no parameter 'nonsense'" in capsys.readouterr().err
    assert not out.exists()


def test_evaluate_shape_mismatch(tmp_path, files, capsys):
    other = write_nifti(tmp_path / "small.nii.gz", np.zeros((4, 4, 4)), np.eye(4))
    assert main(["evaluate", str(other), str(files["truth"]), "--mask", str(files["mask"])]) == 2
    assert "shape" in capsys.readouterr().err


GOOD_PLUGIN = '''
from qsmbench.method import Method
from qsmbench.physics import dipole_kernel, kspace_filter
import numpy as np

class Scaled(Method):
    """Thresholded inverse (test plugin). Reference: none."""
    name = "scaled"
    parameters = {"t": 0.2}
    references = ["doi:10.0000/none"]

    def reconstruct(self, vol):
        def k(shape):
            d = dipole_kernel(shape, vol.voxel_size_mm, vol.b0_dir, d0=0.0, rfft=True)
            return np.where(np.abs(d) > self.params["t"], 1 / np.where(d == 0, 1, d), 0)
        return kspace_filter(vol.field_ppm, k) * vol.mask
'''

BAD_PLUGIN = '''
from qsmbench.method import Method

class Bad(Method):
    """Ignores the mask and returns the field."""
    name = "bad"
    references = ["none"]

    def reconstruct(self, vol):
        return vol.field_ppm + 1
'''


def test_check_method(tmp_path, capsys):
    good = tmp_path / "good.py"
    good.write_text(GOOD_PLUGIN)
    assert main(["check-method", str(good)]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out and "PASS" in out
    bad = tmp_path / "bad.py"
    bad.write_text(BAD_PLUGIN)
    assert main(["check-method", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  check_output_shape_finite_masked" in out


def test_phantom_command(tmp_path):
    assert main(["phantom", str(tmp_path / "ph"), "--shape", "24", "24", "24",
                 "--voxel-size", "4", "4", "4", "--seed", "3"]) == 0
    meta = json.loads((tmp_path / "ph" / "meta.json").read_text())
    assert meta["seed"] == 3 and meta["units"]["field"] == "ppm"
    assert meta["model"] == "mni" and "edge_overlap" in meta  # the realistic phantom is the default
    assert nib.load(str(tmp_path / "ph" / "field_ppm.nii.gz")).shape == (24, 24, 24)
    assert main(["phantom", str(tmp_path / "an"), "--model", "analytic", "--shape", "16", "16", "16"]) == 0
    assert json.loads((tmp_path / "an" / "meta.json").read_text())["model"] == "analytic"
    assert main(["phantom", str(tmp_path / "bw"), "--model", "mni", "--subject", "4"]) == 2  # subject: BrainWeb only


def test_console_script_reports_errors_on_stderr(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "qsmbench.cli", "evaluate", str(tmp_path / "a.nii.gz"),
                           str(tmp_path / "b.nii.gz"), "--mask", str(tmp_path / "m.nii.gz")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: reconstruction file not found")
    assert "Traceback" not in proc.stderr


def test_reconstruct_without_profile_uses_auto_and_says_which(tmp_path, capsys, gpu_plugin_dir):
    """As in the workflow: no --profile is auto, i.e. quick on a CPU (paper only on a CUDA GPU)."""
    from qsmbench.cli import main
    from qsmbench.devices import cuda_devices

    main(["phantom", str(tmp_path / "ph"), "--model", "analytic", "--shape", "16", "16", "16"])
    args = ["reconstruct", "gpu_capable", "--field", str(tmp_path / "ph" / "field_ppm.nii.gz"),
            "--mask", str(tmp_path / "ph" / "mask.nii.gz"), "--methods-dir", str(gpu_plugin_dir),
            "--run-json", str(tmp_path / "run.json")]
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "chi.nii.gz")]) == 0
    err = capsys.readouterr().err
    record = json.loads((tmp_path / "run.json").read_text())
    if cuda_devices():
        assert "gpu_capable: profile paper (auto → paper: runs on cuda" in err
    else:
        assert "gpu_capable: profile quick (auto → quick: no CUDA device); device cpu" in err
        assert record["profile"] == "quick" and record["parameters"] == {"steps": 3}
    assert record["profile_requested"] == "auto"
    assert main([*args, "--out", str(tmp_path / "chi2.nii.gz"), "--profile", "paper", "--device", "cpu"]) == 0
    assert "gpu_capable: profile paper (requested); device cpu" in capsys.readouterr().err
    assert json.loads((tmp_path / "run.json").read_text())["parameters"] == {"steps": 300}
