"""Train the lossless predictor: six integer-exact MLPs (diag/edge pass x plane).

Contexts are extracted with ``pillow_nic.interlace`` (the codec's own code), so
training sees exactly what the decoder sees.  Phase 1 trains in float; phase 2
is quantisation-aware (integer weights, floored activations, half-level means,
table-row scales, straight-through gradients) so the exported integer network
codes at the rate training reports.  Data: ../shared/data/train plus the extra
Debian photos; never Kodak.

    python onnx_models/training/train_lossless.py --config onnx_models/training/lossless_v1.json
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import qat  # noqa: E402
from run import CHECKPOINT_EVERY_S, learning_rate, list_images, log_record, start_run  # noqa: E402
from pillow_nic import interlace  # noqa: E402
from pillow_nic.colour import rgb_to_ycocg  # noqa: E402
from pillow_nic.lossless_model import PLANES, model_key  # noqa: E402

INPUT_SCALE = 1 / 64   # float-phase reparametrisation of the first layer


def extract(files: list[Path], crop: int, keep: float, rng: np.random.Generator, schedule: int,
            scales: tuple[float, float] = (0.5, 1.0)) -> dict:
    """Per model key: (features int16 (n, F), residual targets int16 (n,)), from crops of
    each photo downscaled by a random factor in ``scales`` (1.0: as the camera saw it)."""
    pools: dict[str, tuple[list, list]] = {model_key(k, c): ([], []) for k in interlace.SCHEDULES[schedule]
                                           for c in range(PLANES)}
    for path in files:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = rng.uniform(*scales)
            if scale < 1:
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
            arr = np.asarray(im)
        for _ in range(max(1, (arr.shape[0] * arr.shape[1]) // (crop * crop * 2))):
            y0 = rng.integers(0, max(1, arr.shape[0] - crop + 1))
            x0 = rng.integers(0, max(1, arr.shape[1] - crop + 1))
            planes = rgb_to_ycocg(arr[y0:y0 + crop, x0:x0 + crop])
            h, w = planes[0].shape
            for p in interlace.passes(h, w, schedule):
                ctx = interlace.PassContext(p)
                sel = None
                for c, plane in enumerate(planes):
                    feats, base = ctx.features(plane)
                    if sel is None:
                        sel = rng.random(len(base)) < keep
                    target = interlace.target_values(plane, p) - base
                    fl, tl = pools[model_key(p.kind, c)]
                    fl.append(feats[:, sel].T.astype(np.int16))
                    tl.append(target[sel].astype(np.int16))
                    ctx.add_coded(plane)
    return {k: (np.concatenate(f), np.concatenate(t)) for k, (f, t) in pools.items()}


class Predictor(torch.nn.Module):
    """MLP with a capped ReLU; ``quantised=True`` runs the integer contract (STE)."""

    def __init__(self, n_in: int, hidden: list[int], per_column: bool = False, act_bits: int = qat.ACT_BITS,
                 hidden_clip: int = qat.HIDDEN_CLIP, mean_bits: int = 1):
        super().__init__()
        self.per_column = per_column
        self.act_bits, self.hidden_clip, self.mean_bits = act_bits, hidden_clip, mean_bits
        sizes = [n_in] + hidden + [2]
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        with torch.no_grad():
            self.layers[-1].bias.copy_(torch.tensor([0.0, 1.0]))

    def weights(self):
        for i, layer in enumerate(self.layers):
            w = layer.weight.t() * (INPUT_SCALE if i == 0 else 1.0)
            yield w, layer.bias

    def forward(self, x: torch.Tensor, quantised: bool) -> tuple[torch.Tensor, torch.Tensor]:
        h = x
        act_exp = 0  # grid of h is 2**-act_exp
        n = len(self.layers)
        for i, (w, b) in enumerate(self.weights()):
            if quantised:
                w, b = qat.fake_quant_weights(w, b, act_exp, self.per_column)
            z = h @ w + b
            if i < n - 1:
                h = qat.hidden_activation(z, quantised, self.act_bits, self.hidden_clip)
                act_exp = self.act_bits
            else:
                h = z
        return qat.output_quantise(h[:, 0], h[:, 1], self.mean_bits, quantised)


def grow_into(model: Predictor, state: dict) -> None:
    """Load a narrower trained predictor into ``model`` so it computes the same function:
    the old units keep their weights, new units get random input weights and zero
    weights into the old units and the output, and new inputs (appended features) get
    zero weights, so training resumes from where it was."""
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            w, b = state[f"layers.{i}.weight"], state[f"layers.{i}.bias"]
            out_old, in_old = w.shape
            layer.weight[:out_old, :in_old] = w
            layer.weight[:out_old, in_old:] = 0  # the new units below feed no old unit yet
            layer.bias[:out_old] = b


def logistic_bits(target: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """-log2 P(target) under a discretised logistic (unit bins)."""
    inv = torch.exp(-log_scale)
    hi = (target - mean + 0.5) * inv
    lo = (target - mean - 0.5) * inv
    # log(sigmoid(hi) - sigmoid(lo)), stable: log_sigmoid(hi) + log1p(-exp(lo - hi)) - softplus(lo)...
    log_p = torch.log(torch.clamp(torch.sigmoid(hi) - torch.sigmoid(lo), min=1e-12))
    return -log_p / math.log(2)


def to_int_layers(model: Predictor) -> list[dict]:
    """The exported integer network (see pillow_nic.intnet)."""
    layers = []
    act_exp = 0
    n = len(model.layers)
    with torch.no_grad():
        for i, (w, b) in enumerate(model.weights()):
            if i < n - 1:
                layers.append(qat.export_hidden(w, b, act_exp, model.per_column, model.act_bits, model.hidden_clip))
                act_exp = model.act_bits
            else:
                layers.append(qat.export_output(w, b, act_exp, model.mean_bits, model.per_column))
    return layers


def evaluate_pools(models: dict, val: dict, quantised: bool) -> float:
    """Estimated bits per RGB pixel on the validation pools."""
    bits_per_plane = {c: [0.0, 0] for c in range(PLANES)}
    with torch.no_grad():
        for k, m in models.items():
            f, t = val[k]
            mean, ls = m(torch.from_numpy(f.astype(np.float32)), quantised)
            b = logistic_bits(torch.from_numpy(t.astype(np.float32)), mean, ls).sum().item()
            bits_per_plane[int(k[-1])][0] += b
            bits_per_plane[int(k[-1])][1] += len(t)
    return sum(b / n for b, n in bits_per_plane.values())


def main() -> None:
    cfg, run_dir, rng, log, _ = start_run(__doc__.splitlines()[0])

    files = list_images(cfg["data"])
    val_files = files[:: cfg["val_every"]]
    train_files = [f for f in files if f not in val_files]
    t0 = time.time()
    cache = run_dir / "pools.npz"
    if cache.exists():
        z = np.load(cache)
        keys = {name[:-2] for name in z.files if name.endswith("/f")}
        train = {k: (z[k + "/f"], z[k + "/t"]) for k in keys}
        val = {k[4:]: v for k, v in train.items() if k.startswith("val:")}
        train = {k: v for k, v in train.items() if not k.startswith("val:")}
    else:
        schedule = cfg.get("schedule", 1)
        scales = tuple(cfg.get("scales", (0.5, 1.0)))
        train = extract(train_files, cfg["crop"], cfg["keep"], rng, schedule, scales)
        val = extract(val_files, cfg["crop"], cfg["keep"], rng, schedule, scales)
        np.savez(cache, **{f"{k}/f": v[0] for k, v in train.items()}, **{f"{k}/t": v[1] for k, v in train.items()},
                 **{f"val:{k}/f": v[0] for k, v in val.items()}, **{f"val:{k}/t": v[1] for k, v in val.items()})
    print(f"data: {len(train_files)} train / {len(val_files)} val images, "
          f"{sum(len(v[1]) for v in train.values())} samples, {time.time() - t0:.0f}s", flush=True)

    models = {k: Predictor(train[k][0].shape[1], cfg["hidden"], cfg.get("per_column", False),
                           cfg.get("act_bits", qat.ACT_BITS), cfg.get("hidden_clip", qat.HIDDEN_CLIP),
                           cfg.get("mean_bits", 1)) for k in sorted(train)}  # fixed order: the optimiser's
    params = [p for m in models.values() for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=cfg["lr"])
    step = 0
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.exists() and cfg.get("init_from"):
        state = torch.load(ROOT / cfg["init_from"])
        old_kind = cfg.get("init_map", {})  # new pass kind -> the kind whose networks it starts from
        for k, m in models.items():
            kind, plane = k[:-1], k[-1]
            grow_into(m, state["models"][old_kind.get(kind, kind) + plane])
        print(f"initialised from {cfg['init_from']}", flush=True)
        log_record(log, dict(step=0, warm_start_val_bpp=round(evaluate_pools(models, val, True), 4)))
    if ckpt.exists():
        state = torch.load(ckpt)
        for k, m in models.items():
            m.load_state_dict(state["models"][k])
        step = state["step"]
        if [tuple(p.shape) for p in params] == [tuple(p.shape) for p in state.get("param_shapes", [])]:
            opt.load_state_dict(state["opt"])
            print(f"resumed at step {step}", flush=True)
        else:  # checkpoints from before the order was fixed: Adam restarts its moments
            print(f"resumed at step {step} with a fresh optimiser state", flush=True)

    total = cfg["steps"]
    qat_from = int(total * cfg["qat_fraction_start"])
    weights = {k: len(v[1]) for k, v in train.items()}

    def evaluate(quantised: bool) -> float:
        return evaluate_pools(models, val, quantised)

    t_start = time.time()
    last_ckpt = time.time()
    while step < total:
        quantised = step >= qat_from
        lr = learning_rate(cfg, step)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        loss_total = 0.0
        for k, m in models.items():
            f, t = train[k]
            idx = rng.integers(0, len(t), cfg["batch"])
            x = torch.from_numpy(f[idx].astype(np.float32))
            y = torch.from_numpy(t[idx].astype(np.float32))
            mean, ls = m(x, quantised)
            loss = logistic_bits(y, mean, ls).mean() * (weights[k] / max(weights.values()))
            loss.backward()
            loss_total += loss.item()
        opt.step()
        step += 1
        if step % cfg["log_every"] == 0 or step == total:
            rec = dict(step=step, lr=lr, loss=loss_total, quantised=quantised,
                       wall_s=round(time.time() - t_start, 1), steps_per_s=round(step / (time.time() - t_start + 1e-9), 2))
            if step % (cfg["log_every"] * 10) == 0 or step == total:
                rec["val_bpp"] = round(evaluate(quantised), 4)
            log_record(log, rec)
        if time.time() - last_ckpt > CHECKPOINT_EVERY_S or step == total:
            torch.save(dict(models={k: m.state_dict() for k, m in models.items()}, opt=opt.state_dict(), step=step,
                            param_shapes=[tuple(p.shape) for p in params]),
                       ckpt)
            last_ckpt = time.time()
    final = dict(step=step, val_bpp_quantised=round(evaluate(True), 4), val_bpp_float=round(evaluate(False), 4))
    print(json.dumps(final), flush=True)
    log.write(json.dumps(final) + "\n")
    int_layers = {k: to_int_layers(m) for k, m in models.items()}
    np.savez(run_dir / "int_layers.npz", **{f"{k}/{i}/{name}": np.asarray(v)
                                             for k, ls in int_layers.items() for i, l in enumerate(ls)
                                             for name, v in l.items() if v is not None})
    (run_dir / "final.json").write_text(json.dumps(dict(config=cfg, **final), indent=1))


if __name__ == "__main__":
    main()
