"""Export a lossy training run as a model package: three ONNX graphs plus tables.

* ``encoder``: image (1,3,H,W) in [0,1] and per-channel gain -> latents y, hyper-latents z
* ``hyper``: integer hyper-latents -> [latent means in 1/8 units, table rows]
  (integer-exact; checked against pillow_nic.intnet's contract before export)
* ``decoder``: dequantised latents and inverse gain -> image
* ``tables``: Gaussian table family (radius 127), z table rows per rate level, gains, and
  the encoder's rounding hints (rate-distortion trade-off and synthesis energy per level)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qat  # noqa: E402
from export import release  # noqa: E402
from pillow_nic import intnet  # noqa: E402
from pillow_nic.lossy import LATENT_CLIP, MEAN_BITS  # noqa: E402
from lossy_ceiling import central_crops  # noqa: E402
from run import TRAINING_PHOTOS  # noqa: E402
from train_lossy import Codec, latent_tables, load_codec  # noqa: E402

#: the encoder's rounding trades bits against λ times this much squared error: the moves of
#: neighbouring latents add up in the pixels, which the per-latent estimate leaves out
#: (tuned on the training photos, RUNS.md session 12: 5 to 7 best, 3 and 20 far worse)
ROUNDING_LAMBDA_FACTOR = 6.0
ENERGY_PHOTOS = 3  # central crops of training photos the synthesis energies are measured on


class Encoder(nn.Module):
    def __init__(self, codec: Codec):
        super().__init__()
        self.codec = codec

    def forward(self, image: torch.Tensor, gain: torch.Tensor):
        y = self.codec.analyse(image) * gain
        return y, self.codec.hyper_analysis(y)


class Decoder(nn.Module):
    def __init__(self, codec: Codec):
        super().__init__()
        self.codec = codec

    def forward(self, latents: torch.Tensor, inv_gain: torch.Tensor):
        return torch.clamp(self.codec.synthesise(latents * inv_gain), 0, 1)


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


def synthesis_energy(codec: Codec, x: torch.Tensor, spacing: int = 6) -> np.ndarray:
    """(levels, M): per level and latent channel, the pixel squared error ([0, 1] units,
    summed over colours) of a unit change of one dequantised latent at the synthesis input,
    around real latents: the codec's own decoded crops ``x``, with impulses ``spacing``
    latents apart (beyond the synthesis' reach of 2, so each counts alone)."""
    codec.coded_rate = True  # the latents as the file codes them
    energy = np.zeros((codec.gain.shape[0], codec.m))
    with torch.no_grad():
        y0 = codec.analyse(x)
        for lv in range(codec.gain.shape[0]):
            level = torch.full((len(x),), lv)
            y_hat, _, _ = codec.code_latents(y0 * codec.gain[lv].abs()[None, :, None, None], level, True)
            latents = y_hat * codec.inv_gain[lv].abs()[None, :, None, None]
            base = codec.synthesise(latents)
            sites = torch.zeros(1, 1, *latents.shape[2:])
            sites[:, :, spacing // 2::spacing, spacing // 2::spacing] = 1
            for c in range(codec.m):
                impulse = torch.zeros_like(latents)
                impulse[:, c:c + 1] = sites
                energy[lv, c] = ((codec.synthesise(latents + impulse) - base) ** 2).sum().item() / (sites.sum().item() * len(x))
    return energy


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
    hyper = IntHyper(codec)
    hyper.check_exact()
    z = torch.randint(-20, 20, (1, hz, 2, 3)).float()
    torch.onnx.export(hyper, (z,), tmp / "hyper.onnx", input_names=["z"], output_names=["pred"],
                      dynamic_axes={"z": {2: "h", 3: "w"}}, opset_version=17, dynamo=False)
    with torch.no_grad():
        z_rows = codec.z_table_rows().numpy()
        family, uncoded_rows = latent_tables()
        np.savez_compressed(tmp / "tables.npz",
                 family127=family,
                 uncoded_rows=np.int32(uncoded_rows),
                 z_rows=z_rows,
                 log_gain=torch.log(codec.gain.abs()).numpy().astype(np.float32),
                 log_inv_gain=torch.log(codec.inv_gain.abs()).numpy().astype(np.float32),
                 rdoq_lambda=(ROUNDING_LAMBDA_FACTOR * np.asarray(cfg["lambdas"])).astype(np.float32),
                 synthesis_energy=synthesis_energy(codec, central_crops(TRAINING_PHOTOS, ENERGY_PHOTOS))
                 .astype(np.float32))
    final = json.loads((run_dir / "final.json").read_text()) if (run_dir / "final.json").exists() else {}
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    record = dict(config=cfg, step=step, final=final, log_tail=log[-3:],
                  summary=dict(steps=step, val=[r for r in log if "val" in r][-1]["val"], uncoded_rows=uncoded_rows))
    files = {role: tmp / f"{role}.onnx" for role in ("encoder", "decoder", "hyper")}
    files["tables"] = tmp / "tables.npz"
    release("lossy-ssim" if cfg.get("distortion") == "msssim" else "lossy", name, files, record)
