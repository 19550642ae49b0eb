"""Imported reconstructions named in the configuration (no spec file needed)."""

from __future__ import annotations

from qsmbench.plugins import PrecomputedMethod


class Precomputed(PrecomputedMethod):
    """χ maps computed elsewhere, scored beside the rest and labelled *imported* (nothing is timed).

    Configure one run per tool, e.g.::

        methods:
          vendor_qsm:
            method: precomputed
            params: {maps: "maps/vendor/{dataset}/{perturbation}.nii.gz", unit: ppm}

    Parameters
    ----------
    maps : path pattern with ``{dataset}``, ``{perturbation}`` (and ``{run}``, the run id),
        relative to the workflow's working directory.  A job whose map does not exist gets the
        status ``not_run`` with the path it looked for.
    unit : ``ppm`` or ``ppb``, the unit of the maps (converted to ppm).

    Each map must be on the dataset's grid (same shape); values outside the mask are ignored,
    non-finite values inside it fail the run.  A spec file (``type: precomputed``, see
    :mod:`qsmbench.plugins`) does the same with its own name and references.
    """

    name = "precomputed"
    parameters = {"maps": "", "unit": "ppm"}
    references = ["Imported reconstructions: cite the tool that made the maps (the run's 'maps' parameter)"]
