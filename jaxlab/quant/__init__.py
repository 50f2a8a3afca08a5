"""Low-bit weights: packed quantized tensors, RTN/binarization, model quantization by path
rules, and bipolar-INT bit-plane matmul."""

from jaxlab.quant.bipolar import (
  PreparedBipolarWeight,
  bipolar_dense,
  bipolar_matmul,
  prepare_params,
  quantize_activations,
)
from jaxlab.quant.calibration import LayerStats, collect_block_inputs, collect_layer_stats
from jaxlab.quant.gptq import gptq, gptq_params, hessian
from jaxlab.quant.model import (
  KernelView,
  apply_quantized,
  as_matrix,
  kernel_paths,
  quantize_params,
  quantized_matmuls,
)
from jaxlab.quant.packing import pack, pack_bits, unpack, unpack_bits
from jaxlab.quant.ptq161 import SaliencyMaskedTensor, ptq161_params, restorative_lora
from jaxlab.quant.reconstruction import block_loss, reconstruct
from jaxlab.quant.tensor import (
  QuantizedTensor,
  binarize,
  bits_per_weight,
  dequantize,
  is_quantized,
  quantize,
  quantize_to_grid,
  storage_report,
)

__all__ = [
  'KernelView',
  'PreparedBipolarWeight',
  'QuantizedTensor',
  'apply_quantized',
  'as_matrix',
  'bipolar_dense',
  'bipolar_matmul',
  'binarize',
  'bits_per_weight',
  'dequantize',
  'is_quantized',
  'kernel_paths',
  'pack',
  'pack_bits',
  'prepare_params',
  'quantize',
  'quantize_activations',
  'quantize_params',
  'quantized_matmuls',
  'quantize_to_grid',
  'storage_report',
  'unpack',
  'unpack_bits',
  # post-training quantization (GPTQ, PTQ1.61)
  'LayerStats',
  'SaliencyMaskedTensor',
  'block_loss',
  'collect_block_inputs',
  'collect_layer_stats',
  'gptq',
  'gptq_params',
  'hessian',
  'ptq161_params',
  'reconstruct',
  'restorative_lora',
]
