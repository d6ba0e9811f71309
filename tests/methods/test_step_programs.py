"""Static optimisation steps kept across edits (:class:`fastedit.methods.stepping.StepPrograms`):
padded to a few shapes, masked, they give the loop's results, and a later edit of the same shape
reuses the step instead of building it again."""

import pytest
import torch

from fastedit.hparams import MEMITHyperParams
from fastedit.methods.stepping import StepPrograms, bucket
from fastedit.methods.target import StopRule, compute_target_values
from fastedit.models import get_adapter, random_model

from .test_target import REQS, TEMPLATES, edit_setup


def test_bucket_sizes():
    """Every size holds n, wastes at most half of n, and 1..300 tokens fall into few sizes."""
    sizes = [bucket(n) for n in range(1, 301)]
    assert all(s >= n for n, s in zip(range(1, 301), sizes))
    assert all(s <= max(8, 1.5 * n) for n, s in zip(range(1, 301), sizes))
    assert sizes == sorted(sizes) and len(set(sizes)) == 12


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama", "qwen2"])
@pytest.mark.parametrize("method", ["rome", "memit"])
def test_kept_program_equals_the_loop(arch, method, gpt2_tok):
    """Three calls through one session's programs (requests A, B, A) give what the eager loop gives
    each, to float64 rounding, though their prompts are padded to bucket sizes and the state of one
    call is reset in place for the next; the third call builds nothing."""
    model, ad, hp, site, source = edit_setup(arch, method, 7, torch.float64)
    programs = StepPrograms()
    built = []
    for reqs in ([REQS[0]], [REQS[1]], [REQS[0]]):
        want = compute_target_values(model, gpt2_tok, ad, reqs, TEMPLATES, hp, 1, site, source)
        got = compute_target_values(model, gpt2_tok, ad, reqs, TEMPLATES, hp, 1, site, source, cuda_graph=True,
                                    programs=programs)
        assert got.steps == want.steps and got.losses.shape == want.losses.shape
        assert torch.allclose(got.losses, want.losses, rtol=1e-10, atol=0, equal_nan=True)
        assert float((got.values - want.values).norm() / want.values.norm()) < 1e-10
        built.append(programs.built)
    assert built[0] == 1 and built[2] == built[1] <= 2


def test_kept_program_stops_like_the_loop(gpt2_tok, own_guess_request):
    """Requests that stop at different passes (one at once, early stopping with patience 1), in a
    batch and alone, through kept programs: the loop's steps and losses; results handed out earlier
    are not changed by later calls that reuse the program's state."""
    model = random_model("gpt2", dtype=torch.float64)
    ad = get_adapter(model)
    easy = own_guess_request(model, gpt2_tok)
    hp = MEMITHyperParams.from_dict({"layers": [1], "v_num_grad_steps": 9, "v_loss_layer": 2, "clamp_norm_factor": 4.0})
    programs, kept = StepPrograms(), []
    for stop in (StopRule(-1, "all_prompts"), StopRule(0.3)):
        for reqs in ([easy, REQS[1]], [easy], [REQS[1], easy], [easy, REQS[1]]):
            a = compute_target_values(model, gpt2_tok, ad, reqs, ["{}"], hp, 1, "block", "loss_layer", early_stop=stop)
            b = compute_target_values(model, gpt2_tok, ad, reqs, ["{}"], hp, 1, "block", "loss_layer", early_stop=stop,
                                      cuda_graph=True, programs=programs)
            assert a.steps == b.steps
            assert torch.allclose(a.losses, b.losses, rtol=1e-10, atol=0, equal_nan=True)
            kept.append((b, b.values.clone(), b.losses.clone()))
    assert all(torch.equal(b.values, v) and torch.allclose(b.losses, loss, rtol=0, atol=0, equal_nan=True)
               for b, v, loss in kept)
    assert programs.built < len(kept)


def test_compiled_step_is_compiled_once(gpt2_tok):
    """``compile_step`` on a CPU: the step's logits through ``torch.compile``; the loop's result up to
    float64 rounding, and a second edit of the same shape runs the compiled code without compiling
    again (timed apart as ``target/compile`` the first time only)."""
    from torch._dynamo.utils import counters

    from fastedit.profiling import PhaseTimer

    model, ad, hp, site, source = edit_setup("gpt2", "memit", 5, torch.float64)
    programs = StepPrograms()
    want = compute_target_values(model, gpt2_tok, ad, REQS[:1], TEMPLATES, hp, 1, site, source)
    graphs, compiled = [], []
    for _ in range(2):
        with PhaseTimer() as timer:
            got = compute_target_values(model, gpt2_tok, ad, REQS[:1], TEMPLATES, hp, 1, site, source,
                                        compile_step=True, programs=programs)
        graphs.append(counters["stats"]["unique_graphs"])
        assert got.steps == want.steps
        assert float((got.values - want.values).norm() / want.values.norm()) < 1e-9
        compiled.append("target/compile" in timer.totals)
    program = next(iter(programs.programs.values()))
    assert program.compile_step and program.compiled and compiled == [True, False]
    assert programs.built == 1 and graphs[1] == graphs[0]
