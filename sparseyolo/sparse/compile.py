"""``torch.compile`` for inference: one place that says how sparseyolo compiles a model, dense or sparse.

Inductor with ``freezing``: parameters and buffers become constants, so oneDNN convolutions get prepacked weights
with the following activation fused (bias + SiLU in the conv's store), and the ops between layers (concatenations,
upsampling, max-pools, the Detect head's decode) become generated loops instead of one eager kernel each. A
sparsified model compiles the same way: ``SparseConv2d`` runs a registered custom op with a fake kernel, which
Inductor calls as an external kernel, and its forward reads no tensor value, so the model traces as one graph.

``compile_threads=1``: Inductor otherwise compiles in a pool of worker processes that stay alive afterwards; on 2
cores an eager yolov5s timed after compiling another model ran at 25 ms with the pool and 19 ms without it.

Dynamo keeps one compiled entry per module instance on the shared ``forward`` code and by default falls back to
eager, silently, past 8 of them (``recompile_limit``); a benchmark compiles more models than that in one process,
so :func:`compile_inference` raises the limit to :data:`RECOMPILE_LIMIT`.

Compiling takes seconds to a minute on 2 cores (yolov5s: ~25 s), once per model and input shape; a new input shape
compiles again. Inference only: call the result under ``torch.no_grad()`` (freezing needs it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sparseyolo.extension import load_extension

#: Inductor options for every compiled model in sparseyolo (see the module doc).
INDUCTOR_OPTIONS = {"freezing": True, "compile_threads": 1}
#: Compiled entries per code object before Dynamo falls back to eager (its default: 8).
RECOMPILE_LIMIT = 256


def compile_inference(model: nn.Module, fullgraph: bool = False) -> Callable[[torch.Tensor], object]:
    """``model`` compiled by Inductor for inference; the first call compiles.

    Args:
        model: an eval-mode module (dense, or sparsified by :func:`sparseyolo.sparsify`), in the dtype it runs
            (``model.to(torch.bfloat16)``; a bf16 sparsified model already is).
        fullgraph: raise on a graph break instead of splitting the model into several compiled graphs.

    Returns:
        ``run(x)``: the model's output for ``x``, computed without autograd.
    """
    if model.training:
        raise ValueError("compile_inference: the model is in training mode; call model.eval() first (freezing "
                         "folds parameters into constants, for inference only)")
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    load_extension()  # the sparse ops must exist before Dynamo traces a call to them
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    compiled = torch.compile(model, fullgraph=fullgraph)

    def run(x: torch.Tensor) -> object:
        # The options are read when a call compiles (the first, or a new input shape), not by torch.compile():
        # passed as torch.compile(options=...) freezing did not take effect (the output code kept aten convs).
        with torch.no_grad(), inductor_config.patch(INDUCTOR_OPTIONS):
            return compiled(x)

    return run
