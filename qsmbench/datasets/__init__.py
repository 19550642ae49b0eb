"""Datasets: manifests, verified downloads, safe extraction and conversion to the canonical layout.

``data_manifests/*.yaml`` describe every dataset (format: ``qsmbench/schemas/manifest.schema.json``).

* :func:`load_manifest` / :func:`list_manifests` -- find and validate manifests
  (:mod:`qsmbench.datasets.manifest`);
* :func:`fetch` -- download (pooch: retries, progress, atomic placement), verify (sha256, or trust
  on first use recorded in the cache's lock file), safely extract and locate the files
  (:mod:`qsmbench.datasets.fetch`); :func:`plan_fetch` / :func:`format_plan` -- the dry run;
* :func:`prepare_dataset` -- fetch + convert to ``results/data/{dataset}/``
  (:mod:`qsmbench.datasets.convert`).

Data live in :func:`cache_root` (``$QSMBENCH_DATA`` or the per-user cache folder), never in the
repository; a mirror (``$QSMBENCH_MIRROR``) can replace every origin.
"""

from .cache import (
    ENV_DATA,
    LOCK_NAME,
    ChecksumError,
    ChecksumLock,
    NoOfficialChecksumWarning,
    cache_root,
    sha256_file,
)
from .convert import build_volume, field_to_ppm, prepare_dataset, read_mat_variable
from .download import DownloadError, download
from .extract import UnsafeArchiveError, safe_extract
from .fetch import ENV_MIRROR, FetchResult, GatedDataError, availability, fetch, format_plan, plan_fetch
from .manifest import FileSpec, Manifest, ManifestError, find_manifest, list_manifests, load_manifest

__all__ = [
    "ENV_DATA", "ENV_MIRROR", "LOCK_NAME", "ChecksumError", "ChecksumLock", "DownloadError", "FetchResult",
    "availability",
    "FileSpec", "GatedDataError", "Manifest", "ManifestError", "NoOfficialChecksumWarning", "UnsafeArchiveError",
    "build_volume", "cache_root", "dataset_has_truth", "download", "fetch", "field_to_ppm", "find_manifest",
    "format_plan", "list_manifests", "load_manifest", "plan_fetch", "prepare_dataset", "read_mat_variable",
    "safe_extract", "sha256_file",
]


def dataset_has_truth(manifest) -> bool:
    """Whether a manifest (name, path or :class:`Manifest`) provides a reference χ map."""
    return load_manifest(manifest).has_truth
