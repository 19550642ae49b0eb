"""TKD: truncated k-space division."""

from __future__ import annotations

import numpy as np

from qsmbench.backend import for_method as backend_for
from qsmbench.errors import ConfigError
from qsmbench.method import Method
from qsmbench.operators import kspace_filter
from qsmbench.physics import dipole_kernel
from qsmbench.tuning import LogRange

#: Variant -> (threshold t, D(0)).
VARIANTS = {"official2016": (0.19, 1.0 / 3.0), "shmueli": (0.15, 0.0)}


class TKD(Method):
    """Truncated k-space division (Shmueli et al., MRM 2009).

    ``chi = m . Re F^-1[F(f) . K]`` with ``K = 1/D`` where ``|D| > t``.  Two variants:

    * ``official2016`` (default, the 2016 challenge organisers' baseline): ``K = 0`` where
      ``|D| <= t``, ``t = 0.19``, ``D(0) = 1/3``, field not masked before the FFT.
    * ``shmueli``: ``K = sign(D)/t`` where ``|D| <= t``, ``t = 0.15``, ``D(0) = 0`` (so the mean
      of chi is set to zero).

    Parameters
    ----------
    variant : "official2016" or "shmueli".
    threshold : truncation level t of |D|; ``None`` takes the variant's value.
    d0 : D(0); ``None`` takes the variant's value.
    mask_field : multiply the field by the mask before the inversion (default False: the
        2016 baseline inverted the unmasked tissue field).
    pad_factor : zero padding of the field before the FFT (1 = none, as the organisers).

    Input field and output chi are in ppm; the method is linear in the field.
    """

    name = "tkd"
    symmetry = "linear"   # a fixed k-space filter
    uses = {"gpu_optional"}   # torch on a CUDA device when device cuda is asked for (qsmbench.backend)
    parameters = {"variant": "official2016", "threshold": None, "d0": None,
                  "mask_field": False, "pad_factor": 1.0}
    parameter_types = {"threshold": float, "d0": float}
    #: searched by qsmbench.tuning (a larger threshold truncates more: regularises more)
    tunable = {"threshold": LogRange(0.04, 0.5, 7, regularises="up")}
    references = [
        "Shmueli K et al. Magnetic susceptibility mapping of brain tissue in vivo using MRI "
        "phase data. MRM 2009;62:1510-1522. doi:10.1002/mrm.22135",
        "Langkammer C et al. Quantitative susceptibility mapping: report from the 2016 "
        "reconstruction challenge. MRM 2018;79:1661-1673. doi:10.1002/mrm.26830",
    ]

    def reconstruct(self, vol):
        p = self.params
        if p["variant"] not in VARIANTS:
            raise ConfigError(f"tkd: unknown variant {p['variant']!r}; known: {', '.join(VARIANTS)}")
        t_default, d0_default = VARIANTS[p["variant"]]
        t = float(p["threshold"] if p["threshold"] is not None else t_default)
        d0 = float(p["d0"] if p["d0"] is not None else d0_default)
        if not 0 < t < 2 / 3:
            raise ConfigError(f"tkd: threshold must be in (0, 2/3), got {t}")
        field = vol.field_ppm * vol.mask if p["mask_field"] else vol.field_ppm

        def inverse_filter(shape):
            d = dipole_kernel(shape, vol.voxel_size_mm, vol.b0_dir, d0=d0, rfft=True, dtype=np.float32)
            keep = np.abs(d) > t
            with np.errstate(divide="ignore"):
                k = np.where(keep, 1.0 / d, 0.0 if p["variant"] == "official2016" else np.sign(d) / t)
            return k.astype(np.float32)

        chi = kspace_filter(field.astype(np.float32), inverse_filter, pad_factor=p["pad_factor"],
                            backend=backend_for(self))
        return chi * vol.mask
