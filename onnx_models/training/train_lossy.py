"""Train the lossy codec: heavy encoder, shallow decoder, mean-scale hyperprior,
gain units for variable rate.  The hyper-synthesis is quantisation-aware so the
exported network is integer-exact (see pillow_nic.intnet), which makes the
entropy model bit-identical on every runtime.

    python onnx_models/training/train_lossy.py --config onnx_models/training/lossy_v1.json

Data: ../shared/data/train plus the extra Debian photos (never Kodak); crops are
pre-extracted into memory after a random 0.5-1.0 downscale.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import qat  # noqa: E402
from pillow_nic import tables  # noqa: E402
from pillow_nic.lossy import LATENT_CLIP, MEAN_BITS  # noqa: E402
from run import (CHECKPOINT_EVERY_S, finish, images_to_tensor, learning_rate, list_images,  # noqa: E402
                 log_record, resume, save_checkpoint, start_run)
from pillow_nic.metrics import MS_SSIM_WEIGHTS  # noqa: E402

class GDN(nn.Module):
    """Simplified (L1) GDN: x / (beta + gamma |x|); inverse multiplies instead."""

    def __init__(self, ch: int, inverse: bool = False):
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.ones(ch))
        self.gamma = nn.Parameter(0.1 * torch.eye(ch).view(ch, ch, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = F.conv2d(x.abs(), self.gamma.abs(), self.beta.abs() + 1e-6)
        return x * norm if self.inverse else x / norm


class ResBlock(nn.Module):
    """x + conv(relu(conv(x))): in the encoder (3x3) capacity that costs the decoder
    nothing; in the synthesis (1x1) nonlinearity that reaches no further latents."""

    def __init__(self, ch: int, kernel: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, kernel, 1, kernel // 2)
        self.conv2 = nn.Conv2d(ch, ch, kernel, 1, kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))

    def zero_residual(self) -> None:
        """Make the block the identity (a warm start that keeps the function)."""
        with torch.no_grad():
            self.conv2.weight.zero_()
            self.conv2.bias.zero_()


CONTEXT_CLIP = 31  # the context network sees anchor latents rounded to integers within +-31
SYNTHESIS_FIRST_UPSAMPLING = 2  # index of the synthesis' first transposed convolution without residual blocks
ANALYSIS_LAST = 6  # index of the analysis' final convolution when it has no residual blocks


class Codec(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        n1, n2, n3, m = cfg["enc_channels"]
        hz, hh = cfg["hyper_channels"]
        self.m = m
        self.analysis = nn.Sequential(
            nn.Conv2d(3, n1, 5, 2, 2), GDN(n1),
            nn.Conv2d(n1, n2, 3, 2, 1), GDN(n2),
            nn.Conv2d(n2, n3, 3, 2, 1), GDN(n3),
            *[ResBlock(n3) for _ in range(cfg.get("enc_blocks", 0))],  # at 1/8 resolution
            nn.Conv2d(n3, m, 3, 2, 1),
        )
        # one dec_channels entry, "direct": the latents feed the first upsampling themselves;
        # a hidden layer at latent resolution caps a two-layer synthesis near a block PCA with
        # d1 terms (RUNS.md, session 7), so without it m latents are the only bottleneck
        *hidden, d2 = cfg["dec_channels"]
        latent_layers = [nn.Conv2d(m, hidden[0], 3, 1, 1), GDN(hidden[0], inverse=True),
                         *[ResBlock(hidden[0], kernel=1) for _ in range(cfg.get("dec_blocks", 0))]
                         ] if hidden else []  # at latent resolution
        self.synthesis = nn.Sequential(
            *latent_layers,
            nn.ConvTranspose2d(hidden[0] if hidden else m, d2, 8, 4, 2), GDN(d2, inverse=True),
            nn.ConvTranspose2d(d2, 3, 8, 4, 2),
        )
        self.hyper_analysis = nn.Sequential(
            nn.Conv2d(m, hh, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(hh, hh, 5, 2, 2), nn.ReLU(),
            nn.Conv2d(hh, hz, 5, 2, 2),
        )
        # integer-exact: ConvT k4 s2, ConvT k4 s2, 1x1 conv -> [means, scales]
        self.hs = nn.ModuleList([
            nn.ConvTranspose2d(hz, hh, 4, 2, 1),
            nn.ConvTranspose2d(hh, hh, 4, 2, 1),
            nn.Conv2d(hh, 2 * m, 1),
        ])
        # detail channels (optional): the last ``detail`` latents also pass through a linear
        # one-layer path, a 16x16 block basis, straight to the pixels; the shallow synthesis
        # alone caps quality near a 128-term block PCA (lossy_ceiling.py, RUNS.md session 7)
        self.detail = cfg.get("detail_channels", 0)
        if self.detail:
            self.detail_analysis = nn.Conv2d(3, self.detail, 16, 16)
            self.detail_synthesis = nn.ConvTranspose2d(self.detail, 3, 16, 16, bias=False)
        self.revive = cfg.get("revive_dead_channels", False)  # at warm start (grow)
        self.frozen = cfg.get("frozen_channels", 0)  # channels kept as warm-started (freeze_base)
        self.coded_rate = cfg.get("coded_rate", False)  # latents' rate as coded (coded_latents)
        # checkerboard context (optional): latents with (row + col) even are "anchors", coded
        # first under the hyperprior alone; the others also see their decoded anchor neighbours
        self.context = cfg.get("context", 0)
        if self.context:
            self.ctx_conv = nn.Conv2d(m, self.context, 5, 1, 2)
            self.ctx_out = nn.Conv2d(hh + self.context, 2 * m, 1)
        levels = len(cfg["lambdas"])
        lam = torch.tensor(cfg["lambdas"])
        start = (lam / lam[len(lam) // 2]) ** (1 / 3)  # a spread the gains refine
        # the package stores log |gain| (FORMAT.md), so training uses magnitudes too: a sign
        # flip learned by a signed gain would be lost in export (nic-lossy-5's channel 60)
        self.gain = nn.Parameter(start[:, None].repeat(1, m))
        self.inv_gain = nn.Parameter((1 / start)[:, None].repeat(1, m))
        self.z_log_scale = nn.Parameter(torch.zeros(levels, hz))
        # per level and latent channel, whole table rows added to the predicted scale row
        # (the decoder knows the level from the quality, as for z_rows): an experiment so far
        self.row_offsets = cfg.get("level_row_offsets", False)
        if self.row_offsets:
            self.y_row_offset = nn.Parameter(torch.zeros(levels, m))  # in rows, rounded when applied

    def analyse(self, x: torch.Tensor) -> torch.Tensor:
        """Latents before gains (the detail channels add their block projection)."""
        y = self.analysis(x)
        if not self.detail:
            return y
        return torch.cat([y[:, :-self.detail], y[:, -self.detail:] + self.detail_analysis(x)], 1)

    def synthesise(self, latents: torch.Tensor) -> torch.Tensor:
        """Image from dequantised latents (after the inverse gains)."""
        x = self.synthesis(latents)
        return x + self.detail_synthesis(latents[:, -self.detail:]) if self.detail else x

    def hyper_synthesis(self, z_hat: torch.Tensor, quantised: bool
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(means, log-scales, last hidden activation) from the hyper-latents."""
        h = z_hat
        act_exp = 0
        for i, layer in enumerate(self.hs):
            w, b = layer.weight, layer.bias
            if quantised:
                # a ConvTranspose weight is (in, out, k, k); Conv is (out, in, k, k): grid over the whole tensor
                w, b = qat.fake_quant_weights(w, b, act_exp)
            if isinstance(layer, nn.ConvTranspose2d):
                z = F.conv_transpose2d(h, w, b, stride=2, padding=1)
            else:
                z = F.conv2d(h, w, b)
            if i < len(self.hs) - 1:
                h = hidden = qat.hidden_activation(z, quantised)
                act_exp = qat.ACT_BITS
            else:
                h = z
        return (*qat.output_quantise(h[:, :self.m], h[:, self.m:], MEAN_BITS, quantised), hidden)

    def context_hidden(self, anchors: torch.Tensor, quantised: bool) -> torch.Tensor:
        """The context network's hidden activation from the integer anchors (zero elsewhere)."""
        w, b = self.ctx_conv.weight, self.ctx_conv.bias
        if quantised:
            w, b = qat.fake_quant_weights(w, b, 0)
        return qat.hidden_activation(F.conv2d(anchors, w, b, padding=2), quantised)

    def context_parameters(self, hidden: torch.Tensor, anchors: torch.Tensor, quantised: bool
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and log-scales of the non-anchor latents from the hyper-synthesis' hidden
        activation and the integer anchor latents (zero elsewhere); integer-exact like it."""
        c = self.context_hidden(anchors, quantised)
        w, b = self.ctx_out.weight, self.ctx_out.bias
        if quantised:
            w, b = qat.fake_quant_weights(w, b, qat.ACT_BITS)
        out = F.conv2d(torch.cat([hidden, c], 1), w, b)
        return qat.output_quantise(out[:, :self.m], out[:, self.m:], MEAN_BITS, quantised)

    def z_table_rows(self) -> torch.Tensor:
        """Per level and hyper-latent channel, the table row that codes z (FORMAT.md, z_rows)."""
        return torch.clamp(torch.floor((self.z_log_scale.detach() - qat.SCALE_MIN) / qat.SCALE_STEP),
                           0, qat.SCALE_BINS - 1).long()

    def offset_rows(self, log_scale: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """The latents' log-scales moved by their level's whole-row offsets (if any)."""
        if not self.row_offsets:
            return log_scale
        shift = qat.ste_round(self.y_row_offset[level])[:, :, None, None] * qat.SCALE_STEP
        lowest = qat.SCALE_MIN + 0.5 * qat.SCALE_STEP
        return torch.clamp(log_scale + shift, lowest, lowest + (qat.SCALE_BINS - 1) * qat.SCALE_STEP)

    def latent_parameters(self, y: torch.Tensor, z_hat: torch.Tensor, level: torch.Tensor, quantised: bool
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """(means, log-scales) of the latents y: the hyperprior's, and with the checkerboard
        context the non-anchors' from their anchor neighbours as the decoder sees them
        (coded symbols plus means, rounded to integers within +-CONTEXT_CLIP)."""
        mean, log_scale, hidden = self.hyper_synthesis(z_hat, quantised)
        log_scale = self.offset_rows(log_scale, level)
        if not self.context:
            return mean, log_scale
        anchor = anchor_mask(y.shape[2], y.shape[3]).to(y.device)
        symbols = self.symbols(y - mean, log_scale)[0]
        anchors = torch.clamp(qat.ste_floor(symbols + mean + 0.5), -CONTEXT_CLIP, CONTEXT_CLIP) * anchor
        ctx_mean, ctx_log_scale = self.context_parameters(hidden, anchors, quantised)
        return torch.where(anchor, mean, ctx_mean), torch.where(anchor, log_scale, self.offset_rows(ctx_log_scale, level))

    @contextmanager
    def coded_as_files(self):
        """For the measurements inside: latents rounded and priced as the file codes them
        (coded_latents); afterwards the codec's own setting again."""
        own, self.coded_rate = self.coded_rate, True
        try:
            yield self
        finally:
            self.coded_rate = own

    def symbols(self, residual: torch.Tensor, log_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(rounded residuals, their coded bits or None): as coded (coded_latents) for a
        coded-rate codec, else rounded only (the noisy estimate prices them)."""
        if self.coded_rate:
            return coded_latents(residual, log_scale)
        return qat.ste_round(residual), None

    def code_latents(self, y: torch.Tensor, level: torch.Tensor, quantised: bool
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dequantised latents, bits of each latent, bits of each hyper-latent) of the
        gained latents y: the entropy model's whole part of the training objective."""
        z = self.hyper_analysis(y)
        z_noisy = z + torch.empty_like(z).uniform_(-0.5, 0.5)
        z_hat = torch.clamp(qat.ste_round(z), -LATENT_CLIP, LATENT_CLIP)
        mean, log_scale = self.latent_parameters(y, z_hat, level, quantised)
        symbols, bits_y = self.symbols(y - mean, log_scale)
        if bits_y is None:
            bits_y = gauss_bits(y + torch.empty_like(y).uniform_(-0.5, 0.5) - mean, log_scale)
        z_ls = self.z_log_scale[level][:, :, None, None].expand_as(z)
        return symbols + mean, bits_y, gauss_bits(z_noisy, z_ls)

    def reconstruct(self, latents: torch.Tensor, level: torch.Tensor, quantised: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image, bits of each latent, bits of each hyper-latent) from the analysis'
        latents before gains, at each batch item's level."""
        gain, inv_gain = (g[level].abs()[:, :, None, None] for g in (self.gain, self.inv_gain))
        y_hat, bits_y, bits_z = self.code_latents(latents * gain, level, quantised)
        return self.synthesise(y_hat * inv_gain), bits_y, bits_z

    def forward(self, x: torch.Tensor, level: torch.Tensor, quantised: bool):
        return self.reconstruct(self.analyse(x), level, quantised)


def load_codec(path: Path) -> tuple[Codec, dict]:
    """(codec in eval mode, the checkpoint: its "config", "step", ...) from a run checkpoint
    or a model-only checkpoint."""
    state = torch.load(path, map_location="cpu")
    codec = Codec(state["config"])
    codec.load_state_dict(state["model"])
    codec.eval()
    return codec, state


def grow_encoder(model: Codec, state: dict) -> None:
    """Warm start from a codec with fewer encoder residual blocks: its weights, and new
    blocks whose last convolution is zero, so training resumes from the same function."""
    blocks = sum(isinstance(layer, ResBlock) for layer in model.analysis)
    old_last = max(int(k.split(".")[1]) for k in state if k.startswith("analysis."))
    shift = ANALYSIS_LAST + blocks - old_last
    own = model.state_dict()
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "analysis" and int(parts[1]) == old_last:
            parts[1] = str(old_last + shift)
        own[".".join(parts)] = value
    model.load_state_dict(own)
    for layer in model.analysis[old_last:old_last + shift]:
        layer.zero_residual()


def grow(model: Codec, state: dict) -> None:
    """Warm start (as grow_encoder) from a codec without the synthesis' residual blocks or the
    checkerboard context: new blocks end in zero convolutions, and the non-anchor output
    layer starts as the hyper-synthesis' own with zero context weights, so training resumes
    from the same function.  Widened latents and revived channels (``revive_dead_channels``)
    are the exception: they start with small random weights, so step 0 codes at a higher rate."""
    state = widen_latents(model, state)
    blocks = sum(isinstance(layer, ResBlock) for layer in model.synthesis)
    renamed = {}
    for key, value in state.items():  # the source has no synthesis blocks
        parts = key.split(".")
        if parts[0] == "synthesis" and int(parts[1]) >= SYNTHESIS_FIRST_UPSAMPLING:
            parts[1] = str(int(parts[1]) + blocks)
        renamed[".".join(parts)] = value
    grow_encoder(model, renamed)
    for layer in model.synthesis:
        if isinstance(layer, ResBlock):
            layer.zero_residual()
    if model.revive:
        print(f"revived latent channels {revive_dead_channels(model)}", flush=True)
    if model.context:
        last = model.hs[-1]
        with torch.no_grad():
            model.ctx_out.weight.zero_()
            model.ctx_out.weight[:, :last.weight.shape[1]] = last.weight
            model.ctx_out.bias.copy_(last.bias)


def widen_latents(model: Codec, state: dict) -> dict:
    """``state`` with room for the model's latent channels beyond its own: the new
    channels get zero gains, which makes them dead channels for ``revive_dead_channels``
    (a config that widens the latents also revives)."""
    old_m = state["gain"].shape[1]
    new = model.m - old_m
    if new == 0:
        return state
    if new < 0 or not model.revive:
        raise SystemExit("latents can only be widened, and only with revive_dead_channels")
    own = model.state_dict()
    last = f"analysis.{max(int(k.split('.')[1]) for k in state if k.startswith('analysis.'))}"
    out = f"hs.{len(model.hs) - 1}"
    state = dict(state)
    for key in (f"{last}.weight", f"{last}.bias"):  # new output filters: the model's own init
        state[key] = torch.cat([state[key], own[key][old_m:]])
    for key in ("synthesis.0.weight", "hyper_analysis.0.weight"):  # inputs: zero (revival sets them)
        state[key] = torch.cat([state[key], torch.zeros_like(own[key][:, old_m:])], 1)
    for key in ("gain", "inv_gain"):
        state[key] = torch.cat([state[key], torch.zeros_like(own[key][:, old_m:])], 1)
    for key in (f"{out}.weight", f"{out}.bias"):  # [means, scales]: each half widened
        value, pad = state[key], torch.zeros_like(own[key][:new])
        state[key] = torch.cat([value[:old_m], pad, value[old_m:], pad])
    return state


def weak_gains(gain: torch.Tensor) -> torch.Tensor:
    """Per (level, channel), whether the gain magnitude is below half the level's median of
    the gains that are not zero (widening by m or more adds a majority of zeros)."""
    gain = gain.abs()
    typical = gain.where(gain > 0, torch.nan).nanmedian(dim=1, keepdim=True).values
    return gain < 0.5 * typical


def revive_dead_channels(model: Codec) -> list[int]:
    """Give latent channels whose gain collapsed a second chance; returns their indices.

    A channel whose gain fell below half the median at every level is rounded to
    zero everywhere, so no gradient reaches its synthesis weights and rate pressure keeps
    it there: nic-lossy-5 carries 23 of 128 such channels while its top levels use all
    the others on detailed photos (lossy_ceiling.py).  Revived channels get the median
    gains, small random synthesis weights and typical predicted scales; the hyper-analysis
    ignores them at first, so z and the other channels' parameters start unchanged."""
    with torch.no_grad():
        gain = model.gain.abs()
        dead = weak_gains(gain).all(dim=0)
        dead[:model.frozen] = False
        live = ~dead
        model.gain[:, dead] = gain[:, live].median(dim=1, keepdim=True).values
        model.inv_gain[:, dead] = model.inv_gain[:, live].abs().median(dim=1, keepdim=True).values
        first = model.synthesis[0].weight
        first[:, dead] = 0.1 * first[:, live].std() * torch.randn_like(first[:, dead])
        model.hyper_analysis[0].weight[:, dead] = 0
        out, m = model.hs[-1], model.m
        out.weight[:m][dead] = 0
        out.bias[:m][dead] = 0
        out.weight[m:][dead] = out.weight[m:][live].mean(dim=0)
        out.bias[m:][dead] = out.bias[m:][live].mean()
    return torch.nonzero(dead).flatten().tolist()


def _blocks(a: torch.Tensor, b: int) -> np.ndarray:
    """(N, C, H, W) as rows of b x b blocks, each (C, b, b) flattened."""
    n, c, h, w = a.shape
    return a.reshape(n, c, h // b, b, w // b, b).permute(0, 2, 4, 1, 3, 5).reshape(-1, c * b * b).numpy()


def init_detail_channels(model: Codec, crops: np.ndarray, top_step: float = 0.1, ramp: float = 2.5) -> None:
    """Start the detail channels as a block PCA of what the warm-started codec misses.

    The residual of the top level's unquantised reconstruction on ``crops`` (16x16 blocks)
    gives the basis (the detail synthesis); a least-squares map from the image blocks to
    the basis coefficients gives the detail analysis.  The inverse gains are set to
    1 / gain, so the coefficients reach the synthesis unscaled, and the top level rounds
    them in steps of ``top_step``, each level below in ``ramp`` times coarser steps.  The
    new channels' share of the main analysis and synthesis starts at zero."""
    d, b = model.detail, 16
    rng = np.random.default_rng(0)
    picks = crops[np.sort(rng.choice(len(crops), min(len(crops), 192), replace=False))]
    gain_top = (model.gain[-1].abs() * model.inv_gain[-1].abs())[None, :, None, None]
    xs, rs, old = [], [], []
    with torch.no_grad():
        for i in range(0, len(picks), 8):
            x = images_to_tensor(picks[i:i + 8][:, :256, :256])
            y = model.analysis(x)
            y[:, -d:] = 0
            r = x - model.synthesis(y * gain_top)
            xs.append(_blocks(x, b))
            rs.append(_blocks(r, b))
            old.append(y[:, :-d])
    xb, rb = np.concatenate(xs).astype(np.float64), np.concatenate(rs).astype(np.float64)
    basis = np.ascontiguousarray(np.linalg.eigh(np.cov(rb.T))[1][:, ::-1][:, :d])  # (3*16*16, d), orthonormal
    coeffs = rb @ basis
    design = np.c_[xb, np.ones(len(xb))]
    fit = np.linalg.lstsq(design, coeffs, rcond=None)[0]  # (3*16*16 + 1, d)
    with torch.no_grad():
        g_top = model.gain[-1, -d:].abs()
        scale = 1 / (top_step * g_top)  # y = coefficient * scale: steps of top_step at the top level
        model.detail_analysis.weight.copy_(torch.from_numpy(fit[:-1].T).float().reshape(d, 3, b, b)
                                           * scale[:, None, None, None])
        model.detail_analysis.bias.copy_(torch.from_numpy(fit[-1]).float() * scale)
        model.detail_synthesis.weight.copy_(torch.from_numpy(basis.T).float().reshape(d, 3, b, b)
                                            / scale[:, None, None, None])
        below_top = torch.arange(len(model.gain) - 1, -1, -1, dtype=torch.float32)[:, None]
        model.gain[:, -d:] = g_top * ramp ** -below_top  # coarser steps at lower levels
        model.inv_gain[:, -d:] = 1 / model.gain[:, -d:]
        last = model.analysis[-1]
        last.weight[-d:] = 0
        last.bias[-d:] = 0
        model.synthesis[0].weight[:, -d:] = 0
        # predicted scales: revival gave them the live channels' mean scale row, which follows
        # the level and the content through z; shift it to the coefficients' spread
        out, m = model.hs[-1], model.m
        level = len(model.gain) // 2
        spread = torch.from_numpy(coeffs.std(axis=0)).float() * scale * model.gain[level, -d:].abs()
        live = ~weak_gains(model.gain[level:level + 1, :-d])[0]
        old_spread = (torch.cat(old) * model.gain[level, :-d].abs()[None, :, None, None]).std(dim=(0, 2, 3))
        typical = old_spread[live].median()
        out.bias[2 * m - d:] += torch.log(spread / typical)
        out.weight[m - d:m] = 0
        out.bias[m - d:m] = 0
    explained = 1 - ((rb - coeffs @ basis.T) ** 2).mean() / (rb ** 2).mean()
    print(f"detail channels: basis of {d} explains {explained:.1%} of the residual", flush=True)


def switch_off_below(model: Codec, k: int, first_level: int) -> None:
    """Below ``first_level`` the channels from ``k`` on are off: their table rows pushed to
    row 0 (not coded, so their symbols are 0) and their predicted means 0, so those levels
    decode exactly as the warm-started codec.  Their gains there are the first live level's
    divided by 1000, so qualities between the two levels fade the channels in (coarser
    steps, the same reconstruction scale)."""
    m = model.m
    with torch.no_grad():
        model.y_row_offset[:first_level, k:] = -(tables.SCALE_BINS - 1)
        model.gain[:first_level, k:] = model.gain[first_level, k:].abs() / 1000
        model.inv_gain[:first_level, k:] = model.inv_gain[first_level, k:].abs()
        out = model.hs[-1]
        out.weight[k:m] = 0
        out.bias[k:m] = 0


def freeze_base(model: Codec, k: int, first_level: int = 0):
    """Train only what the first ``k`` latent channels do not depend on, so the warm-started
    codec's reconstruction and coding of them stay as they were at every level: the new
    channels' analysis filters, gains, predicted means, scales and table-row offsets, their
    inputs to the synthesis, and the detail path.  The hyper-analysis stays blind to the
    new channels, so z is unchanged.  Returns a function
    to call after each optimiser step: it keeps the new hyper-synthesis rows within the old
    rows' largest weight, so the layer's shared integer grid (and the old rows) never move.

    Why: three warm starts that added channels to a converged codec let the shared layers
    drift and lost quality at the low levels (RUNS.md, lossy_detail_v1/v2).  With
    ``first_level``, what switch_off_below set stays: the new channels' means (0) and
    everything of theirs at the levels below."""
    m = model.m
    last, out = model.analysis[-1], model.hs[-1]
    new = torch.arange(m) >= k
    # the hyper-synthesis' outputs are [means, scales]; with levels switched off, means stay 0
    new_rows = torch.cat([new & (first_level == 0), new])
    live = (torch.arange(model.gain.shape[0]) >= first_level)[:, None] & new[None, :]
    masks = {
        last.weight: new[:, None, None, None],
        last.bias: new,
        model.synthesis[0].weight: new[None, :, None, None],
        out.weight: new_rows[:, None, None, None],
        out.bias: new_rows,
        model.gain: live,
        model.inv_gain: live,
    }
    if model.row_offsets:
        masks[model.y_row_offset] = live
    trainable = {id(p) for p in (*masks, *model.detail_analysis.parameters(), *model.detail_synthesis.parameters())}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    for p, mask in masks.items():
        p.register_hook(lambda g, mask=mask: g * mask.to(g.dtype))
    bound = out.weight[~new_rows].detach().abs().max()

    def project() -> None:
        with torch.no_grad():
            out.weight.clamp_(-bound, bound)

    return project


def anchor_mask(rows: int, cols: int) -> torch.Tensor:
    """(1, 1, rows, cols) bool: the checkerboard's anchor latents, (row + col) even."""
    r, c = torch.arange(rows)[:, None], torch.arange(cols)[None, :]
    return ((r + c) % 2 == 0)[None, None]


# latents whose table row gives 0 at least this probability are not coded (always 0): at
# quality 60 on Kodak these are 37 % of nic-lossy-6's latents, and 0.06 % of them were not 0
UNCODED_ZERO_PROBABILITY = 0.999


def latent_tables() -> tuple[np.ndarray, int]:
    """(the Gaussian table family, radius 127, as int32 frequencies; the number of its
    lowest rows whose latents are not coded)."""
    family = tables.build_family(LATENT_CLIP, 1, "gauss")[:, 0].astype(np.int32)
    zero_probability = family[:, LATENT_CLIP] / family.sum(axis=1)
    return family, int(np.argmax(zero_probability < UNCODED_ZERO_PROBABILITY))


UNCODED_ROWS = latent_tables()[1]


def table_rows(log_scale: torch.Tensor) -> torch.Tensor:
    """The table rows of quantised log-scales (which sit at their rows' centres)."""
    return torch.round((log_scale.detach() - qat.SCALE_MIN) / qat.SCALE_STEP - 0.5).long()


def coded_latents(residual: torch.Tensor, log_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(symbols, bits) of the latents as the format codes them: rounded (straight-through),
    0 and free in the uncoded table rows, else -log2 of their bin.  Unlike the noisy
    estimate, a latent that stays 0 in a narrow row costs nothing here, as in the file
    (RUNS.md, session 9: the noise overcharges nic-lossy-7's latents by 14-90 %)."""
    coded = (table_rows(log_scale) >= UNCODED_ROWS).to(residual.dtype)
    symbols = torch.clamp(qat.ste_round(residual), -LATENT_CLIP, LATENT_CLIP) * coded
    return symbols, gauss_bits(symbols, log_scale) * coded


def gauss_bits(v: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """-log2 of the probability of the unit bin around v under N(0, exp(log_scale))."""
    s = torch.exp(log_scale) * math.sqrt(2.0)
    p = 0.5 * (torch.erf((v + 0.5) / s) - torch.erf((v - 0.5) / s))
    return -torch.log2(torch.clamp(p, min=1e-9))


def _blur(x: torch.Tensor, sigma: float = 1.5, size: int = 11) -> torch.Tensor:
    """'valid' separable Gaussian per channel, as pillow_nic.metrics does it."""
    t = torch.arange(size, dtype=x.dtype, device=x.device) - size // 2
    k = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    ch = x.shape[1]
    x = F.conv2d(x, k.view(1, 1, size, 1).repeat(ch, 1, 1, 1), groups=ch)
    return F.conv2d(x, k.view(1, 1, 1, size).repeat(ch, 1, 1, 1), groups=ch)


def ms_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image MS-SSIM of (N, 3, H, W) images in [0, 1], the definition of
    pillow_nic.metrics.ms_ssim (scales while the image keeps >= 11 pixels)."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    scales = 1
    while scales < 5 and min(a.shape[2:]) >> scales >= 11:
        scales += 1
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], device=a.device)
    weights = weights / weights.sum()
    value = torch.ones(a.shape[0], device=a.device)
    for s in range(scales):
        mu_a, mu_b = _blur(a), _blur(b)
        va, vb = _blur(a * a) - mu_a ** 2, _blur(b * b) - mu_b ** 2
        cov = _blur(a * b) - mu_a * mu_b
        cs = ((2 * cov + c2) / (va + vb + c2))
        if s == scales - 1:
            lum = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)
            value = value * torch.clamp((lum * cs).mean(dim=(1, 2, 3)), min=1e-6) ** weights[s]
        else:
            value = value * torch.clamp(cs.mean(dim=(1, 2, 3)), min=1e-6) ** weights[s]
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
    return value


def distortion(x_hat: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Per image: 255² MSE ("mse") or 1 - MS-SSIM ("msssim"), weighted by λ in the loss."""
    if kind == "msssim":
        return 1 - ms_ssim(x_hat, x)
    return 255 ** 2 * ((x_hat - x) ** 2).flatten(1).mean(1)


DOWNSCALES = (0.5, 1.0)  # the random downscale of every run before lossy_native_v1


def load_crops(dirs: list[str], n_crops: int, size: int, rng: np.random.Generator,
               scales: tuple[float, float] = DOWNSCALES) -> np.ndarray:
    """Random crops of every photo, downscaled by a random factor in ``scales`` (1.0: the
    photo as the camera saw it, with the detail users' photos have)."""
    files = list_images(dirs)
    per_file = max(1, n_crops // len(files))
    per_scale = 10  # crops taken from each random downscale of a photo
    crops = []
    for path in files:
        with Image.open(path) as im:
            im = im.convert("RGB")
            for i in range(per_file):
                if i % per_scale == 0:
                    s = rng.uniform(*scales)
                    w, h = max(size, round(im.width * s)), max(size, round(im.height * s))
                    small = np.asarray(im.resize((w, h), Image.LANCZOS))
                y0, x0 = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
                crops.append(small[y0:y0 + size, x0:x0 + size])
    return np.stack(crops)


def main() -> None:
    cfg, run_dir, rng, log, opts = start_run(__doc__.splitlines()[0], device_options=True)
    device = torch.device(opts.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed crop size: pick the fastest kernels once

    cache = run_dir / "crops.npy"
    t0 = time.time()
    if cache.exists():
        crops = np.load(cache)
    else:
        crops = load_crops(cfg["data"], cfg["crops"], cfg["patch"], rng, tuple(cfg.get("scales", DOWNSCALES)))
        np.save(cache, crops)
    n_val = cfg["val_crops"]
    val, train = crops[:n_val], crops[n_val:]
    rng.shuffle(train)
    print(f"{len(train)} train / {len(val)} val crops, {time.time() - t0:.0f}s", flush=True)

    model = Codec(cfg).to(device)
    fast = [p for name, p in model.named_parameters() if name == "y_row_offset"]  # whole rows: a faster rate
    groups = [dict(params=[p for name, p in model.named_parameters() if name != "y_row_offset"])]
    if fast:  # only then: checkpoints of runs without row offsets hold one parameter group
        groups.append(dict(params=fast, lr_scale=cfg.get("row_offset_lr_scale", 1.0)))
    opt = torch.optim.Adam(groups, lr=cfg["lr"])
    lambdas = torch.tensor(cfg["lambdas"], device=device)
    step, rng = resume(run_dir, cfg, model, opt, rng, grow)
    if step == 0 and model.detail and cfg.get("init_from") and cfg.get("init_detail", True):
        init_detail_channels(model, train)
    first_level = cfg.get("first_level", 0)  # the new channels' lowest level (switch_off_below)
    if first_level and not (model.row_offsets and cfg.get("frozen_channels")):
        raise SystemExit("first_level needs level_row_offsets and frozen_channels")
    if step == 0 and first_level:
        switch_off_below(model, cfg["frozen_channels"], first_level)
    project = freeze_base(model, cfg["frozen_channels"], first_level) if cfg.get("frozen_channels") else None
    trained_levels = np.arange(first_level, len(cfg["lambdas"]))

    total = cfg["steps"]
    qat_from = int(total * cfg["qat_fraction_start"])

    def evaluate() -> list[dict]:
        model.eval()
        out = []
        with torch.no_grad():
            x = images_to_tensor(val).to(device)
            for lv in range(len(cfg["lambdas"])):
                level = torch.full((len(x),), lv, dtype=torch.long, device=device)
                x_hat, by, bz = model(x, level, step >= qat_from)
                mse = F.mse_loss(x_hat.clamp(0, 1), x).item()
                bpp = (by.sum() + bz.sum()).item() / (len(x) * x.shape[2] * x.shape[3])
                out.append(dict(level=lv, bpp=round(bpp, 4), psnr=round(10 * math.log10(1 / mse), 3),
                                msssim=round(ms_ssim(x_hat.clamp(0, 1), x).mean().item(), 4)))
        model.train()
        return out

    train_on_device = torch.from_numpy(train).to(device)  # uint8; on the CPU the same memory
    t_start, last_ckpt, start_step = time.time(), time.time(), step
    b = cfg["batch"]
    while step < total:
        quantised = step >= qat_from
        lr = learning_rate(cfg, step)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        batch = train_on_device[torch.from_numpy(rng.integers(0, len(train), b)).to(device)]
        if rng.random() < 0.5:
            batch = batch.flip(2)  # (N, H, W, 3): left-right
        x = images_to_tensor(batch)
        level = torch.from_numpy(trained_levels[rng.integers(0, len(trained_levels), b)]).to(device)
        x_hat, by, bz = model(x, level, quantised)
        pixels = x.shape[2] * x.shape[3]
        bpp = (by.flatten(1).sum(1) + bz.flatten(1).sum(1)) / pixels
        loss = (lambdas[level] * distortion(x_hat, x, cfg.get("distortion", "mse")) + bpp).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if project:
            project()
        step += 1
        if step % cfg["log_every"] == 0:
            rec = dict(step=step, lr=lr, loss=round(loss.item(), 4), bpp=round(bpp.mean().item(), 4),
                       quantised=quantised, steps_per_s=round((step - start_step) / (time.time() - t_start), 2))
            if step % cfg["val_every"] == 0:
                rec["val"] = evaluate()
            log_record(log, rec)
        out_of_time = bool(opts.minutes) and time.time() - t_start > 60 * opts.minutes and step < total
        if time.time() - last_ckpt > CHECKPOINT_EVERY_S or step == total or out_of_time:
            save_checkpoint(run_dir, cfg, model, opt, step)
            last_ckpt = time.time()
        if out_of_time:
            print(f"stopped at step {step} after {opts.minutes} min; run again to resume", flush=True)
            return
    finish(run_dir, cfg, log, dict(step=step, val=evaluate()))


if __name__ == "__main__":
    main()
