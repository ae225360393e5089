"""Export a lossy training run as a model package: three ONNX graphs plus tables.

* ``encoder``: image (1,3,H,W) in [0,1] and per-channel gain -> latents y, hyper-latents z
* ``hyper``: integer hyper-latents -> [latent means in 1/8 units, table rows]
  (integer-exact; checked against pillow_nic.intnet's contract before export)
* ``decoder``: dequantised latents and inverse gain -> image
* ``tables``: Gaussian table family (radius 127), z table rows per rate level, gains
"""

from __future__ import annotations

import copy
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
from pillow_nic import intnet, tables  # noqa: E402
from pillow_nic.lossy import CONTEXT_CLIP, LATENT_CLIP, MEAN_BITS  # noqa: E402
from train_lossy import Codec, anchor_mask  # noqa: E402


class Encoder(nn.Module):
    def __init__(self, codec: Codec):
        super().__init__()
        self.codec = codec

    def forward(self, image: torch.Tensor, gain: torch.Tensor):
        y = self.codec.analysis(image) * gain
        return y, self.codec.hyper_analysis(y)


class Decoder(nn.Module):
    def __init__(self, codec: Codec):
        super().__init__()
        self.codec = codec

    def forward(self, latents: torch.Tensor, inv_gain: torch.Tensor):
        return torch.clamp(self.codec.synthesis(latents * inv_gain), 0, 1)


def _int_conv(sums: torch.Tensor, spec: dict) -> torch.Tensor:
    """An integer layer's output from its integer sums: scaled by 2**-shift (exact),
    floored, and capped for a hidden layer."""
    scale = torch.tensor(2.0 ** -np.asarray(spec["shift"], np.float64), dtype=torch.float32)
    h = torch.floor(sums * scale.view(1, -1, 1, 1))
    return h if spec["clip_max"] is None else torch.clamp(h, 0, spec["clip_max"])


def _worst_sum(weight: np.ndarray, bound: float, bias: np.ndarray) -> float:
    """Largest |sum| a (out, in, kh, kw) integer convolution can reach on inputs within
    +-bound: below 2**24 every partial sum is exact in float32."""
    return np.abs(weight).astype(np.float64).sum(axis=(1, 2, 3)).max() * bound + np.abs(bias).max()


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
        self.with_hidden = bool(codec.context)

    def forward(self, z: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """pred, and for a codec with checkerboard context also the last hidden activation."""
        h = z
        for conv, spec in zip(self.convs, self.layers):
            hidden = h
            h = _int_conv(conv(h), spec)
        return (h, hidden) if self.with_hidden else h

    def check_exact(self) -> None:
        """Worst-case sums below 2**24: each output sums (taps x in-channels) products."""
        bound = LATENT_CLIP
        for conv, spec in zip(self.convs, self.layers):
            w = np.abs(spec["weight"]).astype(np.float64)
            if isinstance(conv, nn.ConvTranspose2d):
                # stride 2, kernel 4: each output gets 2x2 taps per input channel
                per_out = max(w[:, :, a::2, b::2].sum(axis=(0, 2, 3)).max() for a in (0, 1) for b in (0, 1))
                worst = per_out * bound + np.abs(spec["bias"]).max()
            else:
                worst = _worst_sum(spec["weight"], bound, spec["bias"])
            if worst >= intnet.EXACT_LIMIT or w.max() > intnet.WEIGHT_MAX:
                raise ValueError(f"hyper-synthesis layer not exact: bound {worst:.0f}")
            bound = spec["clip_max"] or 0


NON_ANCHOR_PHASES = ((0, 1), (1, 0))  # (row, column) parity of the latents the context predicts
ANCHOR_PHASES = ((0, 0), (1, 1))


class IntContext(nn.Module):
    """The checkerboard context network with exported integer weights, on the 2x2 polyphase
    grid: inputs are the hyper-synthesis' last hidden activation at the two non-anchor
    phases and the integer anchor latents at the two anchor phases (channel-stacked, in
    NON_ANCHOR_PHASES / ANCHOR_PHASES order); the output is pred at the non-anchor phases.
    The training network's 5x5 convolution over anchors (zero elsewhere) becomes a 3x3
    convolution on the half-resolution phases without its zero taps: under half the work.
    The output layer reads both inputs, as two block-diagonal convolutions whose integer
    sums are added."""

    def __init__(self, codec: Codec):
        super().__init__()
        m, ctx = codec.m, codec.context
        hh = codec.hs[-1].weight.shape[1]
        with torch.no_grad():
            hidden = qat.export_hidden(codec.ctx_conv.weight, codec.ctx_conv.bias, 0)
            out = qat.export_output(codec.ctx_out.weight, codec.ctx_out.bias, qat.ACT_BITS, MEAN_BITS)
            dense = hidden["weight"]
            poly = np.zeros((2 * ctx, 2 * m, 3, 3), dense.dtype)
            for o, (pi, pj) in enumerate(NON_ANCHOR_PHASES):
                for di in range(-2, 3):
                    for dj in range(-2, 3):
                        phase = ((pi + di) % 2, (pj + dj) % 2)
                        if phase in ANCHOR_PHASES:
                            k = ANCHOR_PHASES.index(phase)
                            u, v = (pi + di - phase[0]) // 2, (pj + dj - phase[1]) // 2
                            poly[o * ctx:(o + 1) * ctx, k * m:(k + 1) * m, u + 1, v + 1] = dense[:, :, di + 2, dj + 2]
            self.hidden_spec = dict(hidden, weight=poly, bias=np.tile(hidden["bias"], 2))
            w = out["weight"]
            self.out_spec = dict(out, weight=np.zeros((4 * m, 2 * (hh + ctx), 1, 1), w.dtype),
                                 bias=np.tile(out["bias"], 2), shift=np.tile(out["shift"], 2))
            self.conv = nn.Conv2d(2 * m, 2 * ctx, 3, 1, 1)
            self.from_hyper = nn.Conv2d(2 * hh, 4 * m, 1)
            self.from_context = nn.Conv2d(2 * ctx, 4 * m, 1, bias=False)
            for layer in (self.conv, self.from_hyper, self.from_context):
                layer.weight.zero_()
            self.conv.weight.copy_(torch.from_numpy(poly))
            self.conv.bias.copy_(torch.from_numpy(self.hidden_spec["bias"]))
            self.from_hyper.bias.copy_(torch.from_numpy(self.out_spec["bias"]))
            for o in range(2):
                rows = slice(o * 2 * m, (o + 1) * 2 * m)
                self.from_hyper.weight[rows, o * hh:(o + 1) * hh] = torch.from_numpy(w[:, :hh])
                self.from_context.weight[rows, o * ctx:(o + 1) * ctx] = torch.from_numpy(w[:, hh:])
                self.out_spec["weight"][rows, o * (hh + ctx):(o + 1) * (hh + ctx)] = w

    def forward(self, hidden: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        c = _int_conv(self.conv(anchors), self.hidden_spec)
        return _int_conv(self.from_hyper(hidden) + self.from_context(c), self.out_spec)

    def check_matches(self, codec: Codec) -> None:
        """The polyphase graph gives the training network's quantised means and table rows
        at every non-anchor latent (random integer inputs; float64, where both are exact)."""
        m, hh = codec.m, codec.hs[-1].weight.shape[1]
        gen = torch.Generator().manual_seed(0)
        hidden = torch.randint(0, qat.HIDDEN_CLIP + 1, (1, hh, 8, 12), generator=gen).double()
        anchors = torch.randint(-CONTEXT_CLIP, CONTEXT_CLIP + 1, (1, m, 8, 12), generator=gen).double()
        mask = anchor_mask(8, 12)
        poly_anchors = torch.cat([anchors[:, :, 0::2, 0::2], anchors[:, :, 1::2, 1::2]], 1)
        with torch.no_grad():
            trained = copy.deepcopy(codec).double()
            mean, log_scale = trained.context_parameters(hidden / 2 ** qat.ACT_BITS, anchors * mask, True)
            want_hidden = trained.context_hidden(anchors * mask, True) * 2 ** qat.ACT_BITS
            exported = copy.deepcopy(self).double()
            pred = exported(torch.cat([hidden[:, :, 0::2, 1::2], hidden[:, :, 1::2, 0::2]], 1), poly_anchors)
            got_hidden = _int_conv(exported.conv(poly_anchors), self.hidden_spec)
        rows = torch.round((log_scale - tables.SCALE_MIN) / tables.SCALE_STEP - 0.5)
        ctx = codec.context
        for phase, (r, c) in enumerate(NON_ANCHOR_PHASES):
            got = pred[:, phase * 2 * m:(phase + 1) * 2 * m]
            if not (torch.equal(got[:, :m], torch.round(mean * 2 ** MEAN_BITS)[:, :, r::2, c::2]) and
                    torch.equal(got[:, m:].clamp(0, tables.SCALE_BINS - 1), rows[:, :, r::2, c::2]) and
                    torch.equal(got_hidden[:, phase * ctx:(phase + 1) * ctx], want_hidden[:, :, r::2, c::2])):
                raise ValueError("context graph does not reproduce the trained network")

    def check_exact(self) -> None:
        """Worst-case sums below 2**24 (anchors within +-CONTEXT_CLIP, hidden within 0..clip)."""
        worst = max(_worst_sum(self.hidden_spec["weight"], CONTEXT_CLIP, self.hidden_spec["bias"]),
                    _worst_sum(self.out_spec["weight"], qat.HIDDEN_CLIP, self.out_spec["bias"]))
        if worst >= intnet.EXACT_LIMIT or np.abs(self.out_spec["weight"]).max() > intnet.WEIGHT_MAX:
            raise ValueError(f"context network not exact: bound {worst:.0f}")


def export_lossy(run_dir: Path, name: str) -> None:
    state = torch.load(run_dir / "checkpoint.pt")
    cfg = state["config"]
    codec = Codec(cfg)
    codec.load_state_dict(state["model"])
    codec.eval()
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
    torch.onnx.export(hyper, (z,), tmp / "hyper.onnx", input_names=["z"],
                      output_names=["pred", "hidden"] if codec.context else ["pred"],
                      dynamic_axes={"z": {2: "h", 3: "w"}}, opset_version=17, dynamo=False)
    roles = ["encoder", "decoder", "hyper"]
    if codec.context:
        context = IntContext(codec)
        context.check_exact()
        context.check_matches(codec)
        hidden = torch.randint(0, 255, (1, 2 * codec.hs[-1].weight.shape[1], 4, 6)).float()
        anchors = torch.randint(-CONTEXT_CLIP, CONTEXT_CLIP, (1, 2 * m, 4, 6)).float()
        torch.onnx.export(context, (hidden, anchors), tmp / "context.onnx", input_names=["hidden", "anchors"],
                          output_names=["pred"], dynamic_axes={"hidden": {2: "h", 3: "w"}, "anchors": {2: "h", 3: "w"}},
                          opset_version=17, dynamo=False)
        roles.append("context")
    with torch.no_grad():
        z_rows = torch.clamp(torch.floor((codec.z_log_scale - tables.SCALE_MIN) / tables.SCALE_STEP),
                             0, tables.SCALE_BINS - 1).to(torch.int64).numpy()
        np.savez_compressed(tmp / "tables.npz",
                 family127=tables.build_family(LATENT_CLIP, 1, "gauss")[:, 0].astype(np.int32),
                 z_rows=z_rows,
                 log_gain=torch.log(codec.gain.abs()).numpy().astype(np.float32),
                 log_inv_gain=torch.log(codec.inv_gain.abs()).numpy().astype(np.float32))
    final = json.loads((run_dir / "final.json").read_text()) if (run_dir / "final.json").exists() else {}
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    record = dict(config=cfg, step=state["step"], final=final, log_tail=log[-3:],
                  summary=dict(steps=state["step"], val=[r for r in log if "val" in r][-1]["val"]))
    files = {role: tmp / f"{role}.onnx" for role in roles}
    files["tables"] = tmp / "tables.npz"
    release("lossy-ssim" if cfg.get("distortion") == "msssim" else "lossy", name, files, record)
