"""Datasets: manifests, verified downloads, safe extraction, the 2016 / RC2 / local loaders.

Nothing here touches the internet: a local HTTP server on 127.0.0.1 serves small archives and
files built by the tests with the 2016 and RC2 layouts, and can answer 404/500, truncate a
transfer, serve corrupted bytes or demand credentials.  Name resolution of any other host is
blocked for the duration of each test.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import socket
import tarfile
import threading
import zipfile
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.io
import yaml

from qsmbench import datasets as ds
from qsmbench.cli import main
from qsmbench.errors import ConfigError, InputError
from qsmbench.io import load_volume
from qsmbench.physics import GAMMA_BAR_MHZ_PER_T

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "data_manifests"
ARCHIVE = "20170327_qsm2016_recon_challenge.zip"
SHAPE_2016 = (12, 12, 10)
VOXEL_2016 = (1.0625, 1.0625, 1.0714)
SHAPE_RC2 = (10, 12, 12)
USER, PASSWORD = "reader", "s3cret"


# --------------------------------------------------------------------------- local server
@dataclass
class Route:
    body: bytes
    status: int = 200
    truncate_first: int = 0      # this many GETs send half the body, then close
    fail_first: int = 0          # this many GETs answer HTTP 500
    corrupt: bool = False        # flip bytes of the body
    auth: tuple[str, str] | None = None


class DataServer:
    """A tiny HTTP server on 127.0.0.1 with scripted misbehaviour; records every request."""

    def __init__(self):
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _serve(self, head: bool):
                server.requests.append((self.command, self.path))
                route = server.routes.get(self.path)
                if route is None:
                    return self._reply(404, b"not found")
                if route.auth is not None:
                    token = base64.b64encode(f"{route.auth[0]}:{route.auth[1]}".encode()).decode()
                    if self.headers.get("Authorization") != f"Basic {token}":
                        return self._reply(401, b"unauthorised", {"WWW-Authenticate": 'Basic realm="webdav"'})
                if not head and route.fail_first > 0:
                    route.fail_first -= 1
                    return self._reply(500, b"server error")
                if route.status != 200:
                    return self._reply(route.status, b"error")
                body = route.body
                if route.corrupt:
                    body = bytes(b ^ 0xFF for b in body[:64]) + body[64:]
                if head:
                    return self._reply(200, b"", {"Content-Length": str(len(body))}, head=True)
                if route.truncate_first > 0:
                    route.truncate_first -= 1
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return None
                return self._reply(200, body)

            def _reply(self, status, body, headers=None, head=False):
                self.send_response(status)
                headers = dict(headers or {})
                headers.setdefault("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                self._serve(head=False)

            def do_HEAD(self):  # noqa: N802
                self._serve(head=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, path: str, body: bytes, **kw) -> Route:
        route = Route(body, **kw)
        self.routes["/" + path.lstrip("/")] = route
        return route

    def gets(self, path: str | None = None) -> int:
        return sum(1 for m, p in self.requests if m == "GET" and (path is None or p == "/" + path.lstrip("/")))

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = DataServer()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Only 127.0.0.1 resolves; the default cache is a temporary folder; no mirror or credentials."""
    real = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise socket.gaierror(f"tests are offline: refusing to resolve {host}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)
    monkeypatch.setenv("QSMBENCH_DATA", str(tmp_path / "default-cache"))
    for var in ("QSMBENCH_MIRROR", "QSMBENCH_RC2_USER", "QSMBENCH_RC2_PASSWORD", "QSMBENCH_MANIFESTS_PATH"):
        monkeypatch.delenv(var, raising=False)


# --------------------------------------------------------------------------- tiny data
def nifti_bytes(arr, voxel=(1.0, 1.0, 1.0)) -> bytes:
    img = nib.Nifti1Image(np.asarray(arr), np.diag([*voxel, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    return img.to_bytes()


def ellipsoid(shape, frac=0.8):
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return sum(g ** 2 for g in grids) < frac ** 2


def tiny_2016():
    """The 2016 files as uncompressed .nii bytes, by name; values exact in float32."""
    rng = np.random.default_rng(0)
    mask = ellipsoid(SHAPE_2016)
    chi_33 = (np.round(rng.normal(0, 0.05, SHAPE_2016), 3) * mask).astype(np.float32)
    chi_cosmos = (chi_33 * 0.9).astype(np.float32)
    field = np.round(rng.normal(0, 0.02, SHAPE_2016), 4).astype(np.float32)   # ppm, non-zero outside msk too
    labels = np.zeros(SHAPE_2016, np.uint8)
    labels[mask] = (np.arange(mask.sum()) % 11) + 1
    magn = (mask * 100.0 + 1.0).astype(np.float32)
    arrays = {"phs_tissue": field, "msk": mask.astype(np.uint8), "chi_33": chi_33, "chi_cosmos": chi_cosmos,
              "evaluation_mask": labels, "magn": magn}
    return arrays, {k: nifti_bytes(v, VOXEL_2016) for k, v in arrays.items()}


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def qsm2016_archive(gz: tuple[str, ...] = ("chi_cosmos", "magn")) -> tuple[dict, bytes, dict[str, str]]:
    """(arrays, zip bytes, content sha256 of each .nii); the files in ``gz`` are stored as .nii.gz."""
    arrays, niis = tiny_2016()
    members = {}
    for name, data in niis.items():
        if name in gz:
            members[f"20170327_qsm2016_recon_challenge/data/{name}.nii.gz"] = gzip.compress(data, mtime=0)
        else:
            members[f"20170327_qsm2016_recon_challenge/data/{name}.nii"] = data
    members["20170327_qsm2016_recon_challenge/data/spatial_res.mat"] = b"unused"
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in niis.items()}
    return arrays, zip_bytes(members), hashes


def write_manifest(tmp_path: Path, template: str, edit=None, *, stem: str | None = None) -> Path:
    """A copy of a real manifest (edited) under tmp_path/manifests/NAME.yaml (or STEM.yaml)."""
    data = yaml.safe_load((MANIFESTS / f"{template}.yaml").read_text())
    if edit:
        edit(data)
    folder = tmp_path / "manifests"
    folder.mkdir(exist_ok=True)
    path = folder / f"{stem or data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def qsm2016_manifest(tmp_path, hashes, edit=None) -> Path:
    def adapt(d):
        d["geometry"]["shape"] = list(SHAPE_2016)
        for f in d["files"]:
            stem = f["path"].split("/")[-1].split(".")[0]
            if "content_sha256" in f:
                f["content_sha256"] = hashes[stem]
        if edit:
            edit(d)
    return write_manifest(tmp_path, "qsm2016", adapt)


@pytest.fixture
def qsm2016(server, tmp_path):
    arrays, archive, hashes = qsm2016_archive()
    route = server.add(f"qsm2016/{ARCHIVE}", archive)
    return {"arrays": arrays, "archive": archive, "hashes": hashes, "route": route,
            "manifest": qsm2016_manifest(tmp_path, hashes), "cache": tmp_path / "cache"}


def tiny_rc2():
    rng = np.random.default_rng(1)
    head = ellipsoid(SHAPE_RC2, 0.95)
    brain = ellipsoid(SHAPE_RC2, 0.8)
    eroded = ellipsoid(SHAPE_RC2, 0.7)
    labels = np.zeros(SHAPE_RC2, np.int16)
    labels[brain] = 8
    labels[ellipsoid(SHAPE_RC2, 0.3)] = 2
    labels[5, 6, 6] = 16
    chi = (np.round(rng.normal(0, 0.05, SHAPE_RC2), 3) * head).astype(np.float32)
    freq_hz = np.round(rng.normal(0, 10.0, SHAPE_RC2), 2).astype(np.float32)
    magnitude = np.stack([head * (100.0 - 10 * e) for e in range(4)], axis=-1).astype(np.float32)
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"maskEroded": eroded.astype(np.uint8), "CalcMoment": np.array([[-1.25]])})
    arrays = {"freq_hz": freq_hz, "brain": brain, "eroded": eroded, "chi": chi, "labels": labels,
              "magnitude": magnitude}
    files = {
        "Frequency.nii.gz": gzip.compress(nifti_bytes(freq_hz), mtime=0),
        "MaskBrainExtracted.nii.gz": gzip.compress(nifti_bytes(brain.astype(np.uint8)), mtime=0),
        "Magnitude.nii.gz": gzip.compress(nifti_bytes(magnitude), mtime=0),
        "GT/Chi.nii.gz": gzip.compress(nifti_bytes(chi), mtime=0),
        "GT/Segmentation.nii.gz": gzip.compress(nifti_bytes(labels), mtime=0),
        "GT/FilestructureForEval.mat": buf.getvalue(),
    }
    return arrays, files


def rc2_manifest(tmp_path, name="rc2_sim2snr1") -> Path:
    return write_manifest(tmp_path, name, lambda d: d["geometry"].update(shape=list(SHAPE_RC2)))


@pytest.fixture
def rc2(server, tmp_path):
    arrays, files = tiny_rc2()
    for rel, data in files.items():
        server.add(f"rc2/Sim2Snr1/{rel}", data, auth=(USER, PASSWORD))
    return {"arrays": arrays, "files": files, "manifest": rc2_manifest(tmp_path), "cache": tmp_path / "cache"}


def cache_listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# =========================================================================== manifests
@pytest.mark.parametrize("name", ["qsm2016", "rc2_sim1snr1", "rc2_sim1snr2", "rc2_sim2snr1", "rc2_sim2snr2",
                                  "example_local", "phantom"])
def test_shipped_manifests_validate(name):
    m = ds.load_manifest(name)
    assert m.name == name and m.path == MANIFESTS / f"{name}.yaml"
    assert m.data["citation"] and m.data["licence"]


def test_qsm2016_manifest_facts():
    m = ds.load_manifest("qsm2016")
    assert m.acquisition["b0_tesla"] == 3.0 and m.acquisition["te_s"] == 0.025
    assert m.acquisition["b0_dir"] == [0.0, 0.0, 1.0]
    assert m.reference_names == ["chi_33", "chi_cosmos"]          # the official reference first
    content = {f.path.split("/")[-1].split(".")[0]: f.content_sha256 for f in m.files if f.content_sha256}
    assert content == {
        "phs_tissue": "9f431db2b1b6c7caf373fe6dd6c48e30eadef37c95ee882376f2aa68f5c7942d",
        "msk": "f18a1a660f6cb6bf75e2d9d7316c5078261495924f75c7b3d7890fcded77d972",
        "chi_cosmos": "73cb24caf080f9001bee5ff2c754381362312354f77b1cf5e8af3ab4312bf263",
        "chi_33": "02e2f772cc1a7ca1c178367a3447a084542211732160b4deafda7b4172bf663f",
    }
    labels = next(f for f in m.files if f.role == "labels")
    assert labels.label_scheme == "qsm2016"
    rc2 = ds.load_manifest("rc2_sim2snr2")
    assert rc2.source_type == "gated" and rc2.acquisition["b0_tesla"] == 7.0 and rc2.cache_subdir == "rc2"
    assert {f.role for f in rc2.files} >= {"field", "mask", "reference", "labels", "scoring_mask", "calc_moment"}


def _mutations():
    def files(i, **kv):
        return lambda d: d["files"][i].update(kv)
    return [
        (lambda d: d.pop("source"), "key '(top level)': 'source' is a required property"),
        (lambda d: d.pop("files"), "key '(top level)': 'files' is a required property"),
        (lambda d: d["source"].update(type="ftp"), "key 'source.type': 'ftp' is not one of"),
        (lambda d: d["acquisition"].pop("b0_tesla"), "key 'acquisition': 'b0_tesla' is a required property"),
        (lambda d: d["acquisition"].update(b0_tesla="strong"), "key 'acquisition.b0_tesla': 'strong' is not of type"),
        (lambda d: d["geometry"].update(shape=[160, 160]), "key 'geometry.shape'"),
        (files(1, role="truthh"), "key 'files.1.role': 'truthh' is not one of"),
        (files(0, path="../../etc/passwd"), "key 'files.0.path': '../../etc/passwd' escapes the cache folder"),
        (files(0, path="/etc/passwd"), "key 'files.0.path': '/etc/passwd' escapes the cache folder"),
        (files(2, path="data/../../x.nii"), "key 'files.2.path'"),
        (lambda d: d["source"].update(cache_subdir="../elsewhere"), "key 'source.cache_subdir'"),
        (lambda d: d["source"]["archive"].update(filename=".."), "key 'source.archive.filename'"),
        (lambda d: d["source"]["archive"].update(url="ftp://x/y.zip"), "must be an http:// or https:// URL"),
        (lambda d: d["source"]["archive"].update(sha256="abc"), "key 'source.archive.sha256'"),
        (files(2, name=None), "key 'files.2.name'"),
        (lambda d: d["files"][2].pop("name"), "key 'files.2': 'name' is a required property"),
        (files(0, units="furlong"), "key 'files.0.units'"),
        (files(0, unit="ppm"), "'unit' was unexpected"),
        (lambda d: d["files"].pop(1), "key 'files': needs exactly one file with role 'mask', found 0"),
        (lambda d: d["files"].append(dict(d["files"][0])), "needs exactly one file with role 'field' or 'phase'"),
        (files(3, name="chi_33"), "key 'files.3.name': reference name 'chi_33' is used twice"),
        (lambda d: d.update(name="other"), "key 'name': 'other' must equal the file name"),
        (lambda d: d.update(colour="blue"), "'colour' was unexpected"),
        (lambda d: d["source"].update(base_url="http://x"), "exactly one of 'archive'"),
    ]


@pytest.mark.parametrize("mutate,message", _mutations())
def test_bad_manifests_name_the_manifest_and_the_key(tmp_path, mutate, message):
    path = write_manifest(tmp_path, "qsm2016", mutate, stem="qsm2016")
    with pytest.raises(ds.ManifestError) as err:
        ds.load_manifest(path)
    assert str(path.name) in str(err.value) and message in str(err.value), str(err.value)
    assert isinstance(err.value, ConfigError)


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["files"][0].update(path="Sim1Snr1/*.nii.gz"), "key 'files.0.path': glob patterns"),
    (lambda d: d["files"][5].pop("variable"), "key 'files.5.variable'"),
    (lambda d: d["source"]["credentials"].pop("password_env"), "key 'source.credentials'"),
    (lambda d: d["source"].pop("agreement"), "'agreement' is a required property"),
    (lambda d: d["files"][1].update(path="../Sim1Snr1/x.nii.gz"), "escapes the cache folder"),
])
def test_bad_gated_manifests(tmp_path, mutate, message):
    path = write_manifest(tmp_path, "rc2_sim1snr1", mutate)
    with pytest.raises(ds.ManifestError, match="rc2_sim1snr1.yaml") as err:
        ds.load_manifest(path)
    assert message in str(err.value), str(err.value)


def test_manifest_lookup(tmp_path, monkeypatch):
    with pytest.raises(ds.ManifestError, match="unknown dataset manifest 'nosuch'; available: .*qsm2016"):
        ds.load_manifest("nosuch")
    with pytest.raises(ds.ManifestError, match="not found"):
        ds.load_manifest(tmp_path / "missing.yaml")
    own = write_manifest(tmp_path, "example_local", lambda d: d.update(name="mine"))
    monkeypatch.setenv("QSMBENCH_MANIFESTS_PATH", str(own.parent))
    assert ds.load_manifest("mine").path == own
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ds.ManifestError, match="broken.yaml is not valid YAML"):
        ds.load_manifest(bad)


# =========================================================================== 2016: download + conversion
def test_qsm2016_download_and_conversion(qsm2016, server, tmp_path):
    out = tmp_path / "results" / "data" / "qsm2016"
    with pytest.warns(ds.NoOfficialChecksumWarning, match="no official checksum exists for qsm2016/"):
        ds.prepare_dataset(qsm2016["manifest"], out, cache=qsm2016["cache"], mirror=server.url, retries=0)
    assert server.gets(f"qsm2016/{ARCHIVE}") == 1
    vol = load_volume(out)
    a = qsm2016["arrays"]
    np.testing.assert_array_equal(vol.field_ppm, a["phs_tissue"])        # already ppm: unchanged
    np.testing.assert_array_equal(vol.mask, a["msk"] != 0)
    assert np.any(vol.field_ppm[~vol.mask] != 0)                          # non-zero outside msk is kept
    assert sorted(vol.references) == ["chi_33", "chi_cosmos"]
    np.testing.assert_array_equal(vol.references["chi_33"], a["chi_33"])
    np.testing.assert_array_equal(vol.references["chi_cosmos"], a["chi_cosmos"])   # stored as .nii.gz
    np.testing.assert_array_equal(vol.labels, a["evaluation_mask"])
    np.testing.assert_array_equal(vol.magnitude, a["magn"])
    np.testing.assert_allclose(vol.voxel_size_mm, VOXEL_2016, atol=1e-6)
    assert vol.b0_dir == (0.0, 0.0, 1.0) and vol.b0_tesla == 3.0 and vol.te_s == 0.025
    assert vol.scoring_mask is None
    meta = json.loads((out / "meta.json").read_text())
    assert meta["metric_extras"] == {"label_scheme": "qsm2016"}
    assert meta["original_units"]["field"] == "ppm" and meta["conversions"] == ["field given in ppm (unchanged)"]
    assert "doi:10.1002/mrm.26830" in meta["citation"][0]
    key = f"qsm2016/{ARCHIVE}"
    lock = json.loads((qsm2016["cache"] / ds.LOCK_NAME).read_text())
    assert lock["files"][key]["sha256"] == hashlib.sha256(qsm2016["archive"]).hexdigest()
    assert lock["files"][key]["origin"] == f"{server.url}/{key}"
    assert meta["checksums"][key]["status"] == "recorded"
    assert ds.dataset_has_truth(qsm2016["manifest"])
    # the 2016 ROI metrics apply to these labels, the RC2 ones do not
    from qsmbench.metrics import evaluate
    scores = {r.metric: r for r in evaluate(vol.references["chi_33"], vol.references["chi_33"], vol.mask,
                                            labels=vol.labels, extras=meta["metric_extras"])}
    assert scores["roi_error_gm"].status == "ok" and scores["roi_error_gm"].value == 0.0
    assert scores["dnrmse_dgm"].status == "not_applicable"


def test_second_run_uses_the_cache_without_any_request(qsm2016, server, tmp_path):
    with pytest.warns(ds.NoOfficialChecksumWarning):
        ds.prepare_dataset(qsm2016["manifest"], tmp_path / "a", cache=qsm2016["cache"], mirror=server.url)
    n = len(server.requests)
    server.close()                                     # nothing listens any more
    ds.prepare_dataset(qsm2016["manifest"], tmp_path / "b", cache=qsm2016["cache"], mirror=server.url)
    assert len(server.requests) == n
    np.testing.assert_array_equal(load_volume(tmp_path / "b").field_ppm, qsm2016["arrays"]["phs_tissue"])


def test_cached_archive_changed_after_first_use_is_refused(qsm2016, server, tmp_path):
    with pytest.warns(ds.NoOfficialChecksumWarning):
        result = ds.fetch(qsm2016["manifest"], cache=qsm2016["cache"], mirror=server.url)
    archive = qsm2016["cache"] / "qsm2016" / ARCHIVE
    assert result.files["field"].is_relative_to(qsm2016["cache"] / "qsm2016" / "extracted")
    archive.write_bytes(archive.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ds.ChecksumError, match="has changed since its checksum was recorded on first use"):
        ds.fetch(qsm2016["manifest"], cache=qsm2016["cache"], mirror=server.url)


def test_content_hash_of_the_original_files_is_verified(server, tmp_path):
    arrays, archive, hashes = qsm2016_archive()
    server.add(f"qsm2016/{ARCHIVE}", archive)
    wrong = dict(hashes, chi_33="0" * 64)
    manifest = qsm2016_manifest(tmp_path, wrong)
    with pytest.raises(ds.ChecksumError, match=r"chi_33.nii \(qsm2016 reference:chi_33\): the sha256 of its "
                                               r"uncompressed content is [0-9a-f]{64}, but the manifest records 0{64}"):
        ds.fetch(manifest, cache=tmp_path / "cache", mirror=server.url)
    # a bad fresh download is not kept and nothing was trusted
    assert not (tmp_path / "cache" / "qsm2016" / ARCHIVE).exists()
    assert not (tmp_path / "cache" / ds.LOCK_NAME).exists()


@pytest.mark.parametrize("gz", [(), ("phs_tissue", "msk", "chi_33", "chi_cosmos", "evaluation_mask", "magn")])
def test_content_hash_does_not_depend_on_the_container(server, tmp_path, gz):
    arrays, archive, hashes = qsm2016_archive(gz=gz)
    server.add(f"qsm2016/{ARCHIVE}", archive)
    with pytest.warns(ds.NoOfficialChecksumWarning):
        result = ds.fetch(qsm2016_manifest(tmp_path, hashes), cache=tmp_path / "cache", mirror=server.url)
    assert result.files["field"].name == ("phs_tissue.nii.gz" if gz else "phs_tissue.nii")


def test_official_archive_checksum_corrupted_download(qsm2016, server, tmp_path):
    sha = hashlib.sha256(qsm2016["archive"]).hexdigest()
    manifest = qsm2016_manifest(tmp_path, qsm2016["hashes"], lambda d: d["source"]["archive"].update(sha256=sha))
    qsm2016["route"].corrupt = True
    with pytest.raises(ds.ChecksumError, match="is corrupt") as err:
        ds.fetch(manifest, cache=qsm2016["cache"], mirror=server.url, retries=1)
    assert str(qsm2016["cache"] / "qsm2016" / ARCHIVE) in str(err.value)
    assert server.gets() == 2                                   # retried once
    assert cache_listing(qsm2016["cache"] / "qsm2016") == [".qsmbench-fetch.mutex"]   # no partial file at all
    qsm2016["route"].corrupt = False
    result = ds.fetch(manifest, cache=qsm2016["cache"], mirror=server.url)       # no warning: official checksum
    assert result.checksums[f"qsm2016/{ARCHIVE}"] == {"sha256": sha, "status": "official"}


def test_truncated_transfer_is_retried(qsm2016, server):
    qsm2016["route"].truncate_first = 1
    with pytest.warns(ds.NoOfficialChecksumWarning):
        result = ds.fetch(qsm2016["manifest"], cache=qsm2016["cache"], mirror=server.url, retries=1)
    assert server.gets() == 2 and "field" in result.files


def test_interrupted_transfer_leaves_nothing_under_the_final_name(qsm2016, server):
    qsm2016["route"].truncate_first = 5
    with pytest.raises(ds.DownloadError, match="failed after 2 attempt.*truncated transfer") as err:
        ds.fetch(qsm2016["manifest"], cache=qsm2016["cache"], mirror=server.url, retries=1)
    assert "nothing was written to" in str(err.value)
    assert cache_listing(qsm2016["cache"] / "qsm2016") == [".qsmbench-fetch.mutex"]
    assert not (qsm2016["cache"] / ds.LOCK_NAME).exists()


def test_http_404_is_not_retried(qsm2016, server):
    with pytest.raises(ds.DownloadError, match="answered HTTP 404.*mirror") as err:
        ds.fetch(qsm2016["manifest"], cache=qsm2016["cache"], mirror=server.url + "/elsewhere", retries=3)
    assert err.value.status == 404 and server.gets() == 1


def test_http_500_is_retried_then_reported(qsm2016, server):
    qsm2016["route"].fail_first = 10
    with pytest.raises(ds.DownloadError, match="500") as err:
        ds.fetch(qsm2016["manifest"], cache=qsm2016["cache"], mirror=server.url, retries=1)
    assert err.value.status == 500 and server.gets() == 2
    assert cache_listing(qsm2016["cache"] / "qsm2016") == [".qsmbench-fetch.mutex"]
    qsm2016["route"].fail_first = 1                     # a transient error: the retry succeeds
    with pytest.warns(ds.NoOfficialChecksumWarning):
        ds.fetch(qsm2016["manifest"], cache=qsm2016["cache"], mirror=server.url, retries=1)


def test_mirror_from_the_environment(qsm2016, server, monkeypatch):
    monkeypatch.setenv("QSMBENCH_MIRROR", server.url + "/")
    with pytest.warns(ds.NoOfficialChecksumWarning):
        ds.fetch(qsm2016["manifest"], cache=qsm2016["cache"])
    assert server.gets(f"qsm2016/{ARCHIVE}") == 1


def test_default_cache_is_qsmbench_data(qsm2016, server, tmp_path):
    with pytest.warns(ds.NoOfficialChecksumWarning):
        result = ds.fetch(qsm2016["manifest"], mirror=server.url)
    assert result.cache == (tmp_path / "default-cache").resolve()
    assert (tmp_path / "default-cache" / "qsm2016" / ARCHIVE).is_file()


# =========================================================================== safe extraction
def _tar_bytes(add) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        add(tf)
    return buf.getvalue()


def _tar_file(tf, name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _tar_link(tf, name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tf.addfile(info)


UNSAFE = {
    "zip-dotdot": ("evil.zip", lambda: zip_bytes({"data/ok.nii": b"x", "../../evil.txt": b"pwned"}), "contains '..'"),
    "zip-absolute": ("evil.zip", lambda: zip_bytes({"/tmp/qsmbench-evil.txt": b"pwned"}), "absolute path"),
    "zip-backslash": ("evil.zip", lambda: zip_bytes({"..\\evil.txt": b"pwned"}), "contains '..'"),
    "tar-dotdot": ("evil.tar.gz", lambda: _tar_bytes(lambda tf: _tar_file(tf, "a/../../evil.txt")), "contains '..'"),
    "tar-absolute": ("evil.tar.gz", lambda: _tar_bytes(lambda tf: _tar_file(tf, "/etc/evil.txt")), "absolute path"),
    "tar-symlink-out": ("evil.tar.gz", lambda: _tar_bytes(lambda tf: _tar_link(tf, "data/link", "../../outside")),
                        "points outside"),
    "tar-symlink-abs": ("evil.tar.gz", lambda: _tar_bytes(lambda tf: _tar_link(tf, "data/link", "/etc/passwd")),
                        "absolute path"),
    "tar-hardlink-out": ("evil.tar.gz", lambda: _tar_bytes(
        lambda tf: _tar_link(tf, "data/hard", "../outside", tarfile.LNKTYPE)), "points outside"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archives_are_refused(tmp_path, case):
    name, build, message = UNSAFE[case]
    archive = tmp_path / name
    archive.write_bytes(build())
    target = tmp_path / "box" / "extracted"
    with pytest.raises(ds.UnsafeArchiveError, match=message):
        ds.safe_extract(archive, target, fingerprint="x")
    assert not target.exists()
    assert cache_listing(tmp_path) == [name]                    # nothing written anywhere
    assert not Path("/tmp/qsmbench-evil.txt").exists()


def test_safe_links_inside_the_archive_are_fine(tmp_path):
    archive = tmp_path / "ok.tar.gz"

    def add(tf):
        _tar_file(tf, "data/a.nii", b"abc")
        _tar_link(tf, "data/b.nii", "a.nii")
    archive.write_bytes(_tar_bytes(add))
    target = ds.safe_extract(archive, tmp_path / "out", fingerprint="f")
    assert (target / "data" / "b.nii").read_bytes() == b"abc"


def test_unsafe_archive_download_is_refused_and_not_kept(server, tmp_path):
    arrays, archive, hashes = qsm2016_archive()
    evil = zip_bytes({"data/phs_tissue.nii": b"x", "../escape.txt": b"pwned"})
    server.add(f"qsm2016/{ARCHIVE}", evil)
    with pytest.raises(ds.UnsafeArchiveError, match="refused"):
        ds.fetch(qsm2016_manifest(tmp_path, hashes), cache=tmp_path / "cache", mirror=server.url)
    assert not (tmp_path / "cache" / "qsm2016" / ARCHIVE).exists()
    assert not (tmp_path / "cache" / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "cache" / "qsm2016" / "extracted").exists() or \
        not any((tmp_path / "cache" / "qsm2016" / "extracted").iterdir())


def test_corrupt_archive_is_reported(server, tmp_path):
    arrays, archive, hashes = qsm2016_archive()
    server.add(f"qsm2016/{ARCHIVE}", b"this is not a zip file at all")
    with pytest.raises(InputError, match="neither a zip nor a tar archive"):
        ds.fetch(qsm2016_manifest(tmp_path, hashes), cache=tmp_path / "cache", mirror=server.url)
    assert not (tmp_path / "cache" / "qsm2016" / ARCHIVE).exists()


# =========================================================================== RC2 (gated)
def test_gated_without_credentials_explains_the_agreement(rc2, server):
    with pytest.raises(ds.GatedDataError) as err:
        ds.fetch(rc2["manifest"], cache=rc2["cache"], mirror=server.url)
    msg = str(err.value)
    folder = rc2["cache"].resolve() / "rc2"
    for text in ("gated", "RU-DI-HD-1.0", "doi:10.34973/m20r-jt17", "https://doi.org/10.34973/m20r-jt17",
                 "QSMBENCH_RC2_USER", "QSMBENCH_RC2_PASSWORD", "data-use agreement",
                 str(folder / "Sim2Snr1" / "GT" / "Chi.nii.gz"), "checksums.lock.json"):
        assert text in msg, text
    assert re.search(rf"Sim2Snr1/Frequency.nii.gz +->  {re.escape(str(folder / 'Sim2Snr1' / 'Frequency.nii.gz'))}",
                     msg)
    assert "used when present (without them: no magnitude; no scoring_mask, calc_moment)" in msg
    assert len(re.findall(r"FilestructureForEval.mat +->", msg)) == 1   # one .mat file, two roles
    assert server.requests == []                                  # nothing was asked


def test_gated_download_with_credentials_and_conversion(rc2, server, tmp_path, monkeypatch):
    monkeypatch.setenv("QSMBENCH_RC2_USER", USER)
    monkeypatch.setenv("QSMBENCH_RC2_PASSWORD", PASSWORD)
    out = tmp_path / "rc2_sim2snr1"
    with pytest.warns(ds.NoOfficialChecksumWarning, match="rc2/Sim2Snr1/"):
        ds.prepare_dataset(rc2["manifest"], out, cache=rc2["cache"], mirror=server.url)
    assert server.gets() == 6                      # six files; the .mat serves two roles
    vol = load_volume(out)
    a = rc2["arrays"]
    # Hz -> ppm at 7 T: f / (42.57747892 MHz/T * 7 T) = f / 298.04 (hand value)
    np.testing.assert_allclose(vol.field_ppm, a["freq_hz"] / (GAMMA_BAR_MHZ_PER_T * 7.0), rtol=1e-6)
    np.testing.assert_allclose(vol.field_ppm, a["freq_hz"] / 298.0423524, rtol=1e-6)
    np.testing.assert_array_equal(vol.mask, a["brain"])
    np.testing.assert_array_equal(vol.scoring_mask, a["eroded"])
    np.testing.assert_array_equal(vol.eval_mask, a["eroded"])
    np.testing.assert_array_equal(vol.references["chi"], a["chi"])
    np.testing.assert_array_equal(vol.labels, a["labels"])
    np.testing.assert_array_equal(vol.magnitude, a["magnitude"][..., 0])        # the first echo
    assert vol.b0_tesla == 7.0 and vol.te_s == 0.004 and vol.b0_dir == (0.0, 0.0, 1.0)
    # the echo spacing (MEDI's radians are per echo spacing) reaches the methods
    assert vol.meta["echo_spacing_s"] == 0.008 and vol.for_method().meta["echo_spacing_s"] == 0.008
    meta = json.loads((out / "meta.json").read_text())
    assert meta["metric_extras"] == {"label_scheme": "rc2", "calc_moment_gt": -1.25}
    assert meta["original_units"]["field"] == "Hz" and "Hz -> ppm" in meta["conversions"][0]
    lock = json.loads((rc2["cache"] / ds.LOCK_NAME).read_text())["files"]
    assert set(lock) == {f"rc2/Sim2Snr1/{rel}" for rel in rc2["files"]}
    # a second use verifies against the lock and asks nothing
    n = len(server.requests)
    ds.prepare_dataset(rc2["manifest"], out, cache=rc2["cache"], mirror=server.url)
    assert len(server.requests) == n


def test_public_per_file_download_with_official_checksums(server, tmp_path):
    arrays, files = tiny_rc2()
    for rel, data in files.items():
        server.add(f"open/Sim2Snr1/{rel}", data)
    sums = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}

    def public(d):
        d["name"] = "open_sim"
        d["source"] = {"type": "url", "cache_subdir": "open", "base_url": "https://example.org/collection"}
        d["geometry"]["shape"] = list(SHAPE_RC2)
        for f in d["files"]:
            f["sha256"] = sums[f["path"].split("/", 1)[1]]
    manifest = write_manifest(tmp_path, "rc2_sim2snr1", public)
    result = ds.fetch(manifest, cache=tmp_path / "cache", mirror=server.url)     # no warning: all official
    assert {c["status"] for c in result.checksums.values()} == {"official"}
    assert not (tmp_path / "cache" / ds.LOCK_NAME).exists()
    server.routes["/open/Sim2Snr1/GT/Chi.nii.gz"].corrupt = True
    (tmp_path / "cache" / "open" / "Sim2Snr1" / "GT" / "Chi.nii.gz").unlink()
    with pytest.raises(ds.ChecksumError, match="Chi.nii.gz is corrupt|is corrupt"):
        ds.fetch(manifest, cache=tmp_path / "cache", mirror=server.url, retries=0)
    assert not (tmp_path / "cache" / "open" / "Sim2Snr1" / "GT" / "Chi.nii.gz").exists()


def test_gated_wrong_credentials(rc2, server, monkeypatch):
    monkeypatch.setenv("QSMBENCH_RC2_USER", USER)
    monkeypatch.setenv("QSMBENCH_RC2_PASSWORD", "wrong")
    with pytest.raises(ds.DownloadError, match="HTTP 401.*credentials") as err:
        ds.fetch(rc2["manifest"], cache=rc2["cache"], mirror=server.url, retries=3)
    assert err.value.status == 401 and server.gets() == 1


def test_gated_files_placed_by_hand(rc2, server, tmp_path):
    folder = rc2["cache"] / "rc2" / "Sim2Snr1"
    for rel, data in rc2["files"].items():
        if rel != "GT/FilestructureForEval.mat":          # optional: the scoring mask falls back to the mask
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
    out = tmp_path / "placed"
    with pytest.warns(ds.NoOfficialChecksumWarning):
        ds.prepare_dataset(rc2["manifest"], out, cache=rc2["cache"], mirror=server.url)
    assert server.requests == []
    vol = load_volume(out)
    assert vol.scoring_mask is None and "calc_moment_gt" not in vol.meta["metric_extras"]
    lock = json.loads((rc2["cache"] / ds.LOCK_NAME).read_text())["files"]
    assert lock["rc2/Sim2Snr1/Frequency.nii.gz"]["origin"].startswith("placed by hand")
    (folder / "GT" / "Chi.nii.gz").write_bytes(rc2["files"]["GT/Segmentation.nii.gz"])   # swapped by mistake
    with pytest.raises(ds.ChecksumError, match="GT/Chi.nii.gz .*has changed since"):
        ds.fetch(rc2["manifest"], cache=rc2["cache"])


def test_mat_v73_without_h5py_says_so(tmp_path):
    pytest.importorskip("scipy")
    try:
        import h5py  # noqa: F401
        pytest.skip("h5py is installed")
    except ImportError:
        pass
    path = tmp_path / "FilestructureForEval.mat"
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2020 HDF5 schema 1.00 ."
    path.write_bytes(header.ljust(124, b" ") + b"\x00\x02IM" + b"\x00" * 512)
    with pytest.raises(InputError, match=r"MATLAB v7.3 file \(HDF5\).*needs the h5py package.*pip install h5py"):
        ds.read_mat_variable(path, "maskEroded")


def test_mat_missing_variable(tmp_path):
    path = tmp_path / "x.mat"
    scipy.io.savemat(path, {"other": np.ones(3)})
    with pytest.raises(InputError, match="has no variable 'maskEroded' \\(it has: other\\)"):
        ds.read_mat_variable(path, "maskEroded")


# =========================================================================== your own data
def local_manifest(tmp_path, *, phase=True, truth=True) -> tuple[Path, dict]:
    rng = np.random.default_rng(3)
    shape = (8, 9, 10)
    mask = ellipsoid(shape)
    field_ppm = rng.normal(0, 0.05, shape).astype(np.float32)
    chi = rng.normal(0, 0.05, shape).astype(np.float32)
    data_dir = tmp_path / "scan"
    data_dir.mkdir()
    b0, te = 3.0, 0.02
    phase_rad = field_ppm * (2 * np.pi * GAMMA_BAR_MHZ_PER_T * b0 * te) / 1e6 * 1e6   # ppm -> rad (gamma in MHz)
    (data_dir / "local_phase_rad.nii.gz").write_bytes(gzip.compress(nifti_bytes(phase_rad.astype(np.float32),
                                                                                (1, 1, 2))))
    (data_dir / "field_ppb.nii").write_bytes(nifti_bytes(field_ppm * 1000, (1, 1, 2)))
    (data_dir / "brain_mask.nii.gz").write_bytes(gzip.compress(nifti_bytes(mask.astype(np.uint8), (1, 1, 2))))
    if truth:
        (data_dir / "chi_reference_ppm.nii.gz").write_bytes(gzip.compress(nifti_bytes(chi, (1, 1, 2))))

    def edit(d):
        d["name"] = "my_scan"
        d["source"]["root"] = str(data_dir)
        if not phase:
            d["files"][0] = {"role": "field", "path": "field_ppb.nii", "units": "ppb"}
    return write_manifest(tmp_path, "example_local", edit), {"field": field_ppm, "mask": mask, "chi": chi}


def test_local_phase_in_radians(tmp_path, server):
    manifest, a = local_manifest(tmp_path)
    out = ds.prepare_dataset(manifest, tmp_path / "out")
    vol = load_volume(out)
    # 3 T, TE 20 ms: 1 ppm = 2*pi*42.57747892*3*0.02 rad = 16.0513 rad (hand value)
    assert 2 * np.pi * GAMMA_BAR_MHZ_PER_T * 3 * 0.02 == pytest.approx(16.05128, rel=1e-5)
    np.testing.assert_allclose(vol.field_ppm, a["field"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(vol.voxel_size_mm, (1, 1, 2))
    np.testing.assert_array_equal(vol.references["chi"], a["chi"])
    assert vol.magnitude is None                           # optional, absent
    assert ds.dataset_has_truth(manifest)
    assert server.requests == []


def test_local_field_in_ppb_without_truth(tmp_path):
    manifest, a = local_manifest(tmp_path, phase=False, truth=False)
    assert not ds.dataset_has_truth(manifest)
    vol = load_volume(ds.prepare_dataset(manifest, tmp_path / "out"))
    np.testing.assert_allclose(vol.field_ppm, a["field"], rtol=1e-5)
    assert vol.references == {}


def test_local_missing_file_names_it(tmp_path):
    manifest, _ = local_manifest(tmp_path)
    (tmp_path / "scan" / "brain_mask.nii.gz").unlink()
    with pytest.raises(InputError, match=r"key 'files.1.path': the mask file .*brain_mask.nii.gz does not exist"):
        ds.fetch(manifest)


def test_shape_mismatch_with_the_manifest_is_an_error(qsm2016, server, tmp_path):
    manifest = qsm2016_manifest(tmp_path, qsm2016["hashes"], lambda d: d["geometry"].update(shape=[160, 160, 160]))
    with pytest.warns(ds.NoOfficialChecksumWarning), \
            pytest.raises(InputError, match=r"has shape \(12, 12, 10\), but the manifest .* says \(160, 160, 160\)"):
        ds.prepare_dataset(manifest, tmp_path / "out", cache=qsm2016["cache"], mirror=server.url)


def test_simulated_manifest(tmp_path):
    manifest = write_manifest(tmp_path, "phantom", lambda d: d["source"]["parameters"].update(
        shape=[16, 16, 16], voxel_size_mm=[4, 4, 4], oversample=1))
    vol = load_volume(ds.prepare_dataset(manifest, tmp_path / "out"))
    assert vol.shape == (16, 16, 16) and "chi" in vol.references


# =========================================================================== command line, config
def test_fetch_dry_run_prints_what_where_and_how_big(qsm2016, server, capsys):
    rc = main(["fetch", str(qsm2016["manifest"]), "--dry-run", "--mirror", server.url,
               "--cache", str(qsm2016["cache"])])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"from {server.url}/qsm2016/{ARCHIVE}" in out
    assert f"to   {qsm2016['cache'].resolve() / 'qsm2016' / ARCHIVE}" in out
    size = len(qsm2016["archive"])
    assert f"size: {size / 1000:.1f} kB (from a HEAD request)" in out
    assert "trust on first use" in out and "doi:10.1002/mrm.26830" in out
    assert server.gets() == 0 and [m for m, _ in server.requests] == ["HEAD"]
    assert not qsm2016["cache"].exists() or not list(qsm2016["cache"].rglob(ARCHIVE))


def test_fetch_dry_run_size_from_the_manifest_needs_no_request(qsm2016, server, tmp_path, capsys):
    manifest = qsm2016_manifest(tmp_path, qsm2016["hashes"],
                                lambda d: d["source"]["archive"].update(size_bytes=245_000_000))
    assert main(["fetch", str(manifest), "--dry-run", "--mirror", server.url]) == 0
    assert "size: 245.0 MB (from the manifest)" in capsys.readouterr().out
    assert server.requests == []


def test_fetch_dry_run_of_the_real_manifest_offline(capsys):
    assert main(["fetch", "qsm2016", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "http://www.neuroimaging.at/media/qsm/20170327_qsm2016_recon_challenge.zip" in out
    assert "size: unknown (HEAD request failed" in out and "about 245 MB" in out


def test_fetch_command_downloads_and_gated_error(qsm2016, rc2, server, capsys):
    with pytest.warns(ds.NoOfficialChecksumWarning):
        assert main(["fetch", str(qsm2016["manifest"]), "--mirror", server.url,
                     "--cache", str(qsm2016["cache"])]) == 0
    assert "qsm2016: 6 file(s) verified" in capsys.readouterr().out
    assert main(["fetch", str(rc2["manifest"]), "--cache", str(rc2["cache"])]) == 2
    assert "RU-DI-HD-1.0" in capsys.readouterr().err


def test_config_manifest_datasets(tmp_path):
    from qsmbench.config import dataset_geometry, dataset_has_truth, validate_config

    base = {"perturbations": ["none"], "methods": {"tkd": {}}}
    cfg = validate_config({**base, "datasets": {"qsm2016": {"type": "manifest", "manifest": "qsm2016"},
                                                "sim": {"type": "manifest", "manifest": "rc2_sim2snr1",
                                                        "mirror": "http://127.0.0.1:1/m"},
                                                "phantom": {"type": "phantom"}}})
    assert dataset_has_truth(cfg, "qsm2016") and dataset_has_truth(cfg, "sim") and dataset_has_truth(cfg, "phantom")
    own, _ = local_manifest(tmp_path, truth=False)
    cfg = validate_config({**base, "datasets": {"mine": {"type": "manifest", "manifest": str(own)}}})
    assert not dataset_has_truth(cfg, "mine")
    assert dataset_geometry(cfg, "mine") is None                      # only the data know
    cfg = validate_config({**base, "datasets": {"qsm2016": {"type": "manifest"}}})   # manifest = the id
    assert dataset_geometry(cfg, "qsm2016") == {"shape": (160, 160, 160), "voxel_size_mm": (1.0625, 1.0625, 1.0714),
                                                "b0_dir": (0.0, 0.0, 1.0)}
    with pytest.raises(ConfigError, match="key 'datasets.x.manifest': unknown dataset manifest 'nosuch'"):
        validate_config({**base, "datasets": {"x": {"type": "manifest", "manifest": "nosuch"}}})
    bad = write_manifest(tmp_path, "qsm2016", lambda d: d["files"][0].update(role="truthh"))
    with pytest.raises(ConfigError, match=r"key 'datasets.x.manifest': .*qsm2016.yaml: key 'files.0.role'"):
        validate_config({**base, "datasets": {"x": {"type": "manifest", "manifest": str(bad)}}})
    with pytest.raises(ConfigError, match="key 'datasets.x.mirror'"):
        validate_config({**base, "datasets": {"x": {"type": "manifest", "manifest": "qsm2016", "mirror": 3}}})


def test_default_config_stays_offline_and_paper_config_has_the_challenge_data():
    from qsmbench.config import load_config

    default = load_config(ROOT / "config" / "config.yaml")
    assert {s["type"] for s in default["datasets"].values()} == {"phantom"}
    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    manifests = {s.get("manifest", name) for name, s in paper["datasets"].items() if s["type"] == "manifest"}
    assert manifests >= {"qsm2016", "rc2_sim1snr1", "rc2_sim1snr2", "rc2_sim2snr1", "rc2_sim2snr2"}



# =========================================================================== availability (workflow start-up)
def test_availability_of_gated_data(rc2, server, tmp_path, monkeypatch):
    """Gated files absent and no credentials: the reason names the dataset and the command that
    explains access, and nothing is asked of the server; placed by hand or with credentials: ok."""
    why = ds.availability(rc2["manifest"], cache=rc2["cache"], mirror=server.url)
    assert why.startswith("dataset 'rc2_sim2snr1' is gated (doi:10.34973/m20r-jt17")
    assert "'qsmbench fetch rc2_sim2snr1' explains how to get access" in why
    assert "QSMBENCH_RC2_USER/QSMBENCH_RC2_PASSWORD" in why and str(rc2["cache"].resolve() / "rc2") in why
    assert server.requests == []
    monkeypatch.setenv("QSMBENCH_RC2_USER", USER)
    monkeypatch.setenv("QSMBENCH_RC2_PASSWORD", PASSWORD)
    assert ds.availability(rc2["manifest"], cache=rc2["cache"], mirror=server.url) is None
    assert server.gets() == 0 and [m for m, _ in server.requests] == ["HEAD"]     # asked, downloaded nothing
    monkeypatch.setenv("QSMBENCH_RC2_PASSWORD", "wrong")
    assert "answered HTTP 401" in ds.availability(rc2["manifest"], cache=rc2["cache"], mirror=server.url)
    monkeypatch.delenv("QSMBENCH_RC2_USER")
    folder = rc2["cache"] / "rc2" / "Sim2Snr1"
    for rel, data in rc2["files"].items():            # every required file placed by hand
        if rel != "GT/FilestructureForEval.mat":
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
    n = len(server.requests)
    assert ds.availability(rc2["manifest"], cache=rc2["cache"], mirror=server.url) is None
    assert len(server.requests) == n


def test_availability_of_a_public_download(qsm2016, server, tmp_path):
    """Reachable: ok after one HEAD request (no download); cached: ok without any request;
    unreachable (no network, or the server closed) and not cached: the reason says what to do."""
    assert ds.availability(qsm2016["manifest"], cache=qsm2016["cache"], mirror=server.url) is None
    assert server.gets() == 0 and len(server.requests) == 1
    offline = ds.availability(qsm2016["manifest"], cache=qsm2016["cache"])        # the real origin: offline
    assert offline.startswith("dataset 'qsm2016' cannot be downloaded now: http://www.neuroimaging.at/")
    assert "is unreachable" in offline and f"the file {ARCHIVE} is not in the cache" in offline
    assert "Run 'qsmbench fetch qsm2016' where the network is" in offline
    server.routes.clear()
    assert "answered HTTP 404" in ds.availability(qsm2016["manifest"], cache=qsm2016["cache"], mirror=server.url)
    url = server.url
    server.close()
    assert "is unreachable" in ds.availability(qsm2016["manifest"], cache=qsm2016["cache"], mirror=url, timeout=5)
    folder = qsm2016["cache"] / "qsm2016"
    folder.mkdir(parents=True)
    (folder / ARCHIVE).write_bytes(qsm2016["archive"])
    assert ds.availability(qsm2016["manifest"], cache=qsm2016["cache"]) is None   # cached: no request at all


def test_availability_of_local_and_simulated_data(tmp_path):
    manifest, _ = local_manifest(tmp_path)
    assert ds.availability(manifest) is None
    assert ds.availability("phantom") is None
