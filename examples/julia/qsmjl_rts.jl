# qsmbench command plugin: QSM.jl's RTS on the files qsmbench wrote.
# usage: julia --project=DIR qsmjl_rts.jl FIELD_PPM.nii MASK.nii OUT.nii BX,BY,BZ DELTA MU RHO
using NIfTI, QSM

field_path, mask_path, out_path, bdir_text, delta, mu, rho = ARGS
ni = niread(field_path)
f = Float64.(ni.raw)
mask = niread(mask_path).raw .!= 0
vsz = Tuple(Float64.(voxel_size(ni.header)))
bdir = Tuple(parse.(Float64, split(bdir_text, ",")))
chi = rts(f, mask, vsz; bdir=bdir, delta=parse(Float64, delta), mu=parse(Float64, mu), rho=parse(Float64, rho))
niwrite(out_path, NIVolume(ni.header, Float32.(chi .* mask)))
println("qsmjl_rts: wrote ", out_path)
