"""PyTorch 2 export (PT2E) quantization and litert-torch conversion to TFLite, with no TensorFlow.

The quantizer is litert-torch's with the annotations this project needs on top (fixed pixel grids, pass-through
ops sharing their input's grid, optional float global pool / linear layer, one grid for the detector's head
concatenations). Calibration batches go through in a fixed order with deterministic observers.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tddfa_edge.contracts.errors import ExportError

# PT2E's module-type filter compares the exported module stack, which holds type names as strings.
LINEAR_MODULE = "torch.nn.modules.linear.Linear"


# Observer scale floor for weights. PT2E's default 2**-12 flattens per-channel scales of small BN-folded
# MobileNet channels (their max |w| < 0.03) to a coarse grid.
WEIGHT_SCALE_FLOOR = 2.0**-30


def litert():
    try:
        import litert_torch
    except ImportError as exc:
        raise ExportError(f"TFLite export needs litert-torch ({exc.name} missing): pip install 'tddfa-edge[export]'") from None
    return litert_torch


def _activation_spec(observer: str = "histogram"):
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    # histogram: range that minimizes the L2 quantization error (measured best on the hold-out split).
    ctr = {"histogram": HistogramObserver, "minmax": MinMaxObserver}[observer]
    return QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine,
                            observer_or_fake_quant_ctr=ctr.with_args(eps=2**-12))


def _margin_spec(margin: float):
    """Per-tensor int8 activations calibrated to ``margin`` times their observed min/max (``_MarginMinMaxObserver``)."""
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    return QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine,
                            observer_or_fake_quant_ctr=_margin_observer().with_args(eps=2**-12, margin=float(margin)))


_MARGIN_OBSERVER = None


def _margin_observer():
    """MinMaxObserver whose quantization range is the observed one times ``margin`` (defined lazily: torchao import)."""
    global _MARGIN_OBSERVER
    if _MARGIN_OBSERVER is None:
        from torchao.quantization.pt2e.observer import MinMaxObserver

        class _MarginMinMaxObserver(MinMaxObserver):
            def __init__(self, margin: float = 1.0, **kwargs):
                super().__init__(**kwargs)
                self.margin = margin

            def calculate_qparams(self):
                return self._calculate_qparams(self.min_val * self.margin, self.max_val * self.margin)

        _MARGIN_OBSERVER = _MarginMinMaxObserver
    return _MARGIN_OBSERVER


def fixed_spec(scale: float, zero_point: int = 0):
    from torchao.quantization.pt2e.quantizer import FixedQParamsQuantizationSpec

    return FixedQParamsQuantizationSpec(dtype=torch.int8, scale=float(scale), zero_point=int(zero_point), quant_min=-128,
                                        quant_max=127, qscheme=torch.per_tensor_affine)


def _quant_config(observer: str = "histogram"):
    from litert_torch.quantize.pt2e_quantizer_utils import QuantizationConfig
    from torchao.quantization.pt2e.observer import PerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    weight = QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric, ch_axis=0,
                              observer_or_fake_quant_ctr=PerChannelMinMaxObserver.with_args(eps=WEIGHT_SCALE_FLOOR))
    act = _activation_spec(observer)
    # Softmax / sigmoid outputs: TFLite's fixed int8 grid.
    fixed = fixed_spec(1.0 / 256.0, -128)
    return QuantizationConfig(act, act, weight, None, fixed, False, False)


_POOL_TARGETS = ("aten.mean.dim", "aten.adaptive_avg_pool2d.default")


_PASSTHROUGH = ("aten.pad.default", "aten.constant_pad_nd.default", "aten.max_pool2d.default", "aten.permute.default")


def _is_call(node, names) -> bool:
    return node.op == "call_function" and any(str(node.target).endswith(n) or str(node.target) == n for n in names)


def make_quantizer(input_scale: float, input_zero_point: int = 0, global_pool: str = "shared", output_scale: float | None = None,
                    float_linear: bool = False, observer: str = "histogram", head_cat_minmax: bool = False,
                    float_modules: tuple[str, ...] = (), margin_modules: tuple[str, ...] = (), range_margin: float = 1.0):
    """A litert-torch PT2E quantizer with the few annotations this project needs on top of its defaults.

    input_scale/zero_point: the int8 input grid (fixed, so the input tensor is exactly ``pixel - 128``).
    global_pool: "shared" (PT2E default: output on the input's grid), "own" (requantized to its own,
    finer grid) or "float" (dequantize before the global average, the FC then runs in float).
    output_scale: fixed grid of the final linear layer's output (the equalized regressor output).
    head_cat_minmax: concatenations of the top module (the detector's head outputs) get one grid covering all
    inputs' full range (left alone, the converter puts them on the last input's grid and clips the others).
    float_modules: submodules (by name) left in float (their inputs dequantized), e.g. YuNet's prediction heads.
    margin_modules / range_margin: outputs of ops inside these submodules (path prefixes), and the head concatenations,
    get an int8 grid over ``range_margin`` times their calibrated min/max (real photos exceed the calibration mosaics).
    Always: zero pads, max pools and layout permutes keep their input's grid (no requantization, no transposes).
    """
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec
    from torchao.quantization.pt2e.quantizer.quantizer import QuantizationAnnotation

    input_spec = fixed_spec(input_scale, input_zero_point)

    def in_modules(node, modules) -> bool:
        paths = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
        return any(p == m or p.startswith(m + ".") for p in paths for m in modules)

    class PixelQuantizer(PT2EQuantizer):
        def __init__(self) -> None:
            super().__init__()
            self._float_nodes: set = set()

        def _annotate_all_static_patterns(self, model, quantization_config, filter_fn=None):
            # litert-torch's module-name filter does not parse this torch's module-stack keys, so float submodules are
            # excluded here: their nodes, and every node fed only by float nodes (their layout ops, concats, softmax).
            def keep(node) -> bool:
                return node not in self._float_nodes and (filter_fn is None or filter_fn(node))

            return super()._annotate_all_static_patterns(model, quantization_config, keep)

        def annotate(self, model):
            floating: set = set()
            if float_modules:
                for node in model.graph.nodes:
                    sources = [a for a in node.all_input_nodes if a.op == "call_function"]
                    if node.op == "call_function" and (in_modules(node, float_modules) or (sources and all(a in floating for a in sources))):
                        floating.add(node)
            self._float_nodes = floating
            model = super().annotate(model)
            for node in floating:  # litert-torch's annotation propagation reaches layout ops behind quantized ones
                node.meta.pop("quantization_annotation", None)
            graph = model.graph
            for node in graph.nodes:
                ann = node.meta.get("quantization_annotation")
                if ann is None:
                    continue
                for src in list(ann.input_qspec_map):
                    # The permute of the NHWC input placeholder feeds the first convolution.
                    if _is_call(src, ("aten.permute.default",)) and src.args[0].op == "placeholder":
                        ann.input_qspec_map[src] = input_spec
                if output_scale is not None and _is_call(node, ("aten.linear.default",)):
                    ann.output_qspec = fixed_spec(output_scale)
            for node in graph.nodes:  # topological order: each pass-through op sees its input annotated
                if _is_call(node, _PASSTHROUGH) and "quantization_annotation" not in node.meta and node not in floating:
                    src = node.args[0]
                    src_ann = src.meta.get("quantization_annotation")
                    if src_ann is not None and src_ann.output_qspec is not None:
                        node.meta["quantization_annotation"] = QuantizationAnnotation(
                            input_qspec_map={src: SharedQuantizationSpec(src)}, output_qspec=SharedQuantizationSpec(src), _annotated=True)
            if global_pool == "own":
                for node in graph.nodes:
                    if _is_call(node, _POOL_TARGETS):
                        node.meta["quantization_annotation"].output_qspec = _activation_spec(observer)
            if global_pool == "float":
                removed: set = set()
                for node in graph.nodes:
                    ann = node.meta.get("quantization_annotation")
                    if ann is not None and (_is_call(node, _POOL_TARGETS) or _shares_with(ann, removed)):
                        node.meta.pop("quantization_annotation", None)
                        removed.add(node)
            if margin_modules and range_margin != 1.0:
                from torchao.quantization.pt2e.quantizer import QuantizationSpec

                # One spec object: a producer's output and its consumers' input edges that carry it form one group
                # (one observer, no requantization between them).
                wide = _margin_spec(range_margin)
                for node in graph.nodes:
                    ann = node.meta.get("quantization_annotation")
                    paths = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
                    if (ann is not None and isinstance(ann.output_qspec, QuantizationSpec)
                            and any(p.startswith(m) for p in paths for m in margin_modules)):
                        ann.output_qspec = wide
                for node in graph.nodes:
                    ann = node.meta.get("quantization_annotation")
                    if ann is None:
                        continue
                    for src in list(ann.input_qspec_map):
                        src_ann = src.meta.get("quantization_annotation")
                        if src_ann is not None and src_ann.output_qspec is wide and isinstance(ann.input_qspec_map[src], QuantizationSpec):
                            ann.input_qspec_map[src] = wide
            if head_cat_minmax:
                for node in graph.nodes:
                    paths = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
                    if _is_call(node, ("aten.cat.default",)) and max(map(len, paths), default=0) == 0:
                        inputs = node.args[0]
                        shared = SharedQuantizationSpec((inputs[0], node))
                        first = _margin_spec(range_margin) if margin_modules and range_margin != 1.0 else _activation_spec("minmax")
                        qmap = {inp: (first if i == 0 else shared) for i, inp in enumerate(inputs)}
                        node.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=qmap, output_qspec=shared, _annotated=True)
            return model

    quantizer = PixelQuantizer().set_global(_quant_config(observer))
    if float_linear:
        quantizer.set_module_type(LINEAR_MODULE, None)
    return quantizer


def _shares_with(ann, nodes: set) -> bool:
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    for spec in list(ann.input_qspec_map.values()) + [ann.output_qspec]:
        if isinstance(spec, SharedQuantizationSpec):
            ref = spec.edge_or_node
            if ref in nodes or (isinstance(ref, tuple) and ref[0] in nodes):
                return True
    return False


def pt2e_tflite(module: nn.Module, input_shape: tuple[int, ...], calibration: list[np.ndarray], quantizer) -> bytes:
    """Quantize ``module`` with PT2E (calibrated on ``calibration`` batches, in order) and convert to TFLite.

    litert-torch converts only static shapes here, so the batch-1 graph that is converted takes its observer
    state from an identical graph calibrated on whole batches (much faster than one crop at a time).
    """
    litert_torch = litert()
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.observer import get_observer_state_dict, load_observer_state_dict
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    module = module.eval()
    example = (torch.zeros(input_shape),)
    with torch.no_grad():
        final = prepare_pt2e(torch.export.export(module, example).module(), quantizer)
        size = len(calibration[0])
        if any(len(batch) != size for batch in calibration):
            raise ExportError("calibration batches must all have the same size")
        calibrated = final
        if size != input_shape[0]:
            calibrated = prepare_pt2e(torch.export.export(module, (torch.zeros((size, *input_shape[1:])),)).module(), quantizer)
        for batch in calibration:
            calibrated(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        if calibrated is not final:
            load_observer_state_dict(final, get_observer_state_dict(calibrated))
        final = convert_pt2e(final, fold_quantize=False)
    final.training = False  # exported graphs keep the flag although they were traced in eval mode
    edge = litert_torch.convert(final, example, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    return bytes(edge.model_content())


def float_tflite(module: nn.Module, example: torch.Tensor) -> bytes:
    litert_torch = litert()
    with torch.no_grad():
        edge = litert_torch.convert(module.eval(), (example,))
    return bytes(edge.model_content())


def fp16_weights(model: bytes) -> bytes:
    """fp32 model -> the same graph with fp16 weights (DEQUANTIZE fp16 -> fp32 in front of each op)."""
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    q = quantizer.Quantizer(bytearray(model))
    q.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                             algorithm_key=AlgorithmName.FLOAT_CASTING)
    return bytes(q.quantize(enable_progress_report=False).quantized_model)
