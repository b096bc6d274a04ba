"""Prototype (not a library feature yet): the Gram methods with the dense model's outputs as
their target, on the evaluation protocol (results and discussion: docs/dense-targets.md).

The library's Gram methods (sparsegpt, refit, admm) solve, per Linear, min ||X~ (W - W^)^T||^2,
where X~ are the layer's inputs in the model pruned so far: each layer copies its own dense
weights and ignores the error the earlier blocks left in its inputs. With the dense model's
inputs X to the same layer, the objective min ||X~ W^T - X W^T||^2 + lam ||W^ - W||^2 asks the
layer to undo that error. On any support its minimiser equals the library's for the target
weights T = W (G + lam I)^T (H + lam I)^-1, with H = X~^T X~, G = X~^T X and
lam = percdamp * mean(diag H), so the core's methods run unchanged on T (their Gram is H).
--target residual (Llama-like blocks) also asks o_proj and down_proj, whose outputs join the
residual stream, to undo that stream's error R = h_dense - h_pruned at the addition: T gains
E^T (H + lam I)^-1 with E = X~^T R. --target standard is the library's objective.

Two streams of hidden states go through the blocks: the pruned model's and the dense model's.
Inside a block the Linears that share an input (q/k/v, o, gate/up, down) are stages, pruned in
order, and each stage's X~ comes from a forward with the earlier stages already pruned: gathered
from one dense forward instead, o, gate/up and down would each correct again an error that q/k/v
had already corrected (SmolLM2 2:4, wanda + refit: perplexity 13674 that way).

    cd bench && ../.venv/bin/python prototype_dense_targets.py --method wanda --nm 2:4 --update refit --target residual
    cd bench && ../.venv/bin/python prototype_dense_targets.py --method admm --nm 2:4 --target standard
    cd bench && ../.venv/bin/python prototype_dense_targets.py ... --eval-on calibration   # held-out calibration text

Prints one JSON line: the configuration, seconds spent pruning and the perplexity.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

import symprune
from protocol import _windows, model_dir
from symprune.blocks import block_linears, capture_block_inputs, find_decoder_blocks
from symprune.evaluate import perplexity
from symprune.models import load_model, load_tokenizer

PERCDAMP = 0.01


class _StageInput(Exception):
    """Raised by the hook of the stage's first Linear: the rest of the block need not run."""


def dense_target(weight: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor,
                 residual: torch.Tensor | None) -> torch.Tensor:
    """T = (W (G + lam I)^T + E^T) (H + lam I)^-1 in fp64 (H = gram, G = cross, E = X~^T R for
    the residual error R the layer's output should also undo, if any), returned in fp32."""
    lam = PERCDAMP * gram.diagonal().mean()
    eye = torch.eye(gram.shape[0], dtype=torch.float64)
    rhs = (cross + lam * eye) @ weight.double().T
    if residual is not None:
        rhs = rhs + residual
    return torch.linalg.solve(gram + lam * eye, rhs).T.float()


def prune_block(block: torch.nn.Module, calls: list[Any], pruned_h: list[torch.Tensor],
                dense_h: list[torch.Tensor], recipe: Any, target: str) -> list[torch.Tensor]:
    """Prunes ``block`` stage by stage; returns the dense block's outputs (the next dense inputs)."""
    linears = block_linears(block)
    seen: dict[str, torch.Tensor] = {}
    stop_at: list[str | None] = [None]

    def record(name: str, args: tuple[Any, ...]) -> None:
        seen[name] = args[0].detach()
        if name == stop_at[0]:
            raise _StageInput

    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: record(n, a)) for n, m in linears.items()]
    # Llama-like blocks: the residual stream between attention and MLP enters this norm.
    hooks.append(block.post_attention_layernorm.register_forward_pre_hook(
        lambda _m, a: seen.__setitem__("h_mid", a[0].detach())))
    try:
        dense_inputs, dense_out, owner = [], [], {}
        for call, hidden in zip(calls, dense_h):
            seen.clear()
            dense_out.append(call.run(block, hidden))
            if not owner:  # Linears called with the same tensor share a stage
                first: dict[int, str] = {}
                owner = {n: first.setdefault(seen[n].data_ptr(), n) for n in linears}
            dense_inputs.append({n: seen[n].reshape(-1, seen[n].shape[-1]).float()
                                 for n in [*set(owner.values()), "h_mid"]})
        for stage in dict.fromkeys(owner.values()):  # in the order the block calls them
            stop_at[0] = stage
            gram = torch.zeros(())
            cross = torch.zeros(())
            # The residual error that this stage's output adds to: the block's input for
            # attention's output projection, the stream between attention and MLP for down.
            residual_site = {"self_attn.o_proj": "input", "mlp.down_proj": "h_mid"}.get(stage)
            residual = None
            for call, hidden, dense_h_in, dense in zip(calls, pruned_h, dense_h, dense_inputs):
                try:
                    call.run(block, hidden)
                except _StageInput:
                    pass
                x = seen[stage].reshape(-1, seen[stage].shape[-1]).float()
                gram = gram + (x.T @ x).double()
                if target != "standard":
                    cross = cross + (x.T @ dense[stage]).double()
                if target == "residual" and residual_site is not None:
                    width = hidden.shape[-1]
                    error = (dense_h_in.reshape(-1, width) - hidden.reshape(-1, width) if residual_site == "input"
                             else dense["h_mid"] - seen["h_mid"].reshape(-1, width).float())
                    residual = (0 if residual is None else residual) + (x.T @ error).double()
            in_norm = gram.diagonal().clamp_min(0).sqrt().float() if recipe.needs_input_stats else None
            gram32 = gram.float() if recipe.needs_gram else None
            for name in [n for n in linears if owner[n] == stage]:
                layer = linears[name]
                weight = layer.weight.detach().float()
                goal = weight if target == "standard" else dense_target(weight, gram, cross, residual)
                result = symprune.prune(goal.contiguous(), recipe, name=name, in_norm=in_norm, gram=gram32)
                layer.weight.copy_(result.weight.to(layer.weight.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return dense_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="wanda")
    parser.add_argument("--sparsity", type=float)
    parser.add_argument("--nm")
    parser.add_argument("--update")
    parser.add_argument("--target", choices=["dense", "residual", "standard"], default="dense")
    parser.add_argument("--blocks", type=int, help="prune only the first BLOCKS blocks")
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--eval-on", choices=["protocol", "calibration"], default="protocol",
                        help="'calibration': calibrate on 80 %% of the calibration text, evaluate on the rest")
    args = parser.parse_args()
    config = {k: v for k, v in vars(args).items() if v is not None}
    torch.set_grad_enabled(False)
    folder = model_dir("smollm2")
    model = load_model(folder)
    calib, evaluation = _windows({"nsamples": args.nsamples, "eval_on": args.eval_on}, load_tokenizer(folder))
    recipe = symprune.Recipe(args.method, args.sparsity, nm=args.nm, update=args.update)
    start = time.perf_counter()
    captured = capture_block_inputs(model, list(calib), progress=False)
    pruned_h = [h.float() for h in captured.hidden]
    dense_h = [h.clone() for h in pruned_h]
    blocks = find_decoder_blocks(model)
    for index, block in enumerate(blocks[:args.blocks]):
        calls = captured.calls[index]
        dense_h = prune_block(block, calls, pruned_h, dense_h, recipe, args.target)
        pruned_h = [call.run(block, hidden) for call, hidden in zip(calls, pruned_h)]
        print(f"block {index} pruned, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    print(json.dumps({"config": config, "prune_seconds": seconds,
                      "perplexity": perplexity(model, evaluation, progress=False)}))


if __name__ == "__main__":
    main()
