"""CFL2: closed-form L2-regularised inversion."""

from __future__ import annotations

import numpy as np

from qsmbench.backend import for_method as backend_for
from qsmbench.errors import ConfigError
from qsmbench.method import Method
from qsmbench.operators import kspace_filter
from qsmbench.physics import difference_kernel_sq, dipole_kernel
from qsmbench.tuning import LogRange


class CFL2(Method):
    """Closed-form L2 (Bilgic et al., MRM 2014), the 2016 challenge's second baseline.

    ``chi = m . Re F^-1[ conj(D) F(f) / (|D|^2 + lambda sum_i |E_i|^2) ]`` with
    ``E_i = 1 - exp(2 pi i k_i / N_i)`` the periodic forward difference in k-space (integer
    frequency index, no voxel-size scaling), ``lambda = 0.09`` and ``D(0) = 1/3``.  At
    ``k = 0`` the denominator is ``1/9`` so the mean is recovered through ``D(0)``.

    Parameters
    ----------
    lam : regularisation weight lambda (dimensionless: field and chi both in ppm).
    d0 : D(0).
    mask_field : mask the field before the inversion (default False, as the 2016 baseline).
    pad_factor : zero padding of the field before the FFT (1 = none, as the organisers).
    """

    name = "cfl2"
    symmetry = "linear"   # a fixed k-space filter
    uses = {"gpu_optional"}   # torch on a CUDA device when device cuda is asked for (qsmbench.backend)
    parameters = {"lam": 0.09, "d0": 1.0 / 3.0, "mask_field": False, "pad_factor": 1.0}
    tunable = {"lam": LogRange(1e-3, 1.0, 7, regularises="up")}   # searched by qsmbench.tuning
    references = [
        "Bilgic B et al. Fast quantitative susceptibility mapping with L1-regularization and "
        "automatic parameter selection. MRM 2014;72:1444-1459. doi:10.1002/mrm.25029",
        "Langkammer C et al. Quantitative susceptibility mapping: report from the 2016 "
        "reconstruction challenge. MRM 2018;79:1661-1673. doi:10.1002/mrm.26830",
    ]

    def reconstruct(self, vol):
        p = self.params
        if not p["lam"] >= 0:
            raise ConfigError(f"cfl2: lam must be >= 0, got {p['lam']}")
        field = vol.field_ppm * vol.mask if p["mask_field"] else vol.field_ppm

        def inverse_filter(shape):
            d = dipole_kernel(shape, vol.voxel_size_mm, vol.b0_dir, d0=p["d0"], rfft=True)
            denom = d * d + p["lam"] * difference_kernel_sq(shape, rfft=True)
            with np.errstate(divide="ignore", invalid="ignore"):
                k = np.where(denom > 0, d / denom, 0.0)
            return k.astype(np.float32)

        chi = kspace_filter(field.astype(np.float32), inverse_filter, pad_factor=p["pad_factor"],
                            backend=backend_for(self))
        return chi * vol.mask
