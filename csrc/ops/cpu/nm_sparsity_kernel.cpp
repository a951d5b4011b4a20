// CPU backend of the N:M sparsity ops (nm_mask, nm_compress, nm_decompress, apply_masks_): groups split
// over at::parallel_for threads; the per-group rules are the torch-free ones of kernels/nm_sparsity.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <vector>

#include "../../kernels/nm_sparsity.h"
#include "../nm_sparsity.h"

namespace sparseyolo {
namespace ops {
namespace {

// ~m^2 comparisons per group: a few thousand groups per thread task.
constexpr int64_t kGroupGrain = 2048;

template <typename scalar_t>
using mag_of = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

at::Tensor nm_mask_cpu(const at::Tensor& weight, int64_t n, int64_t m) {
  check_nm_mask_inputs(weight, n, m);
  const auto w = weight.contiguous();
  auto mask = at::empty(w.sizes(), w.options().dtype(at::kBool));
  if (w.numel() == 0) return mask;
  const int64_t rows = w.size(0), groups = w.size(1) / m, inner = w.numel() / (w.size(0) * w.size(1));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "nm_mask_cpu", [&] {
    using mag_t = mag_of<scalar_t>;
    const scalar_t* pw = w.const_data_ptr<scalar_t>();
    bool* pm = mask.mutable_data_ptr<bool>();
    at::parallel_for(0, rows * groups * inner, kGroupGrain, [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; ++q) {
        const int64_t s = q % inner, g = (q / inner) % groups, r = q / (inner * groups);
        const int64_t base = (r * groups * m + g * m) * inner + s;
        kernels::nm_mask_group<mag_t>(pw + base, inner, static_cast<int>(n), static_cast<int>(m), pm + base,
                                      [](scalar_t v) { return static_cast<mag_t>(v); });
      }
    });
  });
  return mask;
}

std::tuple<at::Tensor, at::Tensor> nm_compress_cpu(const at::Tensor& weight, int64_t n, int64_t m,
                                                   const c10::optional<at::Tensor>& mask) {
  check_nm_compress_inputs(weight, n, m, mask);
  const auto w = weight.contiguous();
  std::vector<int64_t> shape(w.sizes().begin(), w.sizes().end());
  shape.back() = shape.back() / m * n;
  auto values = at::empty(shape, w.options());
  auto indices = at::empty(shape, w.options().dtype(at::kByte));
  const int64_t total_groups = w.numel() / m;
  if (total_groups == 0) return {values, indices};
  at::Tensor prio;
  if (mask.has_value()) prio = mask->contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "nm_compress_cpu", [&] {
    using mag_t = mag_of<scalar_t>;
    const scalar_t* pw = w.const_data_ptr<scalar_t>();
    const bool* pp = prio.defined() ? prio.const_data_ptr<bool>() : nullptr;
    scalar_t* pv = values.mutable_data_ptr<scalar_t>();
    uint8_t* pi = indices.mutable_data_ptr<uint8_t>();
    at::parallel_for(0, total_groups, kGroupGrain, [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; ++q) {
        kernels::nm_compress_group<mag_t>(pw + q * m, pp != nullptr ? pp + q * m : nullptr, static_cast<int>(n),
                                          static_cast<int>(m), pv + q * n, pi + q * n,
                                          [](scalar_t v) { return static_cast<mag_t>(v); });
      }
    });
  });
  return {values, indices};
}

template <typename U>
void decompress_groups(const at::Tensor& values, const at::Tensor& indices, int64_t n, int64_t m, at::Tensor& out) {
  const U* pv = static_cast<const U*>(values.const_data_ptr());
  const uint8_t* pi = indices.const_data_ptr<uint8_t>();
  U* po = static_cast<U*>(out.mutable_data_ptr());
  at::parallel_for(0, values.numel() / n, kGroupGrain, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      kernels::nm_decompress_group<U>(pv + q * n, pi + q * n, static_cast<int>(n), static_cast<int>(m), po + q * m);
    }
  });
}

at::Tensor nm_decompress_cpu(const at::Tensor& values, const at::Tensor& indices, int64_t n, int64_t m) {
  check_nm_decompress_inputs(values, indices, n, m);
  const auto v = values.contiguous();
  const auto idx = indices.contiguous();
  std::vector<int64_t> shape(v.sizes().begin(), v.sizes().end());
  shape.back() = shape.back() / n * m;
  auto out = at::empty(shape, v.options());
  if (v.numel() == 0) return out;
  switch (v.element_size()) {
    case 1: decompress_groups<uint8_t>(v, idx, n, m, out); break;
    case 2: decompress_groups<uint16_t>(v, idx, n, m, out); break;
    case 4: decompress_groups<uint32_t>(v, idx, n, m, out); break;
    case 8: decompress_groups<uint64_t>(v, idx, n, m, out); break;
  }
  return out;
}

template <typename U>
void zero_unmasked_tensor(at::Tensor& t, const at::Tensor& mask) {
  U* p = static_cast<U*>(t.mutable_data_ptr());
  const bool* pm = mask.const_data_ptr<bool>();
  at::parallel_for(0, t.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) kernels::zero_unmasked<U>(p, pm, i);
  });
}

void apply_masks_cpu(at::TensorList tensors, at::TensorList masks) {
  check_apply_masks_inputs(tensors, masks);
  for (size_t i = 0; i < tensors.size(); ++i) {
    at::Tensor t = tensors[i];
    if (t.numel() == 0) continue;
    const auto mk = masks[i].contiguous();
    // A non-contiguous tensor (e.g. a channels_last weight) is masked through a contiguous copy.
    at::Tensor work = t.is_contiguous() ? t : t.contiguous();
    switch (work.element_size()) {
      case 1: zero_unmasked_tensor<uint8_t>(work, mk); break;
      case 2: zero_unmasked_tensor<uint16_t>(work, mk); break;
      case 4: zero_unmasked_tensor<uint32_t>(work, mk); break;
      case 8: zero_unmasked_tensor<uint64_t>(work, mk); break;
    }
    if (!work.is_same(t)) t.copy_(work);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseyolo, CPU, m) {
  m.impl("nm_mask", TORCH_FN(nm_mask_cpu));
  m.impl("nm_compress", TORCH_FN(nm_compress_cpu));
  m.impl("nm_decompress", TORCH_FN(nm_decompress_cpu));
  m.impl("apply_masks_", TORCH_FN(apply_masks_cpu));
}

}  // namespace ops
}  // namespace sparseyolo
