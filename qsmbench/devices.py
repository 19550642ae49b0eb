"""Devices and profiles: which device a run uses, and which parameter profile ``auto`` means there.

* :func:`cuda_devices` -- the CUDA devices of this machine, found through torch when it can be
  imported and otherwise through the NVIDIA driver (``nvidia-smi -L``, ``/proc/driver/nvidia``),
  so that the workflow's start-up check works in a Snakemake environment without torch (under
  ``--use-conda`` torch lives only in the deep-learning environment of the jobs).
* :func:`check_device` -- the start-up check of the config's ``device``: ``auto`` and ``cpu``
  always pass; ``cuda``/``cuda:N`` where no such device exists is a :class:`ConfigError` naming
  the key, before any job runs.
* :func:`resolve_profile` -- ``profile: auto`` (the default of the config key and of
  ``qsmbench reconstruct --profile``): the **paper** profile for a run on a CUDA device, the
  **quick** profile for a run on the CPU -- every run of a CPU-only method, and a GPU-capable
  method where no CUDA device is available or ``device: cpu`` was asked for.  A method that
  defines no profile of that name runs with its defaults (recorded as ``default``).
  The runner records the profile that ran and the reason in ``run.json``
  (``profile``, ``profile_requested``, ``profile_reason``), e.g.
  ``"auto → quick: no CUDA device"``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import ConfigError

AUTO = "auto"
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _torch_importable() -> bool:
    if "torch" in sys.modules:
        return True
    import importlib.util  # noqa: PLC0415

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def cuda_devices(*, use_torch: bool | None = None) -> list[str]:
    """Names of the CUDA devices this process can use (empty without a GPU or driver).

    ``use_torch``: ask torch (``None``: when torch is importable).  Without torch the NVIDIA
    driver answers: ``nvidia-smi -L``, else the entries of ``/proc/driver/nvidia/gpus``;
    ``CUDA_VISIBLE_DEVICES`` limits both the way CUDA does (a comma-separated list of indices;
    empty or ``-1``: none).
    """
    if use_torch is None:
        use_torch = _torch_importable()
    if use_torch:
        import torch  # noqa: PLC0415 - optional dependency

        if not torch.cuda.is_available():
            return []
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    names = _driver_gpus()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        keep = []
        for item in visible.split(","):
            item = item.strip()
            if not item.isdigit():  # '', '-1' or a UUID list we cannot map: stop, as CUDA does
                break
            if int(item) < len(names):
                keep.append(names[int(item)])
        names = keep
    return names


def _driver_gpus() -> list[str]:
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            out = None
        if out is not None and out.returncode == 0:
            # "GPU 0: NVIDIA H200 (UUID: GPU-...)"
            return [re.sub(r"^GPU \d+:\s*", "", line).split(" (UUID")[0].strip()
                    for line in out.stdout.splitlines() if line.startswith("GPU ")]
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir():
        names = []
        for entry in sorted(gpus.iterdir()):
            info = entry / "information"
            model = "NVIDIA GPU"
            try:
                for line in info.read_text().splitlines():
                    if line.startswith("Model:"):
                        model = line.split(":", 1)[1].strip()
            except OSError:
                pass
            names.append(model)
        return names
    return []


def check_device(requested: str, *, key: str = "device", source: str = "configuration",
                 devices: list[str] | None = None) -> None:
    """Raise :class:`ConfigError` when ``requested`` names a CUDA device this machine lacks.

    ``auto`` and ``cpu`` always pass.  ``devices``: the CUDA device names (default
    :func:`cuda_devices`).
    """
    if not DEVICE_PATTERN.match(str(requested)):
        raise ConfigError(f"{source}: key '{key}': {requested!r} is not a device; expected auto, cpu, cuda "
                          "or cuda:N")
    if requested in (AUTO, "cpu"):
        return
    devices = cuda_devices() if devices is None else devices
    index = int(requested.split(":")[1]) if ":" in requested else 0
    if not devices:
        raise ConfigError(f"{source}: key '{key}': {requested!r} asks for a CUDA GPU but this machine has none "
                          "(no CUDA device visible to torch or the NVIDIA driver); use device: auto (CUDA "
                          "when available, else the CPU) or device: cpu")
    if index >= len(devices):
        raise ConfigError(f"{source}: key '{key}': {requested!r} asks for CUDA device {index} but this machine "
                          f"has {len(devices)}: " + ", ".join(f"cuda:{i} ({n})" for i, n in enumerate(devices)))


def resolve_profile(cls, requested: str | None, device: str, *, requested_device: str = AUTO
                    ) -> tuple[str | None, str]:
    """``(profile, reason)`` for a run of method class ``cls`` on ``device`` (``cpu``, ``cuda[:N]``).

    ``requested`` other than ``auto`` is returned as it is (reason ``"requested"``; ``None``:
    the method's defaults).  ``auto``: ``paper`` on a CUDA device, ``quick`` on the CPU, with the
    reason, e.g. ``"auto → quick: no CUDA device"``.
    """
    if requested is None:
        return None, "no profile requested: the method's defaults"
    if requested != AUTO:
        return requested, "requested"
    on_gpu = str(device).startswith("cuda")
    profile = "paper" if on_gpu else "quick"
    if on_gpu:
        why = f"runs on {device}"
    elif "gpu_optional" in getattr(cls, "uses", set()) and requested_device != "cpu":
        why = f"{cls.name} uses a GPU only when device cuda is asked for"
    elif "gpu" not in getattr(cls, "uses", set()):
        why = f"{cls.name} runs on the CPU only"
    elif requested_device == "cpu":
        why = "device cpu requested"
    else:
        why = "no CUDA device"
    if profile not in getattr(cls, "profiles", {}):
        why += f" and {cls.name} defines no {profile} profile"
        profile = "default"  # Method.resolve_parameters: the method's defaults
    return profile, f"auto → {profile}: {why}"


def candidate_profiles(requested: str | None) -> list[str | None]:
    """The profiles ``requested`` may become (``auto``: quick and paper), for validating parameters."""
    return ["quick", "paper"] if requested == AUTO else [requested]


__all__ = ["AUTO", "DEVICE_PATTERN", "candidate_profiles", "check_device", "cuda_devices", "resolve_profile"]
