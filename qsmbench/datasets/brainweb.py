"""The 20 BrainWeb anatomical models of normal brains as QSM phantoms (dataset type ``brainweb``).

BrainWeb (McConnell Brain Imaging Centre) publishes 20 anatomical models of normal adult brains
(Aubert-Broche B, Griffin M, Pike GB, Evans AC, Collins DL. Twenty new digital brain phantoms
for creation of validation image data bases. IEEE Trans Med Imaging 2006;25:1410-1416; the
NeuroImage 2006;32:138 companion paper describes the simulator): for each subject, *fuzzy*
tissue-membership volumes of 12 classes -- background, CSF, grey matter, white matter, fat,
muscle, muscle/skin, skull, vessels, fat around the head ("fat2"), dura mater, bone marrow --
on a 362x434x362 grid of 0.5 mm in ICBM (MNI) stereotaxic space.

Download
--------
Each class of each subject is one file from the BrainWeb server's download form
(:data:`BASE_URL`, ``do_download_alias=subjectNN_CLASS``, format ``raw_short`` (unsigned
16-bit, little-endian, x fastest: array order (z, y, x)), compression ``gnuzip``), cached as
``{cache}/brainweb/subjectNN/subjectNN_CLASS.rawshort.gz`` through the dataset machinery of
:mod:`qsmbench.datasets` (pooch downloads with retries, atomic placement, the per-user cache or
``QSMBENCH_DATA``, a mirror via ``QSMBENCH_MIRROR`` or the config's ``mirror``, serving
``{mirror}/brainweb/subjectNN/...``).  BrainWeb publishes no checksums: each file's sha256 is
recorded on first use in the cache's lock file (trust on first use) and verified on every later
use.  A file whose size or content is not a fuzzy membership volume is rejected (and deleted when
just downloaded).  BrainWeb's terms: free for research, cite the papers; no redistribution of
the files (they are never copied into results, only the derived phantom is).

Conversion
----------
The memberships are averaged over 2x2x2 blocks (0.5 -> 1 mm) and normalised to sum to one per
voxel (so the stored value scale does not matter).  Grey matter, white matter and CSF become
the template's tissue probabilities; vessels are painted as veins (label 11; BrainWeb's vessel
class does not tell veins from arteries -- treated as venous blood, an approximation); fat + fat2
(12), muscle + muscle/skin (15) and skull + marrow + dura (13) form the head outside the brain.
The brain mask is the largest connected region where CSF + GM + WM + vessels > 0.5, closed by
2 mm and with its holes filled.  The deep grey nuclei, which the BrainWeb models do not segment,
are placed at their MNI coordinates (:data:`qsmbench.anatomy.NUCLEI`) over the subject's grey and
white matter (the models are in MNI space; their real nuclei may lie a few millimetres away).
The subject's anatomy is not deformed (``deform=False``): the seed varies only the tissue (iron,
venous oxygenation, texture, coil shading; :mod:`qsmbench.tissue`) and the calcification.  The
chi/magnitude model and the field simulation are those of the ``mni`` model
(:func:`qsmbench.phantom.make_realistic`).
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage as ndi

from ..errors import InputError
from .cache import ChecksumLock, cache_root, check_file, file_mutex, trust_on_first_use
from .download import DEFAULT_RETRIES, download
from .fetch import _mirror

log = logging.getLogger("qsmbench.datasets")

#: Subject numbers of the 20 normal anatomical models.
SUBJECTS = (4, 5, 6, 18, 20, 38, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54)
#: The 12 fuzzy classes (download aliases) in BrainWeb's order.
CLASSES = ("bck", "csf", "gry", "wht", "fat", "mus", "m-s", "skl", "ves", "fat2", "dura", "mrw")
#: The BrainWeb download form.
BASE_URL = "http://brainweb.bic.mni.mcgill.ca/cgi/brainweb1"
#: Stored array shape (z, y, x), voxel size (mm) and the MNI position (x, y, z) of voxel 0.
RAW_SHAPE = (362, 434, 362)
RAW_VOXEL_MM = 0.5
RAW_ORIGIN_MM = (-90.25, -126.25, -72.25)
CACHE_SUBDIR = "brainweb"
FETCH_MUTEX = ".qsmbench-fetch.mutex"
CITATION = ("Aubert-Broche B, Griffin M, Pike GB, Evans AC, Collins DL. Twenty new digital brain phantoms for "
            "creation of validation image data bases. IEEE Trans Med Imaging 2006;25:1410-1416. "
            "Aubert-Broche B, Evans AC, Collins DL. A new improved version of the realistic digital brain phantom. "
            "NeuroImage 2006;32:138-145. https://brainweb.bic.mni.mcgill.ca/brainweb/")
LICENCE = ("BrainWeb data are free for research use; cite the papers above. The downloaded files stay in the "
           "user's cache and are not redistributed.")
#: Largest coefficient of variation of the per-voxel membership sum (fuzzy models sum to one).
MAX_SUM_CV = 0.2


def _check_subject(subject: int) -> int:
    if isinstance(subject, bool) or int(subject) != subject or int(subject) not in SUBJECTS:
        raise InputError(f"BrainWeb subject {subject!r} does not exist; the 20 normal models are "
                         f"{', '.join(str(s) for s in SUBJECTS)}")
    return int(subject)


def file_url(subject: int, tissue: str, base_url: str | None = None) -> str:
    """Download URL of one class of one subject on the BrainWeb server."""
    base = (base_url or BASE_URL).rstrip("/")
    return (f"{base}?do_download_alias=subject{subject:02d}_{tissue}&format_value=raw_short&zip_value=gnuzip"
            "&download_for_real=%5BStart+download%21%5D")


def cache_key(subject: int, tissue: str) -> str:
    """Path of a file relative to the cache root (also its path on a mirror)."""
    return f"{CACHE_SUBDIR}/subject{subject:02d}/subject{subject:02d}_{tissue}.rawshort.gz"


def read_raw(path: str | os.PathLike, shape=None) -> np.ndarray:
    """One class volume as uint16 in (x, y, z) order.  The file may be gzip-compressed or not (a
    server that declares ``Content-Encoding: gzip`` gets it decompressed in transit)."""
    shape = tuple(shape or RAW_SHAPE)
    path = Path(path)
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read the BrainWeb file {path}: {exc}") from None
    expected = int(np.prod(shape)) * 2
    if len(data) != expected:
        raise InputError(f"the BrainWeb file {path} holds {len(data)} bytes, expected {expected} (unsigned 16-bit "
                         f"values on a {'x'.join(str(n) for n in shape)} grid): not a BrainWeb raw_short volume")
    return np.frombuffer(data, dtype="<u2").reshape(shape).transpose(2, 1, 0)


def fetch_subject(subject: int, *, cache: str | os.PathLike | None = None, mirror: str | None = None,
                  base_url: str | None = None, retries: int = DEFAULT_RETRIES) -> tuple[dict[str, Path], dict]:
    """Download (if needed) and verify the 12 class files of one subject.

    Returns ``({class: path}, {cache key: {"sha256", "status", "origin"}})``.  Raises
    :class:`~qsmbench.datasets.download.DownloadError` or
    :class:`~qsmbench.datasets.cache.ChecksumError` naming the file.
    """
    subject = _check_subject(subject)
    root = cache_root(cache)
    lock = ChecksumLock(root)
    mirror = _mirror(mirror)
    folder = root / CACHE_SUBDIR / f"subject{subject:02d}"
    files, checksums = {}, {}
    with file_mutex(folder / FETCH_MUTEX):
        for tissue in CLASSES:
            key = cache_key(subject, tissue)
            path = root / key
            url = f"{mirror}/{key}" if mirror else file_url(subject, tissue, base_url)
            fresh = False
            if not path.is_file():
                download(url, path, sha256=None, retries=retries, what=f"BrainWeb subject {subject:02d} {tissue}")
                fresh = True
            else:
                log.info("BrainWeb subject %02d: using the cached %s", subject, path)
            try:
                sha, status = check_file(path, key, official=None, lock=lock,
                                         what=f"BrainWeb subject {subject:02d} {tissue}")
                read_raw(path)  # the size proves it is a volume of the expected grid
            except InputError:
                if fresh:
                    path.unlink(missing_ok=True)
                raise
            if status == "new":
                trust_on_first_use(path, key, sha, lock=lock, origin=url if fresh else f"placed by hand in {folder}")
                status = "recorded"
            files[tissue] = path
            checksums[key] = {"sha256": sha, "status": status, "origin": url if fresh else str(path)}
    return files, checksums


def _block_mean(a: np.ndarray) -> np.ndarray:
    """Mean over 2x2x2 blocks (odd trailing planes dropped), float32."""
    n = [s // 2 * 2 for s in a.shape]
    a = a[: n[0], : n[1], : n[2]].astype(np.float32)
    return a.reshape(n[0] // 2, 2, n[1] // 2, 2, n[2] // 2, 2).mean(axis=(1, 3, 5), dtype=np.float32)


def template_from_files(files: dict[str, Path], subject: int, *, raw_shape=None, raw_voxel_mm: float | None = None,
                        raw_origin_mm=None):
    """The :class:`qsmbench.anatomy.Template` of one subject's class files (module docstring)."""
    from ..anatomy import Template, signed_distance  # noqa: PLC0415

    raw_voxel_mm = float(raw_voxel_mm or RAW_VOXEL_MM)
    raw_origin = np.asarray(raw_origin_mm or RAW_ORIGIN_MM, dtype=float)
    maps: dict[str, np.ndarray] = {}
    total = None
    for tissue in CLASSES:
        m = _block_mean(read_raw(files[tissue], raw_shape))
        maps[tissue] = m
        total = m.copy() if total is None else total + m
    filled = total > 0
    if not filled.any():
        raise InputError(f"the BrainWeb files of subject {subject:02d} are all zero")
    sums = total[filled]
    cv = float(sums.std() / sums.mean())
    if cv > MAX_SUM_CV:
        raise InputError(f"the BrainWeb files of subject {subject:02d} are not fuzzy memberships that sum to one per "
                         f"voxel (coefficient of variation of the sums {cv:.2f} > {MAX_SUM_CV}); has the file format "
                         "or byte order changed?")
    inv = np.zeros_like(total)
    inv[filled] = 1.0 / total[filled]
    for k in maps:
        maps[k] *= inv
    del inv, total
    spacing = 2.0 * raw_voxel_mm
    origin = tuple(float(o) + 0.5 * raw_voxel_mm for o in raw_origin)
    brain = (maps["csf"] + maps["gry"] + maps["wht"] + maps["ves"]) > 0.5
    lab, n = ndi.label(brain)
    if n == 0:
        raise InputError(f"BrainWeb subject {subject:02d}: no brain (CSF + GM + WM + vessels > 0.5) found")
    sizes = ndi.sum_labels(brain, lab, index=np.arange(1, n + 1))
    brain = lab == (int(np.argmax(sizes)) + 1)
    r = max(1, int(round(2.0 / spacing)))
    ball = ndi.generate_binary_structure(3, 1)
    brain = ndi.binary_fill_holes(ndi.binary_closing(brain, structure=ball, iterations=r))
    step = 2 if spacing < 2.0 else 1
    sdf = np.ascontiguousarray(signed_distance(brain[::step, ::step, ::step], spacing * step))
    idx = [np.nonzero(brain.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
    centre = tuple(origin[ax] + spacing * 0.5 * (float(i[0]) + float(i[-1])) for ax, i in enumerate(idx))
    head = {"fat": maps["fat"] + maps["fat2"], "muscle": maps["mus"] + maps["m-s"],
            "bone": maps["skl"] + maps["mrw"] + maps["dura"]}
    return Template(name=f"BrainWeb anatomical model, subject {subject:02d} (fuzzy tissue memberships)",
                    gm=np.ascontiguousarray(maps["gry"]), wm=np.ascontiguousarray(maps["wht"]), sdf=sdf,
                    sdf_step=step, origin_mm=origin, spacing_mm=spacing, centre_mm=centre, citation=CITATION,
                    csf=np.ascontiguousarray(maps["csf"]), vessels=np.ascontiguousarray(maps["ves"]), head=head,
                    synthetic_vessels=False, add_csf_rim=False)


#: The last converted subject: {(subject, cache root, raw geometry): (template, checksums)}.
_TEMPLATES: dict[tuple, tuple[Any, dict]] = {}


def brainweb_template(subject: int, *, cache: str | os.PathLike | None = None,
                      mirror: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The anatomy template of one BrainWeb subject (fetched on first use) and its provenance.

    ``cache``: the data cache (default ``QSMBENCH_DATA`` or the per-user cache); ``mirror``: a
    mirror for the download (default ``QSMBENCH_MIRROR``).  The last subject converted is kept in
    memory, keyed by subject and cache (a phantom regenerated in the same process does not read
    the files again).  Provenance: subject, the files' checksums, citation, licence.
    """
    subject = _check_subject(subject)
    root = str(cache_root(cache))
    raw = (tuple(RAW_SHAPE), float(RAW_VOXEL_MM), tuple(RAW_ORIGIN_MM))
    key = (subject, root, raw)
    if key not in _TEMPLATES:
        files, checksums = fetch_subject(subject, cache=root, mirror=mirror)
        template = template_from_files(files, subject, raw_shape=raw[0], raw_voxel_mm=raw[1], raw_origin_mm=raw[2])
        _TEMPLATES.clear()
        _TEMPLATES[key] = (template, checksums)
    template, checksums = _TEMPLATES[key]
    info = {"subject": subject, "checksums": checksums, "citation": CITATION, "licence": LICENCE,
            "classes": list(CLASSES)}
    return template, info


def make_brainweb_phantom(subject: int, *, mirror: str | None = None, **kwargs):
    """:func:`qsmbench.phantom.make_phantom` of a BrainWeb subject, downloading through ``mirror``
    when given (keyword arguments: those of ``make_phantom`` except ``model`` and ``subject``)."""
    brainweb_template(subject, mirror=mirror)  # fetch with this mirror; make_phantom then finds it in memory
    from ..phantom import make_phantom  # noqa: PLC0415

    return make_phantom(model="brainweb", subject=subject, **kwargs)


def write_brainweb_phantom(outdir: str | os.PathLike, *, subject: int, mirror: str | None = None, **kwargs) -> Path:
    """The workflow's ``prepare_brainweb`` job: make the phantom and save it (canonical layout)."""
    from ..io import save_volume  # noqa: PLC0415

    return save_volume(make_brainweb_phantom(subject, mirror=mirror, **kwargs), outdir)


__all__ = ["BASE_URL", "CLASSES", "SUBJECTS", "brainweb_template", "cache_key", "fetch_subject", "file_url",
           "make_brainweb_phantom", "read_raw", "template_from_files", "write_brainweb_phantom"]
