"""Rate-distortion and lossless reports: nic against the peers, in one run, on one folder.

    python benchmarks/rd_report.py                 # Kodak if present, else the bundled sample
    python benchmarks/rd_report.py --images DIR --limit 4 --out benchmarks/results

Writes ``rd.json`` (every point), ``rd_psnr.png`` / ``rd_msssim.png`` (plots, if
matplotlib is installed) and prints markdown tables: mean bpp / PSNR / MS-SSIM per
setting, BD-rates of nic against each peer over 0.15-1.0 bpp, lossless bpp and
single-thread encode/decode MP/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402
from pillow_nic import metrics  # noqa: E402

BD_RANGE = (0.15, 1.0)


def bd_rate(rate_a: list[float], dist_a: list[float], rate_b: list[float], dist_b: list[float],
            bpp_range: tuple[float, float] = BD_RANGE) -> float | None:
    """Bjøntegaard delta rate of curve A against B in percent (negative: A needs fewer bits
    for the same quality).  Cubic fits of log-rate over quality, integrated over the common
    quality interval of the points inside ``bpp_range`` (plus one neighbour on each side)."""

    def window(rate, dist):
        r, d = np.asarray(rate, float), np.asarray(dist, float)
        order = np.argsort(r)
        r, d = r[order], d[order]
        inside = np.flatnonzero((r >= bpp_range[0]) & (r <= bpp_range[1]))
        if len(inside) == 0:
            return r[:0], d[:0]
        lo, hi = max(0, inside[0] - 1), min(len(r), inside[-1] + 2)
        return r[lo:hi], d[lo:hi]

    ra, da = window(rate_a, dist_a)
    rb, db = window(rate_b, dist_b)
    if len(ra) < 2 or len(rb) < 2:
        return None
    lo, hi = max(da.min(), db.min()), min(da.max(), db.max())
    if hi <= lo:
        return None
    deg_a, deg_b = min(3, len(ra) - 1), min(3, len(rb) - 1)
    pa = np.polyint(np.polyfit(da, np.log(ra), deg_a))
    pb = np.polyint(np.polyfit(db, np.log(rb), deg_b))
    avg = ((np.polyval(pa, hi) - np.polyval(pa, lo)) - (np.polyval(pb, hi) - np.polyval(pb, lo))) / (hi - lo)
    return float((np.exp(avg) - 1) * 100)


def run_lossy(images, codecs) -> list[dict]:
    points = []
    for codec in codecs:
        for setting in codec.settings:
            rows = []
            for name, rgb in images:
                t0 = time.perf_counter()
                data = codec.encode(rgb, setting)
                t1 = time.perf_counter()
                out = codec.decode(data)
                t2 = time.perf_counter()
                px = rgb.shape[0] * rgb.shape[1]
                rows.append(dict(image=name, bpp=8 * len(data) / px, psnr=metrics.psnr(rgb, out),
                                 msssim=metrics.ms_ssim(rgb, out), enc_s=t1 - t0, dec_s=t2 - t1, px=px))
            px = sum(r["px"] for r in rows)
            points.append(dict(codec=codec.name, base=codec.base, setting=setting, images=rows,
                               bpp=float(np.mean([r["bpp"] for r in rows])),
                               psnr=float(np.mean([r["psnr"] for r in rows])),
                               msssim=float(np.mean([r["msssim"] for r in rows])),
                               enc_mps=px / sum(r["enc_s"] for r in rows) / 1e6,
                               dec_mps=px / sum(r["dec_s"] for r in rows) / 1e6))
            p = points[-1]
            print(f"  {codec.name:>8} {str(setting):>4}: {p['bpp']:.3f} bpp {p['psnr']:.2f} dB "
                  f"{p['msssim']:.4f}  dec {p['dec_mps']:.1f} MP/s", file=sys.stderr, flush=True)
    return points


def run_lossless(images, codecs) -> list[dict]:
    out = []
    for codec in codecs:
        total_bits = enc = dec = 0.0
        px = 0
        for name, rgb in images:
            t0 = time.perf_counter()
            data = codec.encode(rgb, None)
            t1 = time.perf_counter()
            back = codec.decode(data)
            t2 = time.perf_counter()
            if not np.array_equal(back, rgb):
                raise SystemExit(f"{codec.name} is not lossless on {name}")
            total_bits += 8 * len(data)
            px += rgb.shape[0] * rgb.shape[1]
            enc += t1 - t0
            dec += t2 - t1
        out.append(dict(codec=codec.name, bpp=total_bits / px, enc_mps=px / enc / 1e6, dec_mps=px / dec / 1e6))
        print(f"  {codec.name:>20}: {out[-1]['bpp']:.3f} bpp, enc {out[-1]['enc_mps']:.2f} MP/s, "
              f"dec {out[-1]['dec_mps']:.2f} MP/s", file=sys.stderr, flush=True)
    return out


def curves(points: list[dict]) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for p in points:
        c = out.setdefault(p["codec"], dict(bpp=[], psnr=[], msssim=[]))
        for k in c:
            c[k].append(p[k])
    return out


def plot(points: list[dict], out_dir: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots", file=sys.stderr)
        return
    for metric, label in (("psnr", "PSNR (dB, RGB)"), ("msssim", "MS-SSIM")):
        fig, ax = plt.subplots(figsize=(7, 5))
        for name, c in curves(points).items():
            ax.plot(c["bpp"], c[metric], "o-", label=name, linewidth=2.5 if name == "nic" else 1.2)
        ax.set_xlim(0, 1.2)
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / f"rd_{metric}.png", dpi=100)
        plt.close(fig)


def seam_report(images, out_dir: Path, quality: int = 30) -> str:
    """Error next to tile borders vs everywhere else (nic lossy, 128-pixel tiles so each
    image has many borders), and a picture of a crop across a border."""
    from PIL import Image

    import pillow_nic

    near, far = [], []
    crop = None
    for name, rgb in images:
        data = pillow_nic.encode(rgb, "RGB", lossless=False, quality=quality, tile_size=128)
        out = pillow_nic.decode(data).pixels
        err = ((out.astype(np.float64) - rgb) ** 2).mean(axis=2)
        border = np.zeros(err.shape, bool)
        for c in range(128, rgb.shape[1], 128):
            border[:, c - 1:c + 1] = True
        for r in range(128, rgb.shape[0], 128):
            border[r - 1:r + 1, :] = True
        near.append(err[border].mean())
        far.append(err[~border].mean())
        if crop is None and rgb.shape[0] >= 192 and rgb.shape[1] >= 192:
            window = (slice(64, 192), slice(64, 192))  # centred on the border crossing at (128, 128)
            crop = np.concatenate([rgb[window], out[window]], axis=1)
    if crop is not None:
        Image.fromarray(crop).resize((crop.shape[1] * 3, crop.shape[0] * 3), Image.NEAREST).save(
            out_dir / "seam_crop.png")
    return (f"Tile borders (128-pixel tiles, quality {quality}, {len(images)} images): mean squared error "
            f"on the two pixel rows/columns at each border {np.mean(near):.2f}, elsewhere {np.mean(far):.2f}.")


def markdown(points: list[dict], lossless: list[dict]) -> str:
    lines = []
    if points:
        lines += ["| codec | setting | bpp | PSNR | MS-SSIM | encode MP/s | decode MP/s |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {p['codec']} | {p['setting']} | {p['bpp']:.3f} | {p['psnr']:.2f} | {p['msssim']:.4f} | "
                  f"{p['enc_mps']:.2f} | {p['dec_mps']:.1f} |" for p in points]
        c = curves(points)
        for own in (name for name in ("nic", "nic-ssim") if name in c):
            lines += ["", f"BD-rate of {own} over {BD_RANGE[0]}-{BD_RANGE[1]} bpp (negative = {own} smaller):", "",
                      "| against | BD-rate (PSNR) | BD-rate (MS-SSIM) |", "|---|---|---|"]
            for name, other in c.items():
                if name == own:
                    continue
                bp = bd_rate(c[own]["bpp"], c[own]["psnr"], other["bpp"], other["psnr"])
                bm = bd_rate(c[own]["bpp"], c[own]["msssim"], other["bpp"], other["msssim"])
                fmt = lambda v: "n/a" if v is None else f"{v:+.1f} %"  # noqa: E731
                lines.append(f"| {name} | {fmt(bp)} | {fmt(bm)} |")
    restorers = {p["codec"]: p["base"] for p in points if p.get("base")}
    for name, base in restorers.items():
        c = curves(points)
        bp = bd_rate(c[name]["bpp"], c[name]["psnr"], c[base]["bpp"], c[base]["psnr"])
        lines += ["", f"Restoration: {name} against {base} alone "
                      f"(BD-rate PSNR {'n/a' if bp is None else f'{bp:+.1f} %'}):", "",
                  "| setting | bpp | PSNR plain | PSNR restored | gain dB | decode MP/s |", "|---|---|---|---|---|---|"]
        plain = {p["setting"]: p for p in points if p["codec"] == base}
        for p in (p for p in points if p["codec"] == name):
            b = plain[p["setting"]]
            lines.append(f"| {p['setting']} | {p['bpp']:.3f} | {b['psnr']:.2f} | {p['psnr']:.2f} | "
                         f"{p['psnr'] - b['psnr']:+.2f} | {p['dec_mps']:.1f} |")
    if lossless:
        lines += ["", "| lossless codec | bpp | encode MP/s | decode MP/s |", "|---|---|---|---|"]
        lines += [f"| {r['codec']} | {r['bpp']:.3f} | {r['enc_mps']:.2f} | {r['dec_mps']:.2f} |" for r in lossless]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", help="folder of images (default: ../shared/data/kodak, else bundled sample)")
    ap.add_argument("--limit", type=int, help="use only the first N images")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--skip-lossy", action="store_true")
    ap.add_argument("--skip-lossless", action="store_true")
    ap.add_argument("--fast", action="store_true", help="skip the slowest peer settings (WebP lossless m6)")
    ap.add_argument("--threads", type=int, default=1, help="threads for nic (default 1, like the peers)")
    ap.add_argument("--seams", action="store_true", help="also measure error at lossy tile borders")
    ap.add_argument("--codecs", help="comma-separated lossy codec names to run (default: all)")
    args = ap.parse_args(argv)
    os.environ["NIC_THREADS"] = str(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = peers.image_set(args.images, args.limit)
    print(f"{len(images)} images", file=sys.stderr)
    lossy_codecs = [c for c in peers.lossy_codecs() if not args.codecs or c.name in args.codecs.split(",")]
    points = [] if args.skip_lossy else run_lossy(images, lossy_codecs)
    lossless = [] if args.skip_lossless else run_lossless(images, peers.lossless_codecs(not args.fast))
    (out_dir / "rd.json").write_text(json.dumps(dict(images=[n for n, _ in images], lossy=points,
                                                     lossless=lossless), indent=1))
    if points:
        plot(points, out_dir)
    print(markdown(points, lossless))
    if args.seams:
        print("\n" + seam_report(images, out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
