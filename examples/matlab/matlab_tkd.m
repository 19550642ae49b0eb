function matlab_tkd(inputs_json)
% MATLAB_TKD  TKD (Shmueli et al., MRM 2009) for qsmbench's command plugins.
%   matlab_tkd('qsmbench_inputs.json') reads the inputs qsmbench wrote (field in ppm, mask,
%   voxel size, B0 direction, parameters) and writes chi (ppm) to the path in "out".
%   D(k) = 1/3 - (k.b)^2/|k|^2, D(0) = 0; inverse 1/D where |D| > t, sign(D)/t elsewhere.
in = jsondecode(fileread(inputs_json));
info = niftiinfo(in.field);
f = double(niftiread(info));
mask = double(niftiread(in.mask)) > 0;
vsz = in.voxel_size(:)';
b = in.b0_dir(:)' / norm(in.b0_dir);
t = in.params.threshold;
sz = size(f);
k = cell(1, 3);
for d = 1:3
    n = sz(d);
    k{d} = ([0:ceil(n/2)-1, -floor(n/2):-1]) / (n * vsz(d));   % fftfreq
end
[kx, ky, kz] = ndgrid(k{1}, k{2}, k{3});
k2 = kx.^2 + ky.^2 + kz.^2;
D = 1/3 - (kx*b(1) + ky*b(2) + kz*b(3)).^2 ./ k2;
D(k2 == 0) = 0;
s = sign(D); s(s == 0) = 1;
iD = s / t;
keep = abs(D) > t;
iD(keep) = 1 ./ D(keep);
iD(1, 1, 1) = 0;
chi = real(ifftn(fftn(f .* mask) .* iD)) .* mask;
info.Datatype = 'single';
info.BitsPerPixel = 32;
niftiwrite(single(chi), in.out, info);
end
