"""How often ``--precision bf16`` picks the same mask as fp32 on ShapesRef.

For each shipped shapes CLIP, ``refseg eval`` runs the ShapesRef test split twice with
ground-truth proposals (alpha 0.5, the value chosen on val; clean pixels, the models'
training pixels), once per precision, and the chosen proposals are compared expression by
expression. Also prints both runs' mIoU and wall time (on a CPU without native bf16 the bf16
run is slower: same numbers, emulated).

    python benchmarks/bf16_agreement.py [--images 60] [--work /tmp/bf16-agreement]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_utils import load_note
from shapesref_table import SEED, eval_args, run_quiet


def chosen(run: Path) -> dict[int, int]:
    predictions = json.loads((run / "predictions.json").read_text())
    return {p["sent_id"]: p["proposal"] for p in predictions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--work", default="/tmp/bf16-agreement")
    args = parser.parse_args()
    work = Path(args.work)
    if not (work / "shapesref").exists():
        run_quiet(["data", "shapes", str(work), "--seed", str(SEED), "--images",
                   str(args.images)])
    print(f"start: {load_note()}")
    print("| model | expressions | same mask | fp32 mIoU | bf16 mIoU | fp32 s | bf16 s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for clip in ("shapes-vit", "shapes-rn"):
        picks, summaries, seconds = {}, {}, {}
        for precision in ("fp32", "bf16"):
            run = work / "runs" / f"{clip}-{precision}"
            start = time.perf_counter()
            run_quiet(eval_args(work, "test", clip, "gt", run)
                      + ["--alpha", "0.5", "--precision", precision])
            seconds[precision] = time.perf_counter() - start
            picks[precision] = chosen(run)
            summaries[precision] = json.loads((run / "metrics.json").read_text())
        same = sum(picks["fp32"][s] == picks["bf16"].get(s) for s in picks["fp32"])
        n = len(picks["fp32"])
        miou = [summaries[p]["mIoU"] for p in ("fp32", "bf16")]  # already in %
        print(f"| {clip} | {n} | {100 * same / n:.1f}% | {miou[0]:.1f} | {miou[1]:.1f} | "
              f"{seconds['fp32']:.0f} | {seconds['bf16']:.0f} |", flush=True)
    print(f"end: {load_note()}")


if __name__ == "__main__":
    main()
