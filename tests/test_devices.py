"""Devices and profiles: CUDA detection without torch, the start-up device check, profile: auto."""

import json
import os
import stat
import sys

import numpy as np
import pytest

from qsmbench import devices, runner
from qsmbench.errors import ConfigError
from qsmbench.method import Method
from qsmbench.volume import Volume


class CpuOnly(Method):
    name = "cpu_only"
    parameters = {"t": 0.2}
    references = ["none"]


class GpuNoPaper(Method):
    name = "gpu_no_paper"
    parameters = {"t": 0.2}
    profiles = {"quick": {"t": 0.5}}
    uses = {"gpu"}
    references = ["none"]


class GpuBoth(GpuNoPaper):
    name = "gpu_both"
    profiles = {"quick": {"t": 0.5}, "paper": {"t": 0.1}}


@pytest.mark.parametrize("cls,requested,device,requested_device,expected", [
    (GpuBoth, "auto", "cuda:0", "auto", ("paper", "auto → paper: runs on cuda:0")),
    (GpuBoth, "auto", "cpu", "auto", ("quick", "auto → quick: no CUDA device")),
    (GpuBoth, "auto", "cpu", "cpu", ("quick", "auto → quick: device cpu requested")),
    (GpuNoPaper, "auto", "cuda", "cuda", ("default", "auto → default: runs on cuda and gpu_no_paper defines no "
                                                    "paper profile")),
    (CpuOnly, "auto", "cpu", "cuda", ("default", "auto → default: cpu_only runs on the CPU only and cpu_only "
                                                 "defines no quick profile")),
    (GpuBoth, "paper", "cpu", "auto", ("paper", "requested")),
    (GpuBoth, None, "cpu", "auto", (None, "no profile requested: the method's defaults")),
])
def test_resolve_profile(cls, requested, device, requested_device, expected):
    assert devices.resolve_profile(cls, requested, device, requested_device=requested_device) == expected
    profile = expected[0]
    if profile is not None:  # every resolved profile is one the method accepts
        cls.resolve_parameters({}, profile=profile)


def test_check_device():
    devices.check_device("auto", devices=[])
    devices.check_device("cpu", devices=[])
    devices.check_device("cuda", devices=["NVIDIA H200"])
    devices.check_device("cuda:1", devices=["A", "B"])
    with pytest.raises(ConfigError, match=r"my.yaml: key 'device': 'cuda' asks for a CUDA GPU but this machine "
                                          r"has none .* use device: auto"):
        devices.check_device("cuda", source="my.yaml", devices=[])
    with pytest.raises(ConfigError, match=r"'cuda:2' asks for CUDA device 2 but this machine has 2: "
                                          r"cuda:0 \(A\), cuda:1 \(B\)"):
        devices.check_device("cuda:2", devices=["A", "B"])
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda or cuda:N"):
        devices.check_device("gpu0", devices=[])


def _fake_nvidia_smi(folder, lines):
    exe = folder / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + "".join(f"echo '{line}'\n" for line in lines))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


def test_cuda_devices_from_the_driver_without_torch(tmp_path, monkeypatch):
    """Under --use-conda the Snakemake process has no torch: the driver's nvidia-smi answers."""
    _fake_nvidia_smi(tmp_path, ["GPU 0: NVIDIA H200 (UUID: GPU-1234)", "GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-5)"])
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert devices.cuda_devices(use_torch=False) == ["NVIDIA H200", "NVIDIA A100-SXM4-80GB"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert devices.cuda_devices(use_torch=False) == ["NVIDIA A100-SXM4-80GB"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.cuda_devices(use_torch=False) == []


def test_cuda_devices_none_without_driver(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    monkeypatch.setattr(devices, "Path", lambda p: tmp_path / "no-such-proc")
    assert devices.cuda_devices(use_torch=False) == []


def _volume(shape=(12, 12, 10)):
    rng = np.random.default_rng(0)
    mask = np.zeros(shape, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    return Volume(name="v", field_ppm=rng.standard_normal(shape).astype(np.float32) * 0.01, mask=mask,
                  voxel_size_mm=(1.0, 1.0, 1.0))


@pytest.mark.skipif("torch" in sys.modules and sys.modules["torch"].cuda.is_available(), reason="has a CUDA device")
def test_run_records_the_profile_that_ran_and_why(gpu_plugin_dir):
    vol = _volume()
    res = runner.run_method("gpu_capable", vol, profile="auto", extra_dirs=[gpu_plugin_dir])
    rec = res.record
    assert res.status == "ok"
    assert (rec["profile"], rec["profile_requested"], rec["profile_reason"]) == \
        ("quick", "auto", "auto → quick: no CUDA device")
    assert rec["parameters"] == {"steps": 3} and rec["device"].startswith("cpu (")
    assert rec["device_requested"] == "auto"
    np.testing.assert_allclose(res.chi_ppm, 3 * vol.field_ppm * vol.mask, rtol=1e-6)
    rec = runner.run_method("gpu_capable", vol, profile="auto", device="cpu", extra_dirs=[gpu_plugin_dir]).record
    assert rec["profile_reason"] == "auto → quick: device cpu requested"
    rec = runner.run_method("gpu_capable", vol, profile="paper", extra_dirs=[gpu_plugin_dir]).record
    assert (rec["profile"], rec["profile_reason"], rec["parameters"]) == ("paper", "requested", {"steps": 300})
    json.dumps(rec)  # serialisable as run.json


def test_resolve_device_rejects_bad_and_missing_devices():
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
        runner.resolve_device("cuda:x")
    assert runner.resolve_device("cpu") == "cpu"
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        assert runner.resolve_device("auto") == "cpu"
        with pytest.raises(ValueError, match="no CUDA device"):
            runner.resolve_device("cuda:0")
