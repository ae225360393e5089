"""Tables from a throughput run: megapixels per second of every codec, and nic's speed as a
ratio of each peer's, measured in the same run.

    python -m pytest benchmarks/test_throughput.py --benchmark-json=/tmp/tp.json
    python benchmarks/summarise.py /tmp/tp.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def rows(report: dict) -> list[dict]:
    """One row per benchmark: operation, codec, threads, runtime, MP/s, bpp."""
    out = []
    for b in report["benchmarks"]:
        info = b["extra_info"]
        out.append(dict(op=b["name"].split("[")[0].removeprefix("test_"), codec=info["codec"],
                        setting=info["setting"], threads=info["threads"], runtime=info.get("runtime", "onnxruntime"),
                        mps=info["megapixels"] / b["stats"]["mean"], bpp=info["bpp"]))
    return out


def markdown(table: list[dict]) -> str:
    lines = ["| operation | codec | setting | threads | runtime | bpp | MP/s |", "|---|---|---|---|---|---|---|"]
    for r in sorted(table, key=lambda r: (r["op"], r["codec"], r["threads"], r["runtime"])):
        lines.append(f"| {r['op']} | {r['codec']} | {r['setting']} | {r['threads']} | {r['runtime']} | "
                     f"{r['bpp']:.3f} | {r['mps']:.2f} |")
    single = {(r["op"], r["codec"]): r for r in table if r["threads"] == "1" and r["runtime"] == "onnxruntime"}
    for op in ("decode", "encode"):
        for nic, lossless in (("nic", False), ("nic-lossless", True)):
            if (op, nic) not in single:
                continue
            peers = sorted(c for o, c in single if o == op and not c.startswith("nic")
                           and (single[(o, c)]["setting"] is None) == lossless)
            mine = single[(op, nic)]["mps"]
            lines += ["", f"{op}, {nic}: its speed / each peer's (1 thread each, same run)", "",
                      "| " + " | ".join(peers) + " |", "|---" * len(peers) + "|",
                      "| " + " | ".join(f"{mine / single[(op, p)]['mps']:.2f}" for p in peers) + " |"]
    numpy = {(r["codec"], r["threads"]): r["mps"] for r in table if r["op"] == "decode" and r["runtime"] == "numpy"}
    if numpy:
        lines += ["", "decode under the NumPy runtime / under ONNX Runtime", "", "| codec | threads | ratio |",
                  "|---|---|---|"]
        for r in table:
            if r["op"] == "decode" and r["runtime"] == "onnxruntime" and (r["codec"], r["threads"]) in numpy:
                lines.append(f"| {r['codec']} | {r['threads']} | {numpy[(r['codec'], r['threads'])] / r['mps']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path, help="a pytest-benchmark --benchmark-json file")
    args = ap.parse_args(argv)
    print(markdown(rows(json.loads(args.json.read_text()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
