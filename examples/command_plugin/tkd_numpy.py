#!/usr/bin/env python3
"""A standalone TKD (truncated k-space division; Shmueli et al., MRM 2009, doi:10.1002/mrm.22135).

An example of a qsmbench *command plugin*: a program that knows nothing of qsmbench.  It needs
only numpy and nibabel, reads NIfTI files named on its command line and writes one.  The spec
beside it (``tkd_numpy.yaml``) tells qsmbench how to call it.

    python tkd_numpy.py --field FIELD_HZ.nii --mask MASK.nii --out CHI.nii --b0-tesla 3 \
        --b0-dir 0,0,1 [--threshold 0.15] [--pad 2]

The field is read in Hz (the spec asks qsmbench for units.field: hz) and converted to ppm with
f_ppm = f_Hz / (γ̄ B0), γ̄ = 42.57747892 MHz/T.  The voxel size comes from the NIfTI header.
Dipole kernel D(k) = 1/3 - (k·b̂)²/|k|², D(0) = 0; the inverse is 1/D where |D| > t and
sign(D)/t elsewhere (Shmueli's variant; sign(0) taken as +1).  The field is masked and zero
padded to ``pad`` times the matrix before the FFT.  χ is written in ppm, multiplied by the mask.
"""

import argparse
import sys

import nibabel as nib
import numpy as np

__version__ = "1.0"
GAMMA_BAR_MHZ_PER_T = 42.57747892


def dipole_kernel(shape, voxel_size, b0_dir):
    k = np.meshgrid(*[np.fft.fftfreq(n, d=v) for n, v in zip(shape, voxel_size)], indexing="ij")
    b = np.asarray(b0_dir, dtype=float) / np.linalg.norm(b0_dir)
    k2 = sum(ki**2 for ki in k)
    kb = sum(ki * bi for ki, bi in zip(k, b))
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 1.0 / 3.0 - kb**2 / k2
    d[k2 == 0] = 0.0
    return d


def tkd(field_ppm, mask, voxel_size, b0_dir, threshold, pad):
    shape = tuple(int(round(n * pad)) for n in field_ppm.shape)
    d = dipole_kernel(shape, voxel_size, b0_dir)
    sign = np.where(d >= 0, 1.0, -1.0)
    inverse = np.where(np.abs(d) > threshold, 1.0 / np.where(np.abs(d) > threshold, d, 1.0), sign / threshold)
    inverse[0, 0, 0] = 0.0  # D(0) = 0: the mean of chi is not determined
    spectrum = np.fft.fftn(field_ppm * mask, s=shape)
    chi = np.real(np.fft.ifftn(spectrum * inverse))[tuple(slice(0, n) for n in field_ppm.shape)]
    return chi * mask


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"tkd_numpy {__version__} (numpy {np.__version__})")
    p.add_argument("--field", required=True, help="local field NIfTI, Hz")
    p.add_argument("--mask", required=True)
    p.add_argument("--out", required=True, help="chi NIfTI to write, ppm")
    p.add_argument("--b0-tesla", type=float, required=True)
    p.add_argument("--b0-dir", default="0,0,1", help="unit B0 direction in array coordinates, x,y,z")
    p.add_argument("--threshold", type=float, default=0.15)
    p.add_argument("--pad", type=float, default=2.0)
    args = p.parse_args(argv)
    if not 0 < args.threshold < 2 / 3:
        print(f"tkd_numpy: --threshold must be in (0, 2/3), got {args.threshold}", file=sys.stderr)
        return 2
    img = nib.load(args.field)
    field_hz = np.asarray(img.dataobj, dtype=np.float64)
    mask = np.asarray(nib.load(args.mask).dataobj) > 0
    voxel_size = [float(z) for z in img.header.get_zooms()[:3]]
    b0_dir = [float(x) for x in args.b0_dir.split(",")]
    field_ppm = field_hz / (GAMMA_BAR_MHZ_PER_T * args.b0_tesla)
    chi = tkd(field_ppm, mask, voxel_size, b0_dir, args.threshold, args.pad)
    out = nib.Nifti1Image(chi.astype(np.float32), img.affine)
    nib.save(out, args.out)
    print(f"tkd_numpy: wrote {args.out} (t = {args.threshold}, pad = {args.pad}, voxel {voxel_size} mm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
