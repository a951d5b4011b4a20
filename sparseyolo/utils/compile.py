"""``torch.compile`` for inference: one place that says how sparseyolo compiles a model, dense or sparse.

Inductor with ``freezing``: parameters and buffers become constants, so oneDNN convolutions get prepacked weights
with the following activation fused (bias + SiLU in the conv's store), and the ops between layers (concatenations,
upsampling, max-pools, the Detect head's decode) become generated loops instead of one eager kernel each. A
sparsified model compiles the same way: ``SparseConv2d`` runs a registered custom op with a fake kernel, which
Inductor calls as an external kernel, and its forward reads no tensor value, so the model traces as one graph.

``compile_threads=1``: Inductor otherwise compiles in a pool of worker processes that stay alive afterwards; on a
2-core machine they slowed every other variant timed in the same process by ~30% (measured: an eager model timed
before and after compiling another).

Compiling takes seconds to a minute on 2 cores (yolov5s: ~25 s), once per model and input shape; a new input shape
compiles again. Inference only: call the result under ``torch.no_grad()`` (freezing needs it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

#: Inductor options for every compiled model in sparseyolo (see the module doc).
INDUCTOR_OPTIONS = {"freezing": True, "compile_threads": 1}


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
    compiled = torch.compile(model, fullgraph=fullgraph, options=dict(INDUCTOR_OPTIONS))

    def run(x: torch.Tensor) -> object:
        with torch.no_grad():
            return compiled(x)

    return run
