"""Export a lossy training run as a model package: three ONNX graphs plus tables.

* ``encoder``: image (1,3,H,W) in [0,1] and per-channel gain -> latents y, hyper-latents z
* ``hyper``: integer hyper-latents -> [latent means in 1/8 units, table rows]
  (integer-exact; checked against pillow_nic.intnet's contract before export)
* ``decoder``: dequantised latents and inverse gain -> image
  (its transposed convolutions in their sub-pixel form)
* ``refine`` (encoder only): dequantised latents, inverse gain, target image and pixel
  weights -> gradient of the weighted squared error with respect to the latents
* ``tables``: Gaussian table family (radius 127), z table rows per rate level, gains, and
  the encoder's refinement hints (rate-distortion trade-off and synthesis energy per
  level, synthesis coupling)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qat  # noqa: E402
from export import release  # noqa: E402
from pillow_nic import intnet  # noqa: E402
from pillow_nic.lossy import LATENT_CLIP, MEAN_BITS  # noqa: E402
from lossy_ceiling import central_crops  # noqa: E402
from run import TRAINING_PHOTOS  # noqa: E402
from train_lossy import Codec, latent_tables, load_codec  # noqa: E402

ENERGY_PHOTOS = 3  # central crops of training photos the synthesis energies and coupling are measured on


class Encoder(nn.Module):
    def __init__(self, codec: Codec):
        super().__init__()
        self.codec = codec

    def forward(self, image: torch.Tensor, gain: torch.Tensor):
        y = self.codec.analyse(image) * gain
        return y, self.codec.hyper_analysis(y)


class SubpixelConvTranspose(nn.Module):
    """A transposed convolution of kernel 2s, stride s and padding s/2 as the same sums in
    another order: a 2x2 convolution (padding 1) to s*s times the channels, depth to space,
    and s/2 pixels cropped.  ONNX Runtime runs it without the transposed convolution's
    overlapping scatter-add (RUNS.md, session 13).  The integer hyper-synthesis keeps its
    transposed convolutions, which run faster there.
    Output pixel s*q + r - s/2 draws on inputs q - 1 + a (a = 0, 1) through kernel tap
    s*(1 - a) + r."""

    def __init__(self, layer: nn.ConvTranspose2d):
        super().__init__()
        (s, _), (p, _) = layer.stride, layer.padding
        if layer.stride != (s, s) or layer.kernel_size != (2 * s, 2 * s) or layer.padding != (p, p) or 2 * p != s:
            raise ValueError(f"no sub-pixel form for kernel {layer.kernel_size}, stride {layer.stride}, "
                             f"padding {layer.padding}")
        w = layer.weight.detach()  # (in, out, k, k): tap s*j + r, j = 1 - a
        cin, cout = w.shape[:2]
        taps = w.reshape(cin, cout, 2, s, 2, s).flip(2, 4)  # (in, out, a, ry, b, rx)
        self.weight = nn.Parameter(taps.permute(1, 3, 5, 0, 2, 4).reshape(cout * s * s, cin, 2, 2).contiguous())
        self.bias = nn.Parameter(layer.bias.detach().repeat_interleave(s * s))
        self.stride, self.crop = s, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.pixel_shuffle(F.conv2d(x, self.weight, self.bias, padding=1), self.stride)
        end = self.stride - self.crop
        return h[:, :, self.crop:-end, self.crop:-end]


def subpixel(layers: nn.Sequential) -> nn.Sequential:
    """``layers`` with each transposed convolution in its sub-pixel form."""
    return nn.Sequential(*[SubpixelConvTranspose(layer) if isinstance(layer, nn.ConvTranspose2d) else layer
                           for layer in layers])


class Decoder(nn.Module):
    def __init__(self, codec: Codec):
        super().__init__()
        self.synthesis = subpixel(codec.synthesis)

    def forward(self, latents: torch.Tensor, inv_gain: torch.Tensor):
        return torch.clamp(self.synthesis(latents * inv_gain), 0, 1)


class SynthesisGradient(nn.Module):
    """The encoder's refinement graph: the gradient, with respect to the dequantised latents
    (before the inverse gain), of the weighted squared error of the clamped synthesis against
    a target image, sum(weight * (clamp(x_hat, 0, 1) - image)**2), written out as the
    synthesis followed by its adjoint (a transposed convolution's adjoint is the convolution
    with the same weights), so plain ONNX operators compute it.  For the released synthesis
    layout: transposed convolution, inverse GDN, transposed convolution."""

    def __init__(self, codec: Codec):
        super().__init__()
        first, gdn, last = codec.synthesis
        if not (isinstance(first, nn.ConvTranspose2d) and getattr(gdn, "inverse", False)
                and isinstance(last, nn.ConvTranspose2d)):
            raise ValueError("the refinement graph is written for a direct synthesis "
                             "(transposed convolution, inverse GDN, transposed convolution)")
        self.first, self.gdn, self.last = first, gdn, last
        with torch.no_grad():  # constants of the graph, not operators on its weights
            self.register_buffer("gamma", gdn.gamma.abs().clone())
            self.register_buffer("gamma_t", gdn.gamma.abs().transpose(0, 1).contiguous())
            self.register_buffer("beta", gdn.beta.abs() + 1e-6)

    @staticmethod
    def _adjoint(grad: torch.Tensor, layer: nn.ConvTranspose2d) -> torch.Tensor:
        return F.conv2d(grad, layer.weight, stride=layer.stride, padding=layer.padding)

    def forward(self, latents: torch.Tensor, inv_gain: torch.Tensor, image: torch.Tensor,
                weight: torch.Tensor) -> torch.Tensor:
        a = self.first(latents * inv_gain)
        norm = F.conv2d(a.abs(), self.gamma, self.beta)
        x_hat = self.last(a * norm)
        inside = (torch.sign(x_hat) + torch.sign(1 - x_hat)) * 0.5  # 1 where the clamp passes
        err = 2 * weight * (torch.clamp(x_hat, 0, 1) - image) * inside
        grad_u = self._adjoint(err, self.last)
        # u = a * norm(|a|): du_i/da_k = norm_i [i = k] + a_i |gamma_ik| sign(a_k)
        grad_a = grad_u * norm + torch.sign(a) * F.conv2d(grad_u * a, self.gamma_t)
        return self._adjoint(grad_a, self.first) * inv_gain

    def check(self) -> None:
        """Agrees with autograd on random inputs, or ValueError."""
        m = self.first.weight.shape[0]
        latents = (torch.randn(1, m, 6, 5) * 3).round().requires_grad_(True)
        inv_gain = torch.rand(1, m, 1, 1) + 0.5
        image, weight = torch.rand(1, 3, 96, 80), (torch.rand(1, 1, 96, 80) > 0.2).float()
        x_hat = self.last(self.gdn(self.first(latents * inv_gain)))
        loss = (weight * (torch.clamp(x_hat, 0, 1) - image) ** 2).sum()
        (expected,) = torch.autograd.grad(loss, latents)
        with torch.no_grad():
            got = self(latents, inv_gain, image, weight)
        if not torch.allclose(got, expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item()):
            raise ValueError(f"refinement graph disagrees with autograd by {(got - expected).abs().max():.3g}")


class IntHyper(nn.Module):
    """The hyper-synthesis with exported integer weights, as plain convolutions."""

    def __init__(self, codec: Codec):
        super().__init__()
        self.layers = []
        act_exp = 0
        n = len(codec.hs)
        convs = []
        with torch.no_grad():
            for i, layer in enumerate(codec.hs):
                w, b = layer.weight, layer.bias
                spec = qat.export_hidden(w, b, act_exp) if i < n - 1 else qat.export_output(w, b, act_exp, MEAN_BITS)
                act_exp = qat.ACT_BITS
                conv = (nn.ConvTranspose2d(w.shape[0], w.shape[1], 4, 2, 1) if isinstance(layer, nn.ConvTranspose2d)
                        else nn.Conv2d(w.shape[1], w.shape[0], 1))
                conv.weight.copy_(torch.from_numpy(spec["weight"]))
                conv.bias.copy_(torch.from_numpy(spec["bias"]))
                convs.append(conv)
                self.layers.append(spec)
        self.convs = nn.ModuleList(convs)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for conv, spec in zip(self.convs, self.layers):
            scale = torch.tensor(2.0 ** -np.asarray(spec["shift"], np.float64), dtype=torch.float32)
            h = torch.floor(conv(h) * scale.view(1, -1, 1, 1))
            if spec["clip_max"] is not None:
                h = torch.clamp(h, 0, spec["clip_max"])
        return h

    def check_exact(self) -> None:
        """Worst-case sums below 2**24: each output sums (taps x in-channels) products."""
        bound = LATENT_CLIP
        for conv, spec in zip(self.convs, self.layers):
            w = np.abs(spec["weight"]).astype(np.float64)
            if isinstance(conv, nn.ConvTranspose2d):
                # stride 2, kernel 4: each output gets 2x2 taps per input channel
                per_out = max(w[:, :, a::2, b::2].sum(axis=(0, 2, 3)).max() for a in (0, 1) for b in (0, 1))
            else:
                per_out = w.sum(axis=(1, 2, 3)).max()
            worst = per_out * bound + np.abs(spec["bias"]).max()
            if worst >= intnet.EXACT_LIMIT or w.max() > intnet.WEIGHT_MAX:
                raise ValueError(f"hyper-synthesis layer not exact: bound {worst:.0f}")
            bound = spec["clip_max"] or 0


def decoded_latents(codec: Codec, y0: torch.Tensor, level: int) -> torch.Tensor:
    """The synthesis input a file at ``level`` decodes from the analysis' latents ``y0``:
    latents gained, coded as the file codes them, inverse-gained."""
    with codec.coded_as_files():
        y_hat, _, _ = codec.code_latents(y0 * codec.gain[level].abs()[None, :, None, None],
                                         torch.full((len(y0),), level), True)
    return y_hat * codec.inv_gain[level].abs()[None, :, None, None]


def synthesis_energy(codec: Codec, x: torch.Tensor, spacing: int = 6) -> np.ndarray:
    """(levels, M): per level and latent channel, the pixel squared error ([0, 1] units,
    summed over colours) of a unit change of one dequantised latent at the synthesis input,
    around real latents: the codec's own decoded crops ``x``, with impulses ``spacing``
    latents apart (beyond the synthesis' reach of 2, so each counts alone)."""
    energy = np.zeros((codec.gain.shape[0], codec.m))
    with torch.no_grad():
        y0 = codec.analyse(x)
        for lv in range(codec.gain.shape[0]):
            latents = decoded_latents(codec, y0, lv)
            base = codec.synthesise(latents)
            sites = torch.zeros(1, 1, *latents.shape[2:])
            sites[:, :, spacing // 2::spacing, spacing // 2::spacing] = 1
            for c in range(codec.m):
                impulse = torch.zeros_like(latents)
                impulse[:, c:c + 1] = sites
                energy[lv, c] = ((codec.synthesise(latents + impulse) - base) ** 2).sum().item() / (sites.sum().item() * len(x))
    return energy


def synthesis_coupling(codec: Codec, x: torch.Tensor, level: int, spacing: int = 6) -> np.ndarray:
    """(M, M, 3, 3): how a unit change of one latent moves the squared-error gradient of its
    neighbours, J^T J of the clamped synthesis at the synthesis input (around the codec's own
    decoded crops ``x`` at ``level``, averaged over impulses ``spacing`` latents apart),
    normalised to 1 on each channel's own centre: the shape of the coupling, whose scale
    per level the synthesis energies give.  Beyond one latent it is below 0.5 % of the
    total (RUNS.md, session 13), so 3x3 neighbourhoods are kept."""
    with torch.no_grad():
        base = decoded_latents(codec, codec.analyse(x), level)
    latents = base.clone().requires_grad_(True)
    out = codec.synthesise(latents)
    inside = ((out > 0) & (out < 1)).float()
    m, (h, w) = codec.m, base.shape[2:]
    sites = torch.zeros(1, 1, h, w)
    sites[:, :, spacing // 2:h - 1:spacing, spacing // 2:w - 1:spacing] = 1
    where = sites[0, 0].nonzero()
    coupling = np.zeros((m, m, 3, 3))
    for c in range(m):
        impulse = torch.zeros_like(base)
        impulse[:, c:c + 1] = sites
        _, response = torch.func.jvp(codec.synthesise, (base,), (impulse,))
        (back,) = torch.autograd.grad(out, latents, grad_outputs=inside * response, retain_graph=True)
        windows = torch.stack([back[:, :, i - 1:i + 2, j - 1:j + 2] for i, j in where.tolist()])
        coupling[:, c] = windows.sum(dim=(0, 1)).numpy() / (len(where) * len(x))
    centre = np.sqrt(np.diagonal(coupling[:, :, 1, 1]))
    return coupling / (centre[:, None, None, None] * centre[None, :, None, None])


def export_lossy(run_dir: Path, name: str) -> None:
    codec, state = load_codec(run_dir / "checkpoint.pt")
    cfg, step = state["config"], state["step"]
    if codec.context:
        raise ValueError("the checkerboard context is a training experiment, not part of the format "
                         "(RUNS.md, lossy_ctx_v1)")
    if codec.row_offsets:
        raise ValueError("per-level row offsets are a training experiment, not part of the format "
                         "(RUNS.md, lossy_rowoff_v1, lossy_detail_v3-v5)")
    if codec.detail:
        raise ValueError("detail channels are a training experiment: their graphs slice the latents, "
                         "which the NumPy runtime does not implement (RUNS.md, lossy_detail_v1-v5)")
    tmp = Path(tempfile.mkdtemp())
    m, hz = codec.m, cfg["hyper_channels"][0]
    x = torch.rand(1, 3, 128, 192)
    gain = torch.ones(1, m, 1, 1)
    torch.onnx.export(Encoder(codec), (x, gain), tmp / "encoder.onnx", input_names=["image", "gain"],
                      output_names=["y", "z"], dynamic_axes={"image": {2: "h", 3: "w"}}, opset_version=17,
                      dynamo=False)
    y = torch.randn(1, m, 8, 12)
    torch.onnx.export(Decoder(codec), (y, gain), tmp / "decoder.onnx", input_names=["latents", "inv_gain"],
                      output_names=["image"], dynamic_axes={"latents": {2: "h", 3: "w"}}, opset_version=17,
                      dynamo=False)
    refine = SynthesisGradient(codec)
    refine.check()
    torch.onnx.export(refine, (y, gain, torch.rand(1, 3, 128, 192), torch.ones(1, 1, 128, 192)), tmp / "refine.onnx",
                      input_names=["latents", "inv_gain", "image", "weight"], output_names=["gradient"],
                      dynamic_axes={"latents": {2: "h", 3: "w"}, "image": {2: "H", 3: "W"}, "weight": {2: "H", 3: "W"}},
                      opset_version=17, dynamo=False)
    hyper = IntHyper(codec)
    hyper.check_exact()
    z = torch.randint(-20, 20, (1, hz, 2, 3)).float()
    torch.onnx.export(hyper, (z,), tmp / "hyper.onnx", input_names=["z"], output_names=["pred"],
                      dynamic_axes={"z": {2: "h", 3: "w"}}, opset_version=17, dynamo=False)
    crops = central_crops(TRAINING_PHOTOS, ENERGY_PHOTOS)
    coupling = synthesis_coupling(codec, crops, codec.gain.shape[0] // 2)
    with torch.no_grad():
        z_rows = codec.z_table_rows().numpy()
        family, uncoded_rows = latent_tables()
        np.savez_compressed(tmp / "tables.npz",
                 family127=family,
                 uncoded_rows=np.int32(uncoded_rows),
                 z_rows=z_rows,
                 log_gain=torch.log(codec.gain.abs()).numpy().astype(np.float32),
                 log_inv_gain=torch.log(codec.inv_gain.abs()).numpy().astype(np.float32),
                 refine_lambda=np.asarray(cfg["lambdas"], np.float32),
                 synthesis_energy=synthesis_energy(codec, crops).astype(np.float32),
                 synthesis_coupling=coupling.astype(np.float32))
    final = json.loads((run_dir / "final.json").read_text()) if (run_dir / "final.json").exists() else {}
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    record = dict(config=cfg, step=step, final=final, log_tail=log[-3:],
                  summary=dict(steps=step, val=[r for r in log if "val" in r][-1]["val"], uncoded_rows=uncoded_rows))
    files = {role: tmp / f"{role}.onnx" for role in ("encoder", "decoder", "hyper", "refine")}
    files["tables"] = tmp / "tables.npz"
    release("lossy-ssim" if cfg.get("distortion") == "msssim" else "lossy", name, files, record)
