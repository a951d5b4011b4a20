"""One pruning configuration for every entry point: ``sparseyolo prune``, ``finetune``, ``val --prune``, the checkpoint.

A :class:`PruneConfig` says what to prune (method, amount or N:M pattern, layers), optionally how to choose the
masks on calibration images (one-shot SparseGPT, ``sparseyolo prune --calibrate``) or along a cubic schedule during
training (``finetune --gradual``). It is validated in one place (:meth:`PruneConfig.validate`), and stored in a
checkpoint as the plain dict of :meth:`PruneConfig.to_dict` (``meta["pruning"]``, and ``train_args["prune"]`` of a
training run); :meth:`PruneConfig.from_dict` reads those dicts back, including the ones older versions wrote
(the ``sparseyolo prune`` recipe and the ``PruneRecipe`` of training: their keys are a subset of the fields).

Errors are :class:`~sparseyolo.utils.errors.ParameterError` naming the fields; the CLI reports them with its flags.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from sparseyolo.prune.levels import Level, canonical_level, parse_level, parse_nm
from sparseyolo.prune.tiles import tile_height
from sparseyolo.utils.errors import ParameterError

METHODS = ("l1", "global", "nm", "tile")  # sparseyolo.prune.prune's methods

__all__ = ["PruneConfig", "parse_nm"]

LOGGER = logging.getLogger(__name__)

BN_RECALIBRATION = ("reset", "none")
CALIB_TARGETS = ("dense", "layer")
#: How calibrated pruning chooses each layer's mask (sparseyolo.prune.layerwise.prune_layer).
SOLVERS = ("sparsegpt", "admm")


@dataclass
class PruneConfig:
    """What to prune, and how the masks are chosen.

    Attributes:
        method: ``'l1'`` (per-layer unstructured), ``'global'`` (one magnitude threshold over all layers),
            ``'nm'`` (N kept of every M consecutive input channels) or ``'tile'`` (16 x 32 channel tiles of each
            tap, the unit the AMX CPU kernel skips).
        amount: sparsity for ``'l1'``/``'global'``/``'tile'``, in [0, 1) (in (0, 1) for training); None for
            ``'nm'``.
        n, m: the N:M pattern of ``'nm'``.
        block: ``'nm'``: share each N:M choice across ``block`` consecutive output channels; ``'tile'``: the
            tiles' height, 16 (or 1, the same) or 32 output channels.
        permute: ``'nm'`` only, ``sparseyolo prune``: first permute input channels (folded into the weights,
            :mod:`sparseyolo.prune.permute`) so that the N:M groups keep more saliency.
        include, exclude: ``fnmatch`` patterns of layer names to prune / never prune.
        gradual: training only: prune along the cubic schedule instead of once before training.
        start, end: gradual pruning window in epochs (``start < end``).
        initial: sparsity at ``start``.
        freq: batches between mask updates inside the window (0: four updates per epoch).
        calibrate: data yaml of the calibration images: one-shot calibrated (OBS) pruning; None: magnitude.
        calib_images, calib_img, calib_batch: number, size (pixels) and batch of the calibration images.
        blocksize, damp: the solver's lazy-update block and Hessian dampening.
        bn_recalib: ``'reset'`` re-estimates BatchNorm statistics afterwards, ``'none'`` keeps them.
        calib_target: fit each layer to the dense model's output (``'dense'``) or its own (``'layer'``).
        calib_steps: prune each layer in this many increments (None: 1 for N:M, 3 for unstructured and tiles).
        refit: re-solve the kept weights once each layer's mask is chosen.
        calib_solver: how each layer's mask is chosen: ``'sparsegpt'`` or ``'admm'`` (:mod:`sparseyolo.prune.admm`).
        reconstruct: after calibrated pruning, Adam steps per stage of stage reconstruction
            (:mod:`sparseyolo.prune.reconstruct`) on the calibration images; 0: none.
        reconstruct_lr: its initial learning rate.
        target_speedup: ``'tile'`` with ``calibrate`` only, instead of ``amount``: choose each conv's sparsity
            level among ``levels`` to reach this end-to-end speedup on this machine at the least calibrated
            error (:mod:`sparseyolo.sparse.speedup_profile`).
        levels: the levels a ``target_speedup`` profile chooses from besides dense and 0
            (:mod:`sparseyolo.prune.levels`: tile sparsities in ``(0, 1)`` and N:M-block levels such as
            ``"2:4b32"``).
        search_iters: profiles the search over per-layer error coefficients tries (0: the plain choice).
        layer_amounts: the per-conv levels the profile chose (recorded).
        fused: the BatchNorms were folded before pruning (recorded).
        source: the checkpoint that was pruned (recorded).
    """

    method: str = "nm"
    amount: float | None = None
    n: int = 2
    m: int = 4
    block: int = 1
    permute: bool = False
    include: list[str] | None = None
    exclude: list[str] | None = None
    gradual: bool = False
    start: int = 0
    end: int = 1
    initial: float = 0.0
    freq: int = 0
    calibrate: str | None = None
    calib_images: int = 128
    calib_img: int = 640
    calib_batch: int = 8
    blocksize: int = 128
    damp: float = 0.01
    bn_recalib: str = "none"
    calib_target: str = "dense"
    calib_steps: int | None = None
    refit: bool = True
    calib_solver: str = "admm"
    reconstruct: int = 0
    reconstruct_lr: float = 1e-3
    target_speedup: float | None = None
    levels: list[Level] | None = None
    search_iters: int = 0
    layer_amounts: dict[str, Level] | None = None
    fused: bool = False
    source: str | None = None

    @property
    def final(self) -> float:
        """The final sparsity of the pruned layers."""
        return 1.0 - self.n / self.m if self.method == "nm" else float(self.amount or 0.0)

    @property
    def steps(self) -> int:
        """Calibrated pruning increments per layer (``calib_steps``, else 1 for N:M and 3 for unstructured)."""
        if self.calib_steps is not None:
            return self.calib_steps
        return 1 if self.method == "nm" else 3

    def validate(self, epochs: int | None = None) -> PruneConfig:
        """Raise :class:`ParameterError` naming the field and the fix for an inconsistent configuration.

        Args:
            epochs: the training run's epochs, when the configuration prunes before or during training (then the
                amount must be above 0 and a gradual window must fit in the run).

        Returns:
            ``self``, for chaining.
        """
        if self.method not in METHODS:
            raise ParameterError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}", "method")
        if self.method == "nm":
            if self.amount is not None:
                raise ParameterError("method nm takes n:m, not amount", "method", "n:m", "amount")
            if not (isinstance(self.n, int) and isinstance(self.m, int) and 1 <= self.n < self.m <= 16):
                raise ParameterError(f"N:M pruning needs 1 <= n < m <= 16 (keep n of every m), got {self.n}:{self.m}")
            if self.block < 1:
                raise ParameterError(f"block must be >= 1, got {self.block}", "block")
        elif self.method == "tile":
            try:
                tile_height(self.block)
            except ValueError:
                raise ParameterError(f"block is the tiles' height for method tile: 16 or 32, got {self.block}",
                                     "block") from None
            if self.block != 1 and self.target_speedup is not None:
                raise ParameterError("target_speedup chooses among levels of 16 x 32 tiles; drop block", "block",
                                     "target_speedup")
        elif self.block != 1:
            raise ParameterError(f"block is for methods nm and tile, not method {self.method}", "block", "method")
        if self.method != "nm":
            if self.permute:
                raise ParameterError(f"permute is for method nm (N:M groups), not method {self.method}", "permute",
                                     "method")
            low = "(0, 1)" if epochs is not None else "[0, 1)"
            if self.target_speedup is not None:
                self._validate_profile(epochs)
            elif self.amount is None:
                raise ParameterError(f"method {self.method} needs amount, a fraction in {low}", "method", "amount")
            ok = self.target_speedup is not None or (0.0 < self.amount < 1.0 if epochs is not None
                                                     else 0.0 <= self.amount < 1.0)
            if not ok:
                raise ParameterError(f"amount must be in {low}, got {self.amount}", "amount")
        if self.calibrate is not None:
            self._validate_calibration()
        elif self.reconstruct:
            raise ParameterError("reconstruct trains the pruned stages on the calibration images: it needs calibrate",
                                 "reconstruct", "calibrate")
        if self.permute and (self.gradual or epochs is not None):
            raise ParameterError("permute applies to one-shot pruning (sparseyolo prune), not during training: "
                                 "prune with permute first, then fine-tune the result", "permute")
        if self.gradual:
            if epochs is None:
                raise ParameterError("gradual pruning happens during training (sparseyolo.train)", "gradual")
            if self.calibrate is not None:
                raise ParameterError("gradual and calibrate do not go together", "gradual", "calibrate")
            if not 0 <= self.start < self.end <= epochs:
                raise ParameterError(f"start {self.start} / end {self.end} must satisfy 0 <= start < end <= epochs "
                                     f"({epochs})", "start", "end")
            if not 0.0 <= self.initial < self.final:
                raise ParameterError(f"initial {self.initial} must be in [0, final sparsity {self.final:.3g})",
                                     "initial")
            if self.end == epochs:
                LOGGER.warning(
                    "the pruning window ends with the last epoch: the final sparsity is reached on the last batch, "
                    "with no epoch left to fine-tune at it (Zhu & Gupta fine-tune after the pruning window)"
                )
        return self

    def _validate_profile(self, epochs: int | None) -> None:
        if self.method != "tile" or self.calibrate is None or epochs is not None:
            raise ParameterError("target_speedup chooses per-layer tile sparsity by calibration: it needs method tile "
                                 "and calibrate (sparseyolo prune), then fine-tune the result", "target_speedup",
                                 "method", "calibrate")
        if self.amount is not None:
            raise ParameterError("give target_speedup or amount, not both", "target_speedup", "amount")
        if not self.target_speedup > 0:
            raise ParameterError(f"target_speedup must be positive, e.g. 1.5, got {self.target_speedup}",
                                 "target_speedup")
        if not self.levels:
            raise ParameterError("levels must name at least one sparsity level, e.g. 0.5 or 2:4b32", "levels")
        for level in self.levels:
            try:
                ok = parse_level(level) != 0.0
            except ValueError as e:
                raise ParameterError(f"levels: {e}", "levels") from None
            if not ok:
                raise ParameterError("levels are what a conv may be pruned to besides nothing: 0 is always offered",
                                     "levels")
        if self.search_iters < 0:
            raise ParameterError(f"search_iters must be >= 0, got {self.search_iters}", "search_iters")

    def _validate_calibration(self) -> None:
        if self.method == "global":
            raise ParameterError("calibrate works with method l1 (per-layer amount), nm or tile, not global",
                                 "calibrate", "method", "amount")
        if self.calib_images < 1 or self.calib_batch < 1:
            raise ParameterError("calib_images and calib_batch must be at least 1", "calib_images", "calib_batch")
        if self.steps < 1:
            raise ParameterError(f"calib_steps must be at least 1, got {self.calib_steps}", "calib_steps")
        if self.bn_recalib not in BN_RECALIBRATION:
            raise ParameterError(f"bn_recalib must be reset or none, got {self.bn_recalib!r}", "bn_recalib")
        if self.calib_target not in CALIB_TARGETS:
            raise ParameterError(f"calib_target must be dense or layer, got {self.calib_target!r}", "calib_target")
        if self.calib_solver not in SOLVERS:
            raise ParameterError(f"calib_solver must be one of {', '.join(SOLVERS)}, got {self.calib_solver!r}",
                                 "calib_solver")
        if not (isinstance(self.reconstruct, int) and self.reconstruct >= 0):
            raise ParameterError(f"reconstruct is a number of steps per stage, >= 0, got {self.reconstruct!r}",
                                 "reconstruct")
        if not self.reconstruct_lr > 0:
            raise ParameterError(f"reconstruct_lr must be positive, got {self.reconstruct_lr}", "reconstruct_lr")

    def prune_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`sparseyolo.prune.prune` (besides ``method``) for this configuration."""
        kw: dict[str, Any] = {"include": self.include, "exclude": self.exclude}
        if self.method == "nm":
            kw.update(n=self.n, m=self.m)
            if self.block != 1:
                kw["block"] = self.block
        else:
            kw["amount"] = self.amount
            if self.method == "tile" and self.block != 1:
                kw["block"] = self.block
        return kw

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint (``meta["pruning"]``, ``train_args["prune"]``): every field."""
        d = dataclasses.asdict(self)
        d["calib_steps"] = self.steps if self.calibrate is not None else self.calib_steps
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruneConfig:
        """The configuration a checkpoint recorded, from :meth:`to_dict` or an older version's dict.

        Older checkpoints hold the ``sparseyolo prune`` recipe (``{"method", "n", "m", "block", "amount", "include",
        "exclude", "fused", "source"}`` plus the calibration settings) or training's ``PruneRecipe`` fields; both
        are subsets of the fields. Unknown keys (a newer version's) are dropped with a warning. Not validated: call
        :meth:`validate` before pruning with it.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            LOGGER.warning("pruning configuration: ignoring unknown keys %s", unknown)
        fields = {k: v for k, v in d.items() if k in names}
        if fields.get("calibrate") and "calib_solver" not in fields:
            fields["calib_solver"] = "sparsegpt"  # calibrated before ADMM existed (and became the default)
        return cls(**fields)

    @classmethod
    def from_spec(cls, spec: float | str, method: str | None = None, **fields: Any) -> PruneConfig:
        """From ``val``'s ``prune`` argument: an amount (``0.3``, ``"0.3"``) or an N:M pattern (``"2:4"``).

        ``method`` defaults to ``"nm"`` for a pattern and ``"l1"`` for an amount. Validated.

        Raises:
            ParameterError, ValueError: a spec or method that does not fit (named as the ``prune`` and
                ``prune_method`` arguments).
        """
        if isinstance(spec, str) and ":" in spec:
            n, m = parse_nm(spec)
            if method not in (None, "nm"):
                raise ParameterError(f"an N:M pattern ({spec}) needs prune_method nm, got '{method}'", "prune_method")
            return cls(method="nm", n=n, m=m, **fields).validate()
        try:
            amount = float(spec)
        except ValueError:
            raise ParameterError(f"prune takes an amount in [0, 1) or an N:M pattern such as 2:4, got '{spec}'",
                                 "prune") from None
        if (method or "l1") == "nm":
            raise ParameterError("prune_method nm takes an N:M pattern such as prune 2:4, not an amount",
                                 "prune_method", "prune")
        cfg = cls(method=method or "l1", amount=amount, **fields)
        try:
            return cfg.validate()
        except ParameterError as e:  # the amount is val's `prune` argument
            raise ParameterError(e.message.replace("amount", "prune"), *e.params, "prune") from None

    @classmethod
    def from_cli_args(cls, args: Any, epochs: int | None = None) -> PruneConfig | None:
        """From the parsed options of ``sparseyolo prune`` (``args.method``) or ``finetune`` (``args.prune_method``).

        Checks what only the options show (``--nm`` given with another method), fills the defaults that depend on
        the method, and validates. Returns None for ``finetune`` without ``--prune-method``.
        """
        finetune = hasattr(args, "prune_method")
        nm_spec = getattr(args, "nm", None)
        block = getattr(args, "block", 1)
        if finetune:
            method = args.prune_method
            if method is None:
                for name, value in (("amount", args.amount), ("n:m", nm_spec), ("gradual", args.gradual or None),
                                    ("block", None if block == 1 else block)):
                    if value is not None:
                        raise ParameterError(f"{name} needs method (l1, global, nm or tile)", name, "method")
                return None
        else:
            method = args.method or ("nm" if nm_spec or block != 1 else "l1")
        if method != "nm" and nm_spec:
            raise ParameterError(f"n:m and block are for method nm, not method {method}", "n:m", "block", "method")
        n, m = parse_nm(nm_spec or "2:4")
        fields: dict[str, Any] = {"method": method, "amount": args.amount, "n": n, "m": m, "block": block,
                                  "include": args.include, "exclude": args.exclude}
        if finetune:
            fields.update(gradual=args.gradual, start=args.prune_start, initial=args.initial_sparsity,
                          freq=args.prune_freq,
                          end=args.prune_end if args.prune_end is not None else max(args.epochs // 2, 1))
        else:
            fields.update(fused=bool(args.fused), source=str(args.weights), permute=bool(args.permute))
            if getattr(args, "target_speedup", None) is not None:
                if args.method not in (None, "tile"):
                    raise ParameterError("target_speedup chooses a sparsity level per layer; drop method "
                                         f"{args.method}", "target_speedup", "method")
                try:
                    levels = [canonical_level(v) for v in args.levels]
                except ValueError as e:
                    raise ParameterError(f"levels: {e}", "levels") from None
                fields.update(method="tile", target_speedup=args.target_speedup, levels=levels,
                              search_iters=args.search_iters)
            if args.calibrate:
                fields.update(calibrate=str(args.calibrate), calib_images=args.calib_images, calib_img=args.calib_img,
                              calib_batch=args.calib_batch, blocksize=args.blocksize, damp=args.damp,
                              bn_recalib=args.bn_recalib, calib_target=args.calib_target,
                              calib_steps=args.calib_steps, refit=args.refit, calib_solver=args.calib_solver,
                              reconstruct=getattr(args, "reconstruct", 0),
                              reconstruct_lr=getattr(args, "reconstruct_lr", 1e-3))
            elif getattr(args, "reconstruct", 0):
                fields.update(reconstruct=args.reconstruct)  # refused by validate: it needs calibrate
        return cls(**fields).validate(epochs)
