"""BrainWeb subjects as QSM phantoms: download through the cache machinery, and conversion.

Offline: a local HTTP server on 127.0.0.1 plays the BrainWeb download form (query strings and
all) and serves twelve small fuzzy-membership files made here: a head of nested ellipsoids on a
36x44x36 grid of 2 mm (the real files are 362x434x362 of 0.5 mm; the grid is a module constant).
"""

from __future__ import annotations

import gzip
import socket
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from qsmbench.config import validate_config
from qsmbench.datasets import brainweb
from qsmbench.datasets.cache import ChecksumError, NoOfficialChecksumWarning
from qsmbench.errors import ConfigError, InputError
from qsmbench.phantom import BRAIN_LABELS, make_phantom

pytestmark = pytest.mark.filterwarnings("ignore::qsmbench.datasets.cache.NoOfficialChecksumWarning")

RAW = (36, 44, 36)  # stored (z, y, x)
RAW_VOXEL = 2.0
RAW_ORIGIN = (-36.0, -44.0, -36.0)  # MNI (x, y, z) of voxel 0: the grid spans about +-36, +-44, +-36 mm
SCALE = 4095


def fuzzy_head() -> dict[str, np.ndarray]:
    """Membership volumes (x, y, z) summing to SCALE: WM core, GM shell, CSF, dura, skull, fat,
    a vessel along the midline top, background outside."""
    n = RAW[::-1]
    g = [RAW_ORIGIN[a] + RAW_VOXEL * np.arange(n[a]) for a in range(3)]
    x, y, z = np.meshgrid(*g, indexing="ij")
    r = np.sqrt((x / 28.0) ** 2 + (y / 36.0) ** 2 + (z / 28.0) ** 2)
    cls = {c: np.zeros(n, dtype=np.float64) for c in brainweb.CLASSES}
    cls["wht"][r < 0.55] = 1
    cls["gry"][(r >= 0.55) & (r < 0.8)] = 1
    cls["csf"][(r >= 0.8) & (r < 0.9)] = 1
    cls["dura"][(r >= 0.9) & (r < 0.93)] = 1
    cls["skl"][(r >= 0.93) & (r < 1.05)] = 1
    cls["fat"][(r >= 1.05) & (r < 1.15)] = 1
    cls["bck"][r >= 1.15] = 1
    vessel = (np.abs(x) < 2.5) & (z > 12) & (z < 20) & (np.abs(y) < 20) & (r < 0.9)
    for c in cls:
        cls[c][vessel] = 0
    cls["ves"][vessel] = 1
    total = sum(cls.values())
    assert np.allclose(total, 1)
    return {c: np.rint(v * SCALE).astype("<u2") for c, v in cls.items()}


def raw_bytes(vol_xyz: np.ndarray) -> bytes:
    return gzip.compress(np.ascontiguousarray(vol_xyz.transpose(2, 1, 0)).astype("<u2").tobytes())


class BrainWebServer:
    """Serves /cgi/brainweb1?do_download_alias=subjectNN_CLASS&... and mirror paths."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files  # alias -> body
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                outer.requests.append(self.path)
                parts = urlsplit(self.path)
                if parts.path == "/cgi/brainweb1":
                    alias = parse_qs(parts.query).get("do_download_alias", [""])[0]
                    ok = parse_qs(parts.query).get("format_value") == ["raw_short"]
                    body = outer.files.get(alias) if ok else None
                elif parts.path.startswith("/mirror/brainweb/"):
                    name = parts.path.rsplit("/", 1)[1].removesuffix(".rawshort.gz")
                    body = outer.files.get(name)
                else:
                    body = None
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def head():
    return fuzzy_head()


@pytest.fixture
def server(head):
    s = BrainWebServer({f"subject04_{c}": raw_bytes(v) for c, v in head.items()})
    yield s
    s.close()


@pytest.fixture(autouse=True)
def offline_small_grid(monkeypatch, tmp_path):
    """Only 127.0.0.1 resolves; a private cache; the small test grid; no in-memory subject."""
    real = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise socket.gaierror(f"tests are offline: refusing to resolve {host}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)
    monkeypatch.setenv("QSMBENCH_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv("QSMBENCH_MIRROR", raising=False)
    monkeypatch.setattr(brainweb, "RAW_SHAPE", RAW)
    monkeypatch.setattr(brainweb, "RAW_VOXEL_MM", RAW_VOXEL)
    monkeypatch.setattr(brainweb, "RAW_ORIGIN_MM", RAW_ORIGIN)
    brainweb._TEMPLATES.clear()
    yield
    brainweb._TEMPLATES.clear()


def test_urls_and_cache_paths_follow_the_brainweb_form():
    url = brainweb.file_url(4, "gry")
    assert url.startswith("http://brainweb.bic.mni.mcgill.ca/cgi/brainweb1?do_download_alias=subject04_gry&")
    assert "format_value=raw_short" in url and "zip_value=gnuzip" in url
    assert brainweb.cache_key(45, "m-s") == "brainweb/subject45/subject45_m-s.rawshort.gz"
    assert len(brainweb.SUBJECTS) == 20 and len(brainweb.CLASSES) == 12


def test_download_records_checksums_on_first_use_then_verifies(server, tmp_path):
    with pytest.warns(NoOfficialChecksumWarning):
        files, sums = brainweb.fetch_subject(4, base_url=server.url + "/cgi/brainweb1")
    assert sorted(files) == sorted(brainweb.CLASSES)
    assert len([r for r in server.requests if r.startswith("/cgi/brainweb1?")]) == 12
    assert {v["status"] for v in sums.values()} == {"recorded"}
    lock = (tmp_path / "cache" / "checksums.lock.json").read_text()
    assert "brainweb/subject04/subject04_ves.rawshort.gz" in lock
    # second use: from the cache, verified against the recorded checksums, nothing downloaded
    n = len(server.requests)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoOfficialChecksumWarning)
        _, sums = brainweb.fetch_subject(4, base_url=server.url + "/cgi/brainweb1")
    assert len(server.requests) == n and {v["status"] for v in sums.values()} == {"recorded"}
    # a cached file that changed is refused
    files["gry"].write_bytes(raw_bytes(np.zeros(RAW[::-1], dtype="<u2")))
    with pytest.raises(ChecksumError, match="has changed since its checksum was recorded"):
        brainweb.fetch_subject(4, base_url=server.url + "/cgi/brainweb1")


def test_mirror_and_a_file_of_the_wrong_size(server, tmp_path):
    server.files["subject05_csf"] = gzip.compress(b"\0" * 100)  # not a volume of the grid
    for c in brainweb.CLASSES:
        server.files.setdefault(f"subject05_{c}", server.files[f"subject04_{c}"])
    with pytest.raises(InputError, match="expected .* not a BrainWeb raw_short volume"):
        brainweb.fetch_subject(5, mirror=server.url + "/mirror")
    assert any(r.startswith("/mirror/brainweb/subject05/") for r in server.requests)
    assert not (tmp_path / "cache" / brainweb.cache_key(5, "csf")).exists()  # a bad download is not kept
    with pytest.raises(InputError, match="does not exist"):
        brainweb.fetch_subject(7)


def test_conversion_to_a_qsm_phantom(server):
    brainweb.brainweb_template(4, mirror=server.url + "/mirror")
    v = make_phantom((24, 28, 24), (3.0, 3.0, 3.0), model="brainweb", subject=4, seed=2)
    assert v.meta["model"] == "brainweb" and v.meta["source"] == "BrainWeb phantom"
    assert v.meta["brainweb_subject"] == 4 and "Aubert-Broche" in v.meta["brainweb"]["citation"]
    lab = v.labels
    # the fuzzy classes became the RC2 labels: WM inside GM inside CSF, a vein, bone and fat outside
    c = tuple(n // 2 for n in lab.shape)
    assert lab[c] in (8, 1, 2, 3, 4, 5, 6, 7)
    for k in (8, 9, 10, 11, 13, 12):
        assert (lab == k).any(), k
    assert np.array_equal(v.mask, np.isin(lab, list(BRAIN_LABELS)))
    # intracranial volume: the ellipsoid r < 0.9 of semi-axes 28, 36, 28 mm (plus the closing)
    expected = 4 / 3 * np.pi * 28 * 36 * 28 * 0.9 ** 3 / 1000
    assert v.mask.sum() * 27 / 1000 == pytest.approx(expected, rel=0.15)
    assert v.references["chi"][lab == 11].mean() > 0.15  # the vessel class is venous blood (partial volume)
    assert np.all(v.field_ppm[~v.mask] == 0) and np.abs(v.field_ppm[v.mask]).max() > 0.01
    # the anatomy is the subject's: another seed changes the tissue, not the labels
    w = make_phantom((24, 28, 24), (3.0, 3.0, 3.0), model="brainweb", subject=4, seed=3)
    assert np.array_equal(w.labels[lab != 16], lab[lab != 16])
    assert not np.array_equal(w.references["chi"], v.references["chi"])


def test_memberships_that_do_not_sum_to_one_are_refused(server, head, tmp_path):
    bad = dict(head)
    bad["gry"] = (head["gry"].astype(np.int64) * 7 % 65536).astype("<u2")  # e.g. a wrong byte order
    for c, vol in bad.items():
        server.files[f"subject06_{c}"] = raw_bytes(vol)
    files, _ = brainweb.fetch_subject(6, mirror=server.url + "/mirror")
    with pytest.raises(InputError, match="not fuzzy memberships that sum to one"):
        brainweb.template_from_files(files, 6, raw_shape=RAW, raw_voxel_mm=RAW_VOXEL, raw_origin_mm=RAW_ORIGIN)


def test_config_accepts_brainweb_datasets_and_checks_the_subject():
    cfg = {"datasets": {"bw": {"type": "brainweb", "subject": 4, "seed": 3}}, "perturbations": ["none"],
           "methods": {"tkd": {}}}
    assert validate_config(cfg)["datasets"]["bw"]["subject"] == 4
    cfg["datasets"]["bw"]["subject"] = 7
    with pytest.raises(ConfigError, match="datasets.bw.subject"):
        validate_config(cfg)
    assert tuple(validate_config.__globals__["schema"]()["$defs"]["dataset"]["allOf"][1]["then"]["properties"]
                 ["subject"]["enum"]) == brainweb.SUBJECTS
