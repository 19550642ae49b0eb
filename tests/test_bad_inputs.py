"""The bad-input battery: one table of broken inputs, each through the command line or the workflow.

Every case must end with a non-zero exit, an error on stderr that names the file, option, key or
value at fault and says what is expected (one paragraph, starting with ``error:`` for the
command line), no traceback, and no output left behind -- neither under the output's final
name nor as a temporary file next to it.

``cli`` cases call :func:`qsmbench.cli.main` in this process (fast; an uncaught exception would
fail the test); ``console`` cases run ``python -m qsmbench.cli`` as a subprocess; ``workflow``
cases run ``snakemake -n`` on a configuration, whose validation must stop before any job.
"""

from __future__ import annotations

import gzip
import hashlib
import io as _io
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from qsmbench import cli

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
SHAPE = (12, 12, 10)


# --------------------------------------------------------------------------- inputs
def sphere(shape=SHAPE, frac=0.7) -> np.ndarray:
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return sum(g ** 2 for g in grids) < frac ** 2


def nifti(path: Path, data, affine=None, *, pixdim=None) -> Path:
    """Write ``data`` as NIfTI; ``pixdim`` overwrites the voxel size in the raw header bytes."""
    img = nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine)
    raw = bytearray(img.to_bytes())
    if pixdim is not None:
        raw[80:92] = np.asarray(pixdim, "<f4").tobytes()  # pixdim[1:4] (pixdim starts at byte 76)
    path.write_bytes(gzip.compress(bytes(raw), mtime=0) if path.name.endswith(".gz") else bytes(raw))
    return path


def field_data(shape=SHAPE) -> np.ndarray:
    return (np.random.default_rng(0).normal(0, 0.02, shape) * sphere(shape)).astype(np.float32)


def good(tmp: Path) -> dict[str, Path]:
    """A valid field and mask (and a reference for evaluate) in ``tmp``."""
    return {"field": nifti(tmp / "field.nii.gz", field_data()),
            "mask": nifti(tmp / "mask.nii.gz", sphere().astype(np.uint8)),
            "truth": nifti(tmp / "truth.nii.gz", field_data() * 2)}


def reconstruct(tmp: Path, *, field=None, mask=None, extra=(), method="tkd") -> tuple[list[str], Path]:
    files = good(tmp)
    out = tmp / "out" / "chi.nii.gz"
    return ["reconstruct", method, "--field", str(field or files["field"]), "--mask", str(mask or files["mask"]),
            "--out", str(out), *extra], out


def bad_field(data=None, *, name="bad_field.nii.gz", raw: bytes | None = None, **kw):
    """A reconstruct case whose field file is ``data`` (or the raw bytes ``raw``)."""
    def setup(tmp: Path):
        path = tmp / name
        if raw is not None:
            path.write_bytes(raw)
        else:
            nifti(path, data, **kw)
        return reconstruct(tmp, field=path)
    return setup


def bad_mask(data, **kw):
    def setup(tmp: Path):
        return reconstruct(tmp, mask=nifti(tmp / "bad_mask.nii.gz", data, **kw))
    return setup


def options(*extra: str, method: str = "tkd"):
    def setup(tmp: Path):
        return reconstruct(tmp, extra=extra, method=method)
    return setup


def truncated(gz: bool) -> Callable[[Path], tuple[list[str], Path]]:
    def setup(tmp: Path):
        good_bytes = nib.Nifti1Image(field_data(), np.eye(4)).to_bytes()
        data = gzip.compress(good_bytes, mtime=0) if gz else good_bytes
        path = tmp / ("cut.nii.gz" if gz else "cut.nii")
        path.write_bytes(data[: len(data) // 2])
        return reconstruct(tmp, field=path)
    return setup


def evaluate(**bad):
    """An evaluate case; ``bad`` maps recon/truth/mask/labels to the array (or a callable(tmp)->path)."""
    def setup(tmp: Path):
        files = good(tmp)
        recon = nifti(tmp / "recon.nii.gz", field_data() * 3)
        paths = {"recon": recon, "truth": files["truth"], "mask": files["mask"], "labels": None}
        for key, value in bad.items():
            paths[key] = value(tmp) if callable(value) else nifti(tmp / f"bad_{key}.nii.gz", value)
        argv = ["evaluate", str(paths["recon"]), str(paths["truth"]), "--mask", str(paths["mask"]), "--json"]
        if paths["labels"] is not None:
            argv += ["--labels", str(paths["labels"])]
        return argv, None
    return setup


def phantom(*extra: str, outdir_is_file: bool = False):
    def setup(tmp: Path):
        out = tmp / "phantom_out"
        if outdir_is_file:
            out.write_text("I am a file")
        return ["phantom", str(out), "--shape", "16", "16", "16", *extra], None if outdir_is_file else out
    return setup


PLUGIN_HEAD = "import numpy as np\nfrom qsmbench.method import Method\n\n"
PLUGIN_CLASS = '''
class {cls}(Method):
    """A test plugin."""
    name = "{name}"
    references = ["none"]

    def reconstruct(self, vol):
        return vol.field_ppm * vol.mask
'''


def plugin(text: str, name: str = "plugin.py"):
    def setup(tmp: Path):
        path = tmp / name
        path.write_text(text)
        return ["check-method", str(path)], None
    return setup


# --------------------------------------------------------------------------- fetch: a local server
class Server:
    """127.0.0.1 HTTP server for the fetch cases: serves bytes, optionally cut short."""

    def __init__(self):
        self.files: dict[str, tuple[bytes, bool]] = {}
        files = self.files

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                body, cut = files.get(self.path, (None, False))
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if cut else body)
                self.close_connection = True

            do_HEAD = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def manifest(tmp: Path, server: Server, *, source: dict, files: list[dict], name: str = "badtest") -> Path:
    data = {"schema_version": 1, "name": name, "title": "bad-input test data", "citation": ["none"],
            "licence": "test data", "source": {"cache_subdir": name, **source},
            "acquisition": {"b0_tesla": 3.0, "te_s": 0.025, "b0_dir": [0.0, 0.0, 1.0]}, "files": files}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def per_file_download(*, tamper: bool = False, cut: bool = False):
    """A manifest of two files with official sha256; the server tampers with or truncates the field."""
    def setup(tmp: Path, server: Server):
        field = gzip.compress(nib.Nifti1Image(field_data(), np.eye(4)).to_bytes(), mtime=0)
        mask = gzip.compress(nib.Nifti1Image(sphere().astype(np.uint8), np.eye(4)).to_bytes(), mtime=0)
        sha = {k: hashlib.sha256(v).hexdigest() for k, v in (("field", field), ("mask", mask))}
        served = bytes([field[0] ^ 0xFF]) + field[1:] if tamper else field
        server.files["/badtest/field.nii.gz"] = (served, cut)
        server.files["/badtest/mask.nii.gz"] = (mask, False)
        m = manifest(tmp, server, source={"type": "url", "base_url": f"{server.url}/badtest"},
                     files=[{"role": "field", "path": "field.nii.gz", "units": "ppm", "sha256": sha["field"]},
                            {"role": "mask", "path": "mask.nii.gz", "sha256": sha["mask"]}])
        cache = tmp / "cache"
        return ["fetch", str(m), "--cache", str(cache)], cache / "badtest" / "field.nii.gz"
    return setup


def archive_download(members: Callable[[], bytes], filename: str):
    def setup(tmp: Path, server: Server):
        body = members()
        server.files[f"/badtest/{filename}"] = (body, False)
        m = manifest(tmp, server, source={"type": "url", "archive": {
                         "url": f"{server.url}/badtest/{filename}", "sha256": hashlib.sha256(body).hexdigest()}},
                     files=[{"role": "field", "path": "data/field.nii*", "units": "ppm"},
                            {"role": "mask", "path": "data/mask.nii*"}])
        cache = tmp / "cache"
        return ["fetch", str(m), "--cache", str(cache)], cache / "badtest" / "extracted"
    return setup


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = _io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_with(name: str, *, link: str | None = None) -> bytes:
    buf = _io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo(name)
        if link is None:
            info.size = 3
            tf.addfile(info, _io.BytesIO(b"abc"))
        else:
            info.type, info.linkname = tarfile.SYMTYPE, link
            tf.addfile(info)
    return buf.getvalue()


def bad_manifest(edit: Callable[[dict], None] | None = None, *, text: str | None = None):
    def setup(tmp: Path, server: Server):
        path = manifest(tmp, server, source={"type": "url", "base_url": f"{server.url}/badtest"},
                        files=[{"role": "field", "path": "field.nii.gz", "units": "ppm"},
                               {"role": "mask", "path": "mask.nii.gz"}])
        if text is not None:
            path.write_text(text)
        else:
            data = yaml.safe_load(path.read_text())
            edit(data)
            path.write_text(yaml.safe_dump(data, sort_keys=False))
        return ["fetch", str(path), "--cache", str(tmp / "cache")], tmp / "cache" / "badtest"
    return setup


# --------------------------------------------------------------------------- workflow configs
def tiny_config() -> dict:
    return {"datasets": {"tiny": {"type": "phantom", "shape": [16, 16, 16], "voxel_size_mm": [4.0, 4.0, 4.0]}},
            "perturbations": ["none"], "methods": {"tkd": {}}}


def workflow(edit: Callable[[dict], None] | None = None, *, text: str | None = None, plugin: str | None = None):
    def setup(tmp: Path):
        cfg = tiny_config()
        if plugin is not None:
            (tmp / "plugins").mkdir()
            (tmp / "plugins" / "broken.py").write_text(plugin)
            cfg["method_dirs"] = [str(tmp / "plugins")]
        if edit is not None:
            edit(cfg)
        path = tmp / "config.yaml"
        path.write_text(text if text is not None else yaml.safe_dump(cfg))
        return path, tmp / "run" / "results"
    return setup


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Case:
    setup: Callable
    expect: str          # regex the error must match: it names the file/option/key/value
    via: str = "cli"     # cli | console | fetch | workflow


def _set(path: str, value):
    def edit(cfg):
        *keys, last = path.split(".")
        node = cfg
        for k in keys:
            node = node[k]
        node[last] = value
    return edit


F = r"bad_field\.nii\.gz"
M = r"bad_mask\.nii\.gz"
X = 0.5 * sphere()
CASES: dict[str, Case] = {
    # ---- NIfTI files: corrupt, truncated, wrong dimensionality, dtype, values, geometry
    "truncated nifti": Case(truncated(gz=False), r"cannot read field file .*cut\.nii .*truncated or corrupt"),
    "truncated gzip": Case(truncated(gz=True), r"cannot read field file .*cut\.nii\.gz .*truncated or corrupt"),
    "gzip of garbage": Case(bad_field(raw=gzip.compress(b"not a nifti at all" * 40)),
                            rf"cannot read field file .*{F}"),
    "text named .nii.gz": Case(bad_field(raw=b"hello, I am text\n"), rf"cannot read field file .*{F}"),
    "4-D field": Case(bad_field(np.zeros((*SHAPE, 2), np.float32)), rf"field file .*{F} must be 3-D, got shape"),
    "2-D field": Case(bad_field(np.zeros((12, 12), np.float32)), rf"{F} must be 3-D, got shape \(12, 12\)"),
    "complex field": Case(bad_field(field_data().astype(np.complex64)), rf"field file .*{F} is complex-valued"),
    "magnitude with another affine": Case(lambda tmp: options("--magnitude", str(nifti(
        tmp / "bad_magnitude.nii.gz", np.ones(SHAPE, np.float32), np.diag([1.0, 1, 1.5, 1]))))(tmp),
        r"bad_magnitude\.nii\.gz and .*field\.nii\.gz have different affines"),
    "RGB field": Case(bad_field(np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])),
                      rf"field file .*{F} has the data type .*RGB"),
    "NaN in field": Case(bad_field(np.where(sphere(), np.nan, 0).astype(np.float32)),
                         rf"field file .*{F} contains \d+ non-finite values"),
    "Inf in field": Case(bad_field(np.full(SHAPE, np.inf, np.float32)), rf"field file .*{F} contains \d+ non-finite"),
    "zero voxel size": Case(bad_field(field_data(), pixdim=(1.0, 0.0, 1.0)),
                            rf"field file .*{F} has the voxel size 1 x 0 x 1 mm .*expected three positive"),
    "negative voxel size": Case(bad_field(field_data(), pixdim=(-1.0, 1.0, 1.0)),
                                rf"field file .*{F} has the voxel size -1 x 1 x 1 mm"),
    "NaN voxel size": Case(bad_field(field_data(), pixdim=(1.0, 1.0, np.nan)), rf"{F} has the voxel size 1 x 1 x nan"),
    "mask of another shape": Case(bad_mask(np.ones((12, 12, 11), np.uint8)),
                                  rf"{M} has shape \(12, 12, 11\) but .*field\.nii\.gz has shape \(12, 12, 10\)"),
    "mask with another affine": Case(bad_mask(sphere().astype(np.uint8), affine=np.diag([2.0, 1, 1, 1])),
                                     rf"{M} and .*field\.nii\.gz have different affines"),
    "empty mask": Case(bad_mask(np.zeros(SHAPE, np.uint8)), rf"mask file .*{M} is empty"),
    "all-ones mask": Case(bad_mask(np.ones(SHAPE, np.uint8)), rf"mask file .*{M} covers every voxel"),
    "probability mask": Case(bad_mask(X.astype(np.float32)), rf"mask file .*{M} is not a binary mask: .*e\.g\. 0\.5"),
    "mask with label 2": Case(bad_mask(sphere().astype(np.uint8) * 2), rf"{M} is not a binary mask: .*e\.g\. 2"),
    "complex mask": Case(bad_mask(sphere().astype(np.complex64)), rf"mask file .*{M} is complex-valued"),
    "NaN in mask": Case(bad_mask(np.where(sphere(), 1.0, np.nan).astype(np.float32)), rf"{M} contains \d+ non-finite"),
    "missing field file": Case(options("--magnitude", "no_such_magnitude.nii.gz"),
                               r"magnitude file not found: no_such_magnitude\.nii\.gz"),
    # ---- acquisition options
    "zero-length B0 direction": Case(options("--b0-dir", "0", "0", "0"), r"--b0-dir 0 0 0: .*not all zero"),
    "NaN B0 direction": Case(options("--b0-dir", "nan", "0", "1"), r"--b0-dir nan 0 1: .*three finite numbers"),
    "TE = 0": Case(options("--te", "0"), r"--te 0: the echo time must be a positive number of seconds"),
    "TE < 0": Case(options("--te", "-0.01"), r"--te -0.01: the echo time must be a positive"),
    "B0 = 0 T": Case(options("--b0", "0"), r"--b0 0: the field strength must be a positive number of tesla"),
    # ---- methods and parameters
    "unknown method": Case(options(method="no_such_method"),
                           r"unknown method 'no_such_method'; registered methods: .*tkd"),
    "unknown parameter": Case(options("--param", "colour=blue"),
                              r"method 'tkd' has no parameter 'colour'.*known: .*threshold"),
    "parameter of the wrong type": Case(options("--param", "threshold=abc"),
                                        r"parameter 'tkd\.threshold' expects a (float|int), got 'abc'"),
    "parameter out of range": Case(options("--param", "threshold=-1"), r"threshold must be in \(0, 2/3\), got -1"),
    "--param without =": Case(options("--param", "threshold"), r"--param expects KEY=VALUE, got 'threshold'"),
    "unknown profile": Case(options("--profile", "turbo"), r"method 'tkd' has no profile 'turbo'"),
    "output not NIfTI": Case(lambda tmp: (reconstruct(tmp, extra=("--out", str(tmp / "out" / "chi.txt")))[0],
                                          tmp / "out" / "chi.txt"), r"--out .*chi\.txt: .*\.nii or \.nii\.gz"),
    # ---- evaluate
    "complex reconstruction": Case(evaluate(recon=field_data().astype(np.complex64)),
                                   r"reconstruction file .*bad_recon\.nii\.gz is complex-valued"),
    "reference of another shape": Case(evaluate(truth=np.zeros((12, 12, 9), np.float32)),
                                       r"bad_truth\.nii\.gz has shape \(12, 12, 9\) but .*recon\.nii\.gz"),
    "labels not integer": Case(evaluate(labels=X.astype(np.float32) + 0.25), r"labels file .*bad_labels\.nii\.gz holds "
                                                                              r"negative or non-integer values"),
    "NaN in reconstruction": Case(evaluate(recon=np.full(SHAPE, np.nan, np.float32)),
                                  r"reconstruction file .*bad_recon\.nii\.gz contains \d+ non-finite"),
    # ---- phantom
    "phantom too small": Case(phantom("--shape", "4", "4", "4"), r"shape .*8"),
    "phantom voxel size 0": Case(phantom("--voxel-size", "0", "1", "1"), r"voxel_size_mm must be three positive"),
    "phantom into a file": Case(phantom(outdir_is_file=True), r"OUTDIR .*phantom_out exists and is not a folder"),
    # ---- plugins (check-method)
    "plugin with a syntax error": Case(plugin(PLUGIN_HEAD + "class Broken(Method:\n    pass\n"),
                                       r"method file .*plugin\.py has a syntax error at line 4"),
    "plugin failing at import": Case(plugin(PLUGIN_HEAD + "x = undefined_name\n"),
                                     r"method file .*plugin\.py fails when imported \(line 4\): NameError"),
    "plugin with a missing dependency": Case(plugin("import no_such_module_xyz\n" + PLUGIN_HEAD),
                                             r"plugin\.py cannot be imported: No module named 'no_such_module_xyz'"),
    "two classes, one method name": Case(plugin(PLUGIN_HEAD + PLUGIN_CLASS.format(cls="A", name="dup")
                                                + PLUGIN_CLASS.format(cls="B", name="dup")),
                                         r"plugin\.py: the classes A and B both register the method name 'dup'"),
    "one class name twice": Case(plugin(PLUGIN_HEAD + PLUGIN_CLASS.format(cls="A", name="one")
                                        + PLUGIN_CLASS.format(cls="A", name="two")),
                                 r"plugin\.py defines the class A 2 times \(lines 5, 13\)"),
    "plugin without a method": Case(plugin("x = 1\n"), r"plugin\.py defines no subclass of qsmbench\.method\.Method"),
    # ---- fetch: manifests and downloads
    "manifest that is not YAML": Case(bad_manifest(text="name: [unclosed\n"), r"badtest\.yaml", via="fetch"),
    "manifest with a bad key": Case(bad_manifest(lambda d: d["acquisition"].update(b0_tesla=-3)),
                                    r"badtest\.yaml.*acquisition\.b0_tesla", via="fetch"),
    "manifest without a mask": Case(bad_manifest(lambda d: d.update(files=d["files"][:1])),
                                    r"badtest\.yaml.*mask", via="fetch"),
    "tampered download": Case(per_file_download(tamper=True), r"(?i)field\.nii\.gz.*(sha256|checksum)", via="fetch"),
    "truncated download": Case(per_file_download(cut=True), r"field\.nii\.gz", via="fetch"),
    "archive member with ..": Case(archive_download(lambda: zip_of({"data/../../evil.txt": b"x"}), "a.zip"),
                                   r"a\.zip: refused: member 'data/\.\./\.\./evil\.txt' contains '\.\.'", via="fetch"),
    "archive member with an absolute path": Case(archive_download(lambda: tar_with("/tmp/evil.txt"), "a.tar.gz"),
                                                 r"a\.tar\.gz: refused: member '/tmp/evil\.txt' has an absolute path",
                                                 via="fetch"),
    "archive link out of the folder": Case(archive_download(lambda: tar_with("data/l", link="../../x"), "a.tar.gz"),
                                           r"a\.tar\.gz: refused: link 'data/l' -> '\.\./\.\./x' points outside",
                                           via="fetch"),
    # ---- the same through the console script (a real process)
    "console: complex field": Case(bad_field(field_data().astype(np.complex64)), rf"{F} is complex-valued",
                                   via="console"),
    "console: unknown subcommand option": Case(options("--no-such-option"), r"unrecognized arguments: --no-such-option",
                                               via="console"),
    # ---- the workflow: configuration validation stops before any job
    "config: unknown key": Case(workflow(_set("colour", "blue")), r"'colour' was unexpected", via="workflow"),
    "config: wrong type": Case(workflow(_set("datasets.tiny.shape", [16, "x", 16])), r"key 'datasets\.tiny\.shape\.1'",
                               via="workflow"),
    "config: unknown method": Case(workflow(_set("methods.nosuch", {})), r"key 'methods\.nosuch': unknown method",
                                   via="workflow"),
    "config: unknown parameter": Case(workflow(_set("methods.tkd", {"params": {"colour": 1}})),
                                      r"key 'methods\.tkd': method 'tkd' has no parameter 'colour'", via="workflow"),
    "config: parameter of the wrong type": Case(workflow(_set("methods.tkd", {"params": {"threshold": "high"}})),
                                                r"key 'methods\.tkd': parameter 'tkd\.threshold' expects",
                                                via="workflow"),
    "config: timeout_s <= 0": Case(workflow(_set("methods.tkd", {"timeout_s": 0})), r"key 'methods\.tkd\.timeout_s'",
                                   via="workflow"),
    "config: voxel size 0": Case(workflow(_set("datasets.tiny.voxel_size_mm", [1, 0, 1])),
                                 r"key 'datasets\.tiny\.voxel_size_mm\.1'", via="workflow"),
    "config: broken plugin in method_dirs": Case(workflow(plugin="class Broken(:\n"),
                                                 r"key 'method_dirs': method file .*broken\.py has a syntax error at "
                                                 r"line 1", via="workflow"),
    # Snakemake reads --configfile itself, before the workflow starts, and its message does not repeat
    # the file name (the one the user just gave): we can only check that it stops cleanly.
    "config: not YAML": Case(workflow(text="datasets: [unclosed\n"), r"Config file is not valid JSON or YAML",
                             via="workflow"),
}


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.close()


def _one_paragraph(err: str) -> str:
    """The error paragraph: from the one line starting with 'error:' (or 'usage:') to the end."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(("error:", "usage:"))]
    assert starts, f"no error message:\n{err}"
    text = "\n".join(lines[starts[0]:])
    assert "\n\n" not in text and sum(line.startswith("error:") for line in lines) <= 1, f"not one paragraph:\n{err}"
    return text


def _no_leftovers(output: Path | None) -> None:
    if output is None:
        return
    assert not output.exists(), f"{output} was left behind"
    folder = output.parent
    if folder.exists():
        temps = [p.name for p in folder.iterdir() if ".qsmtmp-" in p.name or p.name.startswith(f".{output.name}")]
        assert not temps, f"temporary files left in {folder}: {temps}"


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input(case_id, tmp_path, capsys, server, monkeypatch):
    case = CASES[case_id]
    monkeypatch.chdir(tmp_path)
    if case.via == "workflow":
        config, output = case.setup(tmp_path)
        proc = subprocess.run([SNAKEMAKE, "-n", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path / "run"),
                               "--configfile", str(config), "--cores", "1"],
                              capture_output=True, text=True, timeout=300)
        text = proc.stdout + proc.stderr
        assert proc.returncode != 0, text
        assert re.search(case.expect, text), text
        assert "Traceback" not in text, text
        _no_leftovers(output)
        return
    if case.via == "fetch":
        import pooch.core  # noqa: PLC0415 - the retries of a truncated transfer need no real waiting

        monkeypatch.setattr(pooch.core.time, "sleep", lambda s: None)
        for handler in pooch.get_logger().handlers:  # pooch's handler holds the stderr of its import time
            monkeypatch.setattr(handler, "stream", sys.stderr)
        argv, output = case.setup(tmp_path, server)
    else:
        argv, output = case.setup(tmp_path)
    if case.via == "console":
        proc = subprocess.run([sys.executable, "-m", "qsmbench.cli", *argv], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
        rc, err = proc.returncode, proc.stderr
    else:
        rc = cli.main(argv)
        err = capsys.readouterr().err
    assert rc != 0, err
    text = _one_paragraph(err)
    assert re.search(case.expect, text), text
    _no_leftovers(output)


def test_the_battery_is_large_enough():
    assert len(CASES) >= 30
    assert {c.via for c in CASES.values()} == {"cli", "console", "fetch", "workflow"}


def test_debug_shows_the_traceback(tmp_path):
    argv, _ = bad_field(field_data().astype(np.complex64))(tmp_path)
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    plain = subprocess.run([sys.executable, "-m", "qsmbench.cli", *argv], capture_output=True, text=True, env=env)
    debug = subprocess.run([sys.executable, "-m", "qsmbench.cli", "--debug", *argv], capture_output=True, text=True,
                           env=env)
    assert plain.returncode == debug.returncode == 2
    assert "Traceback" not in plain.stderr and "Traceback (most recent call last)" in debug.stderr
    assert "is complex-valued" in debug.stderr.splitlines()[-1]


def test_accepted_inputs_still_work(tmp_path, capsys):
    """What the battery must not reject: an integer field, a boolean or float 0/1 mask, a 4-D file with one volume."""
    files = good(tmp_path)
    field = nifti(tmp_path / "int_field.nii.gz", (field_data() * 1000).astype(np.int16)[..., None])
    for i, mask in enumerate([sphere().astype(np.float32), sphere().astype(np.int16)]):
        m = nifti(tmp_path / f"mask{i}.nii.gz", mask)
        out = tmp_path / f"chi{i}.nii.gz"
        assert cli.main(["reconstruct", "tkd", "--field", str(field), "--mask", str(m), "--out", str(out)]) == 0
        assert nib.load(out).shape == SHAPE
    assert cli.main(["evaluate", str(files["truth"]), str(files["truth"]), "--mask", str(files["mask"])]) == 0
    assert "nrmse" in capsys.readouterr().out
