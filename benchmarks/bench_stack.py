"""The upper decoder stack: transformers' modules against fastedit's own forward, same process.

    python benchmarks/bench_stack.py                       # both shapes, 1 torch thread
    python benchmarks/bench_stack.py --shape narrow --repeats 50 --json out.json
    python benchmarks/bench_stack.py --compile              # also torch.compile of the owned pass
    python benchmarks/bench_stack.py --device cuda          # GPU: wall time, synchronised

One pass of the target-value optimisation, forward and backward (``packed``): a δ added at each prompt's lookup
token of packed suffixes over a cached prefix (:class:`fastedit.methods.suffix.SuffixLayout`, as a
MEMIT edit lays out its 6 rewrite prompts and its KL prompt), the layers above the edit layer, the
final norm, log-softmax of the logits at the target positions, and the gradient for δ. Also the
padded pass (every prompt whole, no cache) that ``pack=False`` takes (``padded``), and the packed
forward alone, without gradients (``packed_forward``). Shapes, random weights:

* ``narrow``: GPT-2 layout, 48 layers of width 16 (2 heads), GPT-2's vocabulary, δ after layer 17, so
  30 layers run. Too narrow to compute anything: the time is the per-layer overhead a GPU would see.
* ``smollm2``: SmolLM2-135M's shapes (Llama layout, 30 layers of width 576, 9 heads, 3 key/value
  heads, d_ff 1536, vocabulary 49152, tied head), δ after layer 8 (MEMIT's last edit layer), 21 layers.

``modules`` is :class:`fastedit.models.stack.ModuleStack` (transformers' layers, a ``DynamicCache``
for the prefix, sdpa attention: what fastedit ran before it owned the stack); ``owned`` is
:class:`fastedit.models.stack.OwnedStack`. The two alternate, pass by pass; reported are the medians of
the process's CPU time (``*_ms``; with one thread the CPU time of the pass, which other programs on a
shared machine disturb less than wall time) and of wall time (``*_wall_ms``), their ratios, the
per-layer difference and the relative error of the gradient (of the loss, for ``packed_forward``)
against the modules'. With ``--compile``, the owned pass (forward, loss and backward) is also run
through ``torch.compile`` (inductor); its first call, reported apart, compiles. The last line printed
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import machine  # noqa: E402

SHAPES = {
    "narrow": dict(arch="gpt2", layer=17, config=dict(n_embd=16, n_layer=48, n_head=2, n_inner=64, n_positions=1024),
                   vocab=50257),
    "smollm2": dict(arch="llama", layer=8, config=dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0}), vocab=49152),
}
# a MEMIT request's prompts: 6 rewrite prompts (bare + 5 templates) and the KL prompt; (length, lookup)
PROMPTS = [(9, 3), (19, 13), (17, 11), (20, 14), (16, 10), (18, 12), (6, 3)]
TARGET_TOKENS = 2


def setup(shape: str, device: torch.device):
    """(model, adapter, edit layer, layout, hidden (B, S, d), padded mask (B, S), label positions)."""
    from fastedit.methods.suffix import SuffixLayout
    from fastedit.models import get_adapter, random_model

    spec = SHAPES[shape]
    model = random_model(spec["arch"], vocab_size=spec["vocab"], seed=0, device=device, **spec["config"])
    model.config._attn_implementation = "sdpa"
    for p in model.parameters():
        p.requires_grad_(False)
    lengths, lookups = [n for n, _ in PROMPTS], [p for _, p in PROMPTS]
    S, d = max(lengths), model.config.hidden_size
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(len(PROMPTS), S, d, generator=gen).to(device)
    mask = (torch.arange(S)[None] < torch.tensor(lengths)[:, None]).long().to(device)
    layout = SuffixLayout.build(lengths, lookups, S, device, torch.float32, boolean_mask=True)
    rows = torch.tensor([i for i in range(len(PROMPTS) - 1) for _ in range(TARGET_TOKENS)], device=device)
    cols = torch.tensor([lengths[i] - TARGET_TOKENS + j for i in range(len(PROMPTS) - 1) for j in range(TARGET_TOKENS)],
                        device=device)
    return model, get_adapter(model), spec["layer"], layout, hidden, mask, (rows, cols)


def make_passes(stack, layout, hidden, mask, labels, lookups):
    """Two step functions δ (d,) → loss, and the prefix cache they share: packed suffixes over the
    cached prefix, and the padded batch."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    cache = layout.prefix_cache(stack, flat)
    base = flat[layout.suf_index]
    rows, cols = labels
    lab_r, lab_c = layout.slots(rows, cols)
    look = torch.tensor(lookups, device=hidden.device)
    every = torch.arange(hidden.shape[0], device=hidden.device)
    n_prompts = hidden.shape[0]

    def loss_of(top, r, c):
        logp = torch.log_softmax(stack.logits(top[r, c]), -1)
        return -logp[:, 0].sum()

    def packed(delta):
        add = torch.zeros_like(base)
        add[layout.slot_row, layout.slot_start] = delta.expand(n_prompts, -1)
        top, _ = layout.run_suffix(stack, base + add, cache)
        return loss_of(top, lab_r, lab_c)

    def padded(delta):
        add = torch.zeros_like(hidden)
        add[every, look] = delta.expand(n_prompts, -1)
        top, _ = stack.forward(hidden + add, mask)
        return loss_of(top, rows, cols)

    return {"packed": packed, "padded": padded}


def grad_of(step, d: int, device) -> torch.Tensor:
    """One forward and backward pass: the gradient of ``step``'s loss for δ = 0."""
    delta = torch.zeros(d, device=device, requires_grad=True)
    return torch.autograd.grad(step(delta), delta)[0]


def loss_of(step, d: int, device) -> torch.Tensor:
    """One forward pass without gradients: ``step``'s loss for δ = 0."""
    with torch.no_grad():
        return step(torch.zeros(d, device=device))[None]


KINDS = {"packed": ("packed", grad_of), "padded": ("padded", grad_of), "packed_forward": ("packed", loss_of)}


def timed(fn, device) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of ``fn()``, the device synchronised."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.process_time() - c0, time.perf_counter() - t0


def measure(shape: str, repeats: int, warmup: int, device: torch.device, compile_: bool) -> dict:
    from fastedit.models.stack import ModuleStack, OwnedStack

    model, ad, layer, layout, hidden, mask, labels = setup(shape, device)
    lookups = [p for _, p in PROMPTS]
    stacks = {"modules": ModuleStack(model, ad, layer + 1), "owned": OwnedStack(model, ad, layer + 1)}
    passes = {name: make_passes(s, layout, hidden, mask, labels, lookups) for name, s in stacks.items()}
    n_layers = ad.num_layers(model) - layer - 1
    d = model.config.hidden_size
    out = {"shape": shape, "device": str(device), "layers_run": n_layers, "hidden_size": d,
           "tokens_packed_suffix": int(layout.suf_index.numel()), "tokens_padded": int(mask.numel())}
    for kind, (layout_kind, run) in KINDS.items():
        steps = {name: passes[name][layout_kind] for name in stacks}
        extra = {}
        if compile_ and run is grad_of:
            steps["compiled"] = torch.compile(steps["owned"])
            cpu_s, wall_s = timed(lambda: run(steps["compiled"], d, device), device)
            extra = {"compile_cpu_s": round(cpu_s, 2), "compile_wall_s": round(wall_s, 2)}
        grads = {name: run(step, d, device) for name, step in steps.items()}
        err = {name: float((g - grads["modules"]).norm() / grads["modules"].norm()) for name, g in grads.items()}
        cpu = {name: [] for name in steps}
        wall = {name: [] for name in steps}
        for i in range(warmup + repeats):
            for name, step in steps.items():
                c, w = timed(lambda: run(step, d, device), device)
                if i >= warmup:
                    cpu[name].append(c)
                    wall[name].append(w)
        # one thread on a CPU: the process's CPU time is the pass's, and others' load disturbs it less
        clock = wall if device.type == "cuda" else cpu
        med = {name: statistics.median(t) * 1e3 for name, t in clock.items()}
        med_wall = {name: statistics.median(t) * 1e3 for name, t in wall.items()}
        row = {"clock": "wall" if device.type == "cuda" else "process cpu"}
        for name in steps:
            row[f"{name}_ms"] = round(med[name], 3)
            row[f"{name}_wall_ms"] = round(med_wall[name], 3)
            if name != "modules":
                row[f"ratio_{name}"] = round(med["modules"] / med[name], 3)
                row[f"rel_err_{name}"] = err[name]
        row["ratio"] = row["ratio_owned"]
        row["saved_per_layer_ms"] = round((med["modules"] - med["owned"]) / n_layers, 4)
        out[kind] = {**row, **extra}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true",
                    help="also time torch.compile of the owned pass (compile time reported apart)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = list(SHAPES) if args.shape == "all" else [args.shape]
    result = {"machine": machine(), "repeats": args.repeats, "shapes": {}}
    for shape in shapes:
        r = measure(shape, args.repeats, args.warmup, device, args.compile)
        result["shapes"][shape] = r
        for kind in KINDS:
            k = r[kind]
            line = (f"{shape:8s} {kind:7s} {r['layers_run']} layers: modules {k['modules_ms']:8.2f} ms  "
                    f"owned {k['owned_ms']:8.2f} ms  ratio {k['ratio']:5.2f}  "
                    f"saved {k['saved_per_layer_ms'] * 1e3:6.1f} us/layer  err {k['rel_err_owned']:.1e}")
            if "compiled_ms" in k:
                line += (f"  compiled {k['compiled_ms']:8.2f} ms  ratio {k['ratio_compiled']:5.2f}  "
                         f"(compile {k['compile_wall_s']:.0f} s wall, {k['compile_cpu_s']:.0f} s cpu)")
            print(line)
    result["ratio"] = {s: result["shapes"][s]["packed"]["ratio"] for s in shapes}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
