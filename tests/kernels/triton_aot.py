"""Compile the Triton kernels ahead of time for a GPU target, without a GPU (run as a script).

Used by test_triton_compile.py in a subprocess without TRITON_INTERPRET: the interpreter accepts
programs the GPU compiler rejects (layouts, dot shapes, scalar types), so this lowers the kernels,
for the configurations their launchers use, through Triton's real pipeline down to a cubin
(ptxas included). Prints one line per kernel and exits non-zero if any fails.

    python tests/kernels/triton_aot.py [--arch 90] [--all]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fastedit.kernels import chol_update, covariance, lowrank_update, spd_solve  # noqa: E402

PTR = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32", "fp64": "*fp64"}


def covariance_configs(full: bool):
    combos = [("bf16", "fp32", True, 128, 64, 8), ("fp16", "fp64", False, 128, 64, 8), ("fp32", "fp32", True, 64, 32, 4)]
    if full:
        combos += [("bf16", "fp64", True, 128, 64, 8), ("fp16", "fp32", True, 64, 64, 4), ("fp32", "fp64", False, 16, 32, 4)]
    for x, acc, valid, bd, bk, warps in combos:
        sig = {
            "X_ptr": PTR[x], "Valid_ptr": "*u8", "Acc_ptr": PTR[acc], "n_rows": "i32", "d": "i32",
            "x_row_stride": "i32", "x_col_stride": "constexpr", "acc_row_stride": "i32", "acc_col_stride": "constexpr",
            "HAS_VALID": "constexpr", "UPCAST": "constexpr", "INPUT_PRECISION": "constexpr",
            "BLOCK_D": "constexpr", "BLOCK_K": "constexpr", "GROUP": "constexpr",
        }
        const = {"HAS_VALID": valid, "UPCAST": False, "INPUT_PRECISION": "ieee", "BLOCK_D": bd, "BLOCK_K": bk,
                 "GROUP": 8, "x_col_stride": 1, "acc_col_stride": 1}
        yield f"covariance x={x} acc={acc} valid={valid} block={bd}x{bk}", covariance._syrk_accumulate_kernel, sig, const, warps


def spd_configs(full: bool):
    # (dtype, BLOCK_N, BLOCK_K, FACTOR, SOLVE, STORE_L)
    combos = [
        ("fp32", 64, 64, True, True, False),
        ("fp64", 64, 16, True, False, True),
        ("fp64", 32, 32, False, True, False),
        ("fp32", 16, 16, True, True, False),
    ]
    if full:
        modes = ((True, True, False), (True, False, True), (False, True, False))
        combos += [
            (dt, bn, bk, *mode) for dt in ("fp32", "fp64") for bn in (16, 32, 64) for bk in (16, 64) for mode in modes
        ]
    for dt, bn, bk, factor, solve, store_l in combos:
        sig = {"A_ptr": PTR[dt], "B_ptr": PTR[dt], "L_ptr": PTR[dt], "X_ptr": PTR[dt], "Info_ptr": "*i32", "n": "i32", "k": "i32"}
        for t in "ablx":
            for s in ("batch", "row", "col"):
                sig[f"{t}_{s}_stride"] = "constexpr" if s == "col" else "i32"
        sig.update({name: "constexpr" for name in ("FACTOR", "SOLVE", "STORE_L", "BLOCK_N", "BLOCK_K")})
        const = {"FACTOR": factor, "SOLVE": solve, "STORE_L": store_l, "BLOCK_N": bn, "BLOCK_K": bk}
        const.update({f"{t}_col_stride": 1 for t in "ablx"})
        warps = spd_solve._num_warps(bn, torch.float64 if dt == "fp64" else torch.float32)
        yield f"spd_solve {dt} n<={bn} k<={bk} factor={factor} solve={solve}", spd_solve._spd_solve_kernel, sig, const, warps


def lowrank_configs(full: bool):
    combos = [("bf16", "fp32", False), ("bf16", "bf16", True), ("fp16", None, True), ("fp32", "fp32", False)]
    if full:
        combos += [(w, c, d) for w in ("bf16", "fp16", "fp32") for c in (None, "fp32", w) for d in (False, True)]
    for w, c, use_dot in combos:
        sig = {"W_ptr": PTR[w], "P_ptr": "*fp32", "Q_ptr": "*fp32", "C_ptr": PTR[c or w], "m": "i32", "n": "i32", "r": "i32"}
        for t in "wpqc":
            sig[f"{t}_row_stride"] = "i32"
            sig[f"{t}_col_stride"] = "constexpr"
        sig.update({name: "constexpr" for name in ("HAS_COMP", "USE_DOT", "BF16_BY_BITS", "BLOCK_M", "BLOCK_N", "BLOCK_R")})
        blocks = lowrank_update._blocks(use_dot)
        const = {"HAS_COMP": c is not None, "USE_DOT": use_dot, "BF16_BY_BITS": False}
        const.update({k: v for k, v in blocks.items() if k.startswith("BLOCK")})
        const.update({f"{t}_col_stride": 1 for t in "wpqc"})
        name = f"lowrank_update W={w} comp={c} dot={use_dot}"
        yield name, lowrank_update._lowrank_update_kernel, sig, const, blocks["num_warps"]


def chol_update_configs(full: bool):
    combos = [("fp32", 16), ("fp64", 32)]
    if full:
        combos += [("fp32", 32), ("fp64", 16)]
    nb, rb = chol_update.TRITON_NB, chol_update.TRITON_RB  # what the launcher uses on a GPU
    for dt, bk in combos:
        sig = {"L_ptr": PTR[dt], "K_ptr": PTR[dt], "W_ptr": PTR[dt], "T_ptr": PTR[dt], "S_ptr": PTR[dt],
               "d": "i32", "k": "i32", "j0": "i32", "l_row_stride": "i32", "l_col_stride": "constexpr",
               "k_row_stride": "i32", "k_col_stride": "constexpr", "NB": "constexpr", "BK": "constexpr"}
        const = {"l_col_stride": 1, "k_col_stride": 1, "NB": nb, "BK": bk}
        warps = chol_update._triton_blocks(torch.float64 if dt == "fp64" else torch.float32)[2]
        yield f"chol_update panel {dt} k<={bk}", chol_update._chol_update_panel_kernel, sig, const, warps
        sig = dict(sig, RB="constexpr")
        yield f"chol_update apply {dt} k<={bk}", chol_update._chol_update_apply_kernel, sig, dict(const, RB=rb), warps


def divisibility(fn, sig: dict) -> dict:
    """Triton's runtime specialisation for aligned tensors: 16-divisible pointers, strides and sizes."""
    attrs = {}
    for name, kind in sig.items():
        if kind.startswith("*") or (kind == "i32" and ("stride" in name or name in ("d", "n", "m"))):
            attrs[(fn.arg_names.index(name),)] = [["tt.divisibility", 16]]
    return attrs


def spill_bytes(kernel, arch: int) -> int | None:
    """Spill stores reported by the ptxas bundled with triton for this kernel's PTX (None if unknown)."""
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        done = subprocess.run([ptxas, f"-arch={sm}", "-v", ptx, "-o", os.path.join(tmp, "k.cubin")],
                              capture_output=True, text=True)
    found = re.search(r"(\d+) bytes spill stores", done.stderr)
    return int(found.group(1)) if found else None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--all", action="store_true", help="every configuration, not a representative subset")
    parser.add_argument("--max-spill", type=int, default=64, help="bytes of register spill stores allowed")
    args = parser.parse_args()
    target = GPUTarget("cuda", args.arch, 32)
    failed = 0
    for configs in (covariance_configs, spd_configs, lowrank_configs, chol_update_configs):
        for name, fn, sig, const, warps in configs(args.all):
            start = time.perf_counter()
            try:
                src = ASTSource(fn=fn, signature=sig, constexprs=const, attrs=divisibility(fn, sig))
                kernel = triton.compile(src, target=target,
                                        options={"num_warps": warps, "num_stages": 3})
                assert kernel.asm.get("cubin"), "no cubin produced"
                spills = spill_bytes(kernel, args.arch)
                # a few bytes of spill are harmless; hundreds mean the tile does not fit in registers
                assert spills is None or spills <= args.max_spill, f"{spills} bytes of register spill stores"
                print(f"ok     sm_{args.arch} {name} ({time.perf_counter() - start:.1f}s, "
                      f"{kernel.metadata.shared} B shared, {spills} B spilled)")
            except Exception:
                failed += 1
                print(f"FAILED sm_{args.arch} {name}\n{traceback.format_exc()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
