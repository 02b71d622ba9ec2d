"""Deployment helpers: ONNX export (fp32 or fp16) checked against onnxruntime, and ``torch.export``.

GCT needs nothing special: under ``torch.export``, the ONNX exporters and TorchScript tracing,
:func:`gctnet.functional.gct` switches by itself to a formulation in plain traceable ops (same numbers
as the eager path), and the GCT-gated convs of :mod:`gctnet.surgery` to the plain ``conv(gct(x))``.
In that formulation the per-(sample, channel) statistics of a float16 input are computed in float32
(the input is cast inside the reduction and the gate cast back before the multiply), so an fp16 ONNX
graph stays finite where the paper's formula overflows (sum of squares > 65504, e.g. RMS 10 at 56x56).

>>> from gctnet.export import export_onnx, verify_onnx
>>> path = export_onnx(model, torch.randn(1, 3, 224, 224), "model.onnx")        # doctest: +SKIP
>>> verify_onnx(path, model, torch.randn(4, 3, 224, 224))                         # doctest: +SKIP

See ``docs/interop.md`` for the list of supported and unsupported paths.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .errors import ExportMismatchError
from .fileio import atomic_write_path

__all__ = ["export_onnx", "run_onnx", "verify_onnx", "export_program", "ExportMismatchError", "EXPORTERS"]

EXPORTERS = ("auto", "dynamo", "torchscript")
Example = Union[Tensor, Tuple[Tensor, ...]]
PathLike = Union[str, "os.PathLike[str]"]


def _as_tuple(example: Example) -> Tuple[Tensor, ...]:
    if isinstance(example, Tensor):
        return (example,)
    if isinstance(example, (tuple, list)) and example and all(isinstance(t, Tensor) for t in example):
        return tuple(example)
    raise TypeError(f"example must be a tensor or a non-empty tuple of tensors, got {type(example).__name__}")


def _cast(example: Tuple[Tensor, ...], dtype: Optional[torch.dtype]) -> Tuple[Tensor, ...]:
    if dtype is None:
        return example
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in example)


def _batch2(example: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    """A batch-1 example is specialised to 1 by the exporters: trace with batch 2 instead."""
    return tuple(t.expand(2, *t.shape[1:]).contiguous() if t.dim() and t.shape[0] == 1 else t for t in example)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _prepare(model: nn.Module, example: Example, half: bool) -> Tuple[nn.Module, Tuple[Tensor, ...]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    inputs = _as_tuple(example)
    if half:
        # never modify the caller's model
        model = copy.deepcopy(model).half()
        inputs = _cast(inputs, torch.float16)
    return model, inputs


def export_program(model: nn.Module, example: Example, *, dynamic_batch: bool = True,
                   strict: bool = False) -> "torch.export.ExportedProgram":
    """``torch.export.export`` of ``model`` in eval mode, with a dynamic batch dimension by default.

    The model's train/eval mode is restored afterwards.  ``ep.module()(x)`` runs the program.
    """
    model, inputs = _prepare(model, example, half=False)
    dynamic_shapes = None
    if dynamic_batch:
        inputs = _batch2(inputs)
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in inputs)
    with _eval_mode(model):
        return torch.export.export(model, inputs, dynamic_shapes=dynamic_shapes, strict=strict)


def _export_dynamo(model: nn.Module, inputs: Tuple[Tensor, ...], path: str, names: List[str],
                   dynamic_batch: bool, opset: Optional[int]) -> None:
    kwargs: dict = {"dynamo": True, "input_names": names, "output_names": ["output"], "verbose": False}
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        kwargs["dynamic_shapes"] = tuple({0: batch} for _ in inputs)
    if opset is not None:
        kwargs["opset_version"] = opset
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # it prints progress lines
        program = torch.onnx.export(model, inputs, **kwargs)
    program.save(path)


def _export_torchscript(model: nn.Module, inputs: Tuple[Tensor, ...], path: str, names: List[str],
                        dynamic_batch: bool, opset: Optional[int]) -> None:
    kwargs: dict = {"dynamo": False, "input_names": names, "output_names": ["output"]}
    if dynamic_batch:
        kwargs["dynamic_axes"] = {**{n: {0: "batch"} for n in names}, "output": {0: "batch"}}
    if opset is not None:
        kwargs["opset_version"] = opset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, torch.jit.TracerWarning))
        torch.onnx.export(model, inputs, path, **kwargs)


def export_onnx(
    model: nn.Module,
    example: Example,
    path: PathLike,
    *,
    half: bool = False,
    dynamic_batch: bool = True,
    opset: Optional[int] = None,
    exporter: str = "auto",
) -> Path:
    """Export ``model`` (in eval mode) to an ONNX file and return its path.

    Args:
        model: any module; its mode is restored afterwards and, with ``half``, it is not modified (a
            float16 copy is exported).
        example: an input tensor (or tuple of tensors) of the right shape; values do not matter.
        path: output ``.onnx`` file.
        half: export a float16 graph (inputs and outputs float16; GCT statistics in float32 inside).
        dynamic_batch: the first dimension of every input (and of the output) is symbolic ``batch``.
        opset: ONNX opset (exporter default when None).
        exporter: ``"dynamo"`` (``torch.onnx.export(dynamo=True)``, the default of torch >= 2.9, needs
            ``onnxscript``), ``"torchscript"`` (the legacy tracer, ``dynamo=False``) or ``"auto"``:
            dynamo, falling back to torchscript with a warning if it fails.

    Input names are ``input`` (``input0``, ``input1``, ... for several inputs); the output is ``output``.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    model, inputs = _prepare(model, example, half)
    if dynamic_batch:
        inputs = _batch2(inputs)
    names = ["input"] if len(inputs) == 1 else [f"input{i}" for i in range(len(inputs))]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _eval_mode(model):
        if exporter in ("auto", "dynamo"):
            try:
                atomic_write_path(out, lambda tmp: _export_dynamo(model, inputs, os.fspath(tmp), names, dynamic_batch, opset))
                return out
            except Exception as exc:  # noqa: BLE001 - reported, then the legacy exporter is tried
                if exporter == "dynamo":
                    raise
                warnings.warn(f"dynamo ONNX export failed ({type(exc).__name__}: {str(exc)[:300]}); "
                              "falling back to the TorchScript exporter (dynamo=False)", RuntimeWarning)
        atomic_write_path(out, lambda tmp: _export_torchscript(model, inputs, os.fspath(tmp), names, dynamic_batch, opset))
    return out


def run_onnx(path: PathLike, *inputs: Tensor, providers: Optional[Sequence[str]] = None) -> List[Any]:
    """Run an ONNX file with onnxruntime (CPU by default) on torch tensors; returns numpy arrays."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - onnx extra not installed
        raise ImportError("running ONNX files needs onnxruntime: pip install 'gctnet[onnx]'") from exc
    session = ort.InferenceSession(os.fspath(path), providers=list(providers or ["CPUExecutionProvider"]))
    feeds = {arg.name: t.detach().cpu().numpy() for arg, t in zip(session.get_inputs(), inputs)}
    if len(feeds) != len(session.get_inputs()):
        raise ValueError(f"{path}: the graph takes {len(session.get_inputs())} inputs, got {len(inputs)}")
    return session.run(None, feeds)


def verify_onnx(path: PathLike, model: nn.Module, example: Example, *, atol: float = 1e-4,
                rtol: float = 1e-4, half: bool = False) -> float:
    """Compare onnxruntime's output with PyTorch's (eval mode, float32 reference); return the largest
    absolute difference, raise :class:`ExportMismatchError` beyond ``atol + rtol * |reference|``.

    With ``half`` the ONNX graph gets float16 inputs and its output is compared with the float32
    PyTorch model (choose tolerances accordingly).
    """
    inputs = _as_tuple(example)
    with _eval_mode(model), torch.no_grad():
        reference = model(*inputs)
    if not isinstance(reference, Tensor):
        raise TypeError("verify_onnx compares a single output tensor; got " + type(reference).__name__)
    feed = _cast(inputs, torch.float16) if half else inputs
    got = torch.from_numpy(run_onnx(path, *feed)[0]).float()
    ref = reference.float()
    if got.shape != ref.shape:
        raise ExportMismatchError(f"ONNX output shape {tuple(got.shape)} != PyTorch {tuple(ref.shape)}")
    if not torch.isfinite(got).all():
        raise ExportMismatchError("the ONNX output has non-finite values")
    diff = (got - ref).abs()
    bad = diff > atol + rtol * ref.abs()
    if bad.any():
        raise ExportMismatchError(
            f"ONNX output differs from PyTorch: max abs diff {diff.max().item():.3g} "
            f"(atol={atol}, rtol={rtol}; {int(bad.sum())} of {bad.numel()} values out of tolerance)"
        )
    return float(diff.max())
