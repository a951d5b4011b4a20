// EXPERIMENTAL (not yet shown correct on a GPU): CUDA backend of sparseyolo::cusparselt_compress and
// sparseyolo::cusparselt_linear (schemas: csrc/ops/cusparselt.cpp) through NVIDIA cuSPARSELt. The binding is
// compiled only when setup.py is run with SPARSEYOLO_EXPERIMENTAL_GPU=1 and finds the torch wheel's cuSPARSELt
// (it defines SPARSEYOLO_WITH_CUSPARSELT); otherwise the ops' CUDA kernels say how to get it. Y[P, out] = X[P, in] @ W^T is computed as D = A * B with
//   A = W            [out x in], structured (2:4 along in), row-major, ld = in;
//   B = X^T          [in x P], column-major, ld = in (X row-major as it is in memory);
//   C = D = Y^T      [out x P], column-major, ld = out (Y row-major, so an NHWC output needs no copy);
// fp32 accumulation, bias through CUSPARSELT_MATMUL_BIAS_POINTER (one value per row of D: per output channel).
// Shapes: out and in multiples of 16 (the structured operand), P any: the largest multiple of 8 rows goes in one
// matmul straight into the output, the remaining 1-7 rows through a zero-padded 8-row copy (the dense operands'
// dimensions are kept to multiples of 8, as PyTorch's cuSPARSELt tensor subclass does).
// One cuSPARSELt handle per device, kept for the process. A matmul plan depends on the problem (out, in, P,
// dtype), the bias pointer (part of the matmul descriptor) and the algorithm; plans are built on first use and
// cached, so a layer pays for its plan once per input shape, not on every call.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <string>

#ifdef SPARSEYOLO_WITH_CUSPARSELT
#include <cusparseLt.h>

#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#endif

namespace sparseyolo {
namespace ops {
namespace {

constexpr const char* kCompress = "sparseyolo::cusparselt_compress";
constexpr const char* kLinear = "sparseyolo::cusparselt_linear";

#ifdef SPARSEYOLO_WITH_CUSPARSELT

constexpr uint32_t kAlignment = 16;  // bytes, of every matrix pointer and leading dimension
constexpr size_t kMaxCachedPlans = 1024;

void check(cusparseStatus_t status, const char* op, const char* call, const std::string& problem) {
  TORCH_CHECK(status == CUSPARSE_STATUS_SUCCESS, op, ": cuSPARSELt's ", call, " failed with ",
              cusparseLtGetErrorName(status), " (", cusparseLtGetErrorString(status), ") for ", problem);
}

std::string describe(int64_t out, int64_t in, int64_t p, at::ScalarType dtype) {
  return "out_features " + std::to_string(out) + ", in_features " + std::to_string(in) +
         (p >= 0 ? ", " + std::to_string(p) + " rows of input" : std::string()) + ", " + c10::toString(dtype);
}

cudaDataType value_type(at::ScalarType t) { return t == at::kHalf ? CUDA_R_16F : CUDA_R_16BF; }

bool aligned(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % kAlignment == 0; }

// The handle of the current device, created at its first use and kept for the life of the process (destroying it
// at exit could run after the CUDA runtime has shut down).
const cusparseLtHandle_t* handle_for(c10::DeviceIndex device, const char* op) {
  static std::mutex mu;
  static std::map<c10::DeviceIndex, std::unique_ptr<cusparseLtHandle_t>> handles;
  const std::lock_guard<std::mutex> lock(mu);
  std::unique_ptr<cusparseLtHandle_t>& h = handles[device];
  if (!h) {
    auto fresh = std::make_unique<cusparseLtHandle_t>();
    check(cusparseLtInit(fresh.get()), op, "cusparseLtInit", "device " + std::to_string(device));
    h = std::move(fresh);
  }
  return h.get();
}

// The structured descriptor of a [out x in] row-major 2:4 weight, as compress and every plan describe it.
void init_weight_descriptor(const cusparseLtHandle_t* h, cusparseLtMatDescriptor_t* desc, int64_t out, int64_t in,
                            at::ScalarType dtype, const char* op) {
  check(cusparseLtStructuredDescriptorInit(h, desc, out, in, in, kAlignment, value_type(dtype), CUSPARSE_ORDER_ROW,
                                           CUSPARSELT_SPARSITY_50_PERCENT),
        op, "cusparseLtStructuredDescriptorInit", describe(out, in, -1, dtype));
}

// init_weight_descriptor's result, destroyed with the object.
struct WeightDescriptor {
  cusparseLtMatDescriptor_t desc;
  WeightDescriptor(const cusparseLtHandle_t* h, int64_t out, int64_t in, at::ScalarType dtype, const char* op) {
    init_weight_descriptor(h, &desc, out, in, dtype, op);
  }
  ~WeightDescriptor() { cusparseLtMatDescriptorDestroy(&desc); }
  WeightDescriptor(const WeightDescriptor&) = delete;
  WeightDescriptor& operator=(const WeightDescriptor&) = delete;
};

// Everything one matmul needs, built once. The plan refers to the descriptors, so they live in the same object,
// which is never moved (held by shared_ptr: a plan in use survives the cache being cleared).
struct Plan {
  cusparseLtMatDescriptor_t a, b, c;
  cusparseLtMatmulDescriptor_t matmul;
  cusparseLtMatmulAlgSelection_t alg;
  cusparseLtMatmulPlan_t plan;
  size_t workspace = 0, compressed_size = 0;
  int built = 0;  // how many of a, b, c, alg, plan exist (for the destructor)

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (built > 4) cusparseLtMatmulPlanDestroy(&plan);
    if (built > 3) cusparseLtMatmulAlgSelectionDestroy(&alg);
    if (built > 2) cusparseLtMatDescriptorDestroy(&c);
    if (built > 1) cusparseLtMatDescriptorDestroy(&b);
    if (built > 0) cusparseLtMatDescriptorDestroy(&a);
  }
};

using PlanKey = std::tuple<c10::DeviceIndex, int, int64_t, int64_t, int64_t, uintptr_t, int64_t>;

std::shared_ptr<Plan> build_plan(const cusparseLtHandle_t* h, int64_t out, int64_t in, int64_t p,
                                 at::ScalarType dtype, const void* bias, int64_t alg_id) {
  const std::string problem = describe(out, in, p, dtype);
  const cudaDataType type = value_type(dtype);
  auto plan = std::make_shared<Plan>();
  init_weight_descriptor(h, &plan->a, out, in, dtype, kLinear);
  plan->built = 1;
  check(cusparseLtDenseDescriptorInit(h, &plan->b, in, p, in, kAlignment, type, CUSPARSE_ORDER_COL), kLinear,
        "cusparseLtDenseDescriptorInit (input)", problem);
  plan->built = 2;
  check(cusparseLtDenseDescriptorInit(h, &plan->c, out, p, out, kAlignment, type, CUSPARSE_ORDER_COL), kLinear,
        "cusparseLtDenseDescriptorInit (output)", problem);
  plan->built = 3;
  check(cusparseLtMatmulDescriptorInit(h, &plan->matmul, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                       CUSPARSE_OPERATION_NON_TRANSPOSE, &plan->a, &plan->b, &plan->c, &plan->c,
                                       CUSPARSE_COMPUTE_32F),
        kLinear, "cusparseLtMatmulDescriptorInit", problem);
  if (bias != nullptr) {
    check(cusparseLtMatmulDescSetAttribute(h, &plan->matmul, CUSPARSELT_MATMUL_BIAS_POINTER, &bias, sizeof(bias)),
          kLinear, "cusparseLtMatmulDescSetAttribute (bias)", problem);
  }
  check(cusparseLtMatmulAlgSelectionInit(h, &plan->alg, &plan->matmul, CUSPARSELT_MATMUL_ALG_DEFAULT), kLinear,
        "cusparseLtMatmulAlgSelectionInit", problem);
  plan->built = 4;
  int max_id = 0;
  check(cusparseLtMatmulAlgGetAttribute(h, &plan->alg, CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID, &max_id, sizeof(max_id)),
        kLinear, "cusparseLtMatmulAlgGetAttribute (max id)", problem);
  TORCH_CHECK(alg_id >= 0 && alg_id <= max_id, kLinear, ": alg_id ", alg_id, " is out of range: cuSPARSELt has ",
              "algorithm configurations 0 to ", max_id, " for ", problem);
  const int id = static_cast<int>(alg_id);
  check(cusparseLtMatmulAlgSetAttribute(h, &plan->alg, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &id, sizeof(id)), kLinear,
        "cusparseLtMatmulAlgSetAttribute (alg_id)", problem);
  check(cusparseLtMatmulPlanInit(h, &plan->plan, &plan->matmul, &plan->alg), kLinear, "cusparseLtMatmulPlanInit",
        problem);
  plan->built = 5;
  check(cusparseLtMatmulGetWorkspace(h, &plan->plan, &plan->workspace), kLinear, "cusparseLtMatmulGetWorkspace",
        problem);
  size_t buffer = 0;
  check(cusparseLtSpMMACompressedSize2(h, &plan->a, &plan->compressed_size, &buffer), kLinear,
        "cusparseLtSpMMACompressedSize2", problem);  // as cusparselt_compress computes it
  return plan;
}

std::shared_ptr<Plan> cached_plan(const cusparseLtHandle_t* h, c10::DeviceIndex device, int64_t out, int64_t in,
                                  int64_t p, at::ScalarType dtype, const void* bias, int64_t alg_id) {
  static std::mutex mu;
  static std::map<PlanKey, std::shared_ptr<Plan>> plans;
  const PlanKey key{device, static_cast<int>(dtype), out, in, p, reinterpret_cast<uintptr_t>(bias), alg_id};
  {
    const std::lock_guard<std::mutex> lock(mu);
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
  }
  std::shared_ptr<Plan> plan = build_plan(h, out, in, p, dtype, bias, alg_id);  // outside the lock: it is slow
  const std::lock_guard<std::mutex> lock(mu);
  if (plans.size() >= kMaxCachedPlans) plans.clear();  // many input shapes: start over rather than grow
  return plans.emplace(key, std::move(plan)).first->second;
}

void check_half(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16, op, ": ", name,
              " must be float16 or bfloat16 (cuSPARSELt's 2:4 tensor-core types), got ", t.scalar_type());
}

at::Tensor cusparselt_compress_cuda(const at::Tensor& weight) {
  check_half(weight, kCompress, "weight");
  TORCH_CHECK(weight.dim() == 2, kCompress, ": weight must be [out_features, in_features], got shape ",
              weight.sizes());
  const int64_t out = weight.size(0), in = weight.size(1);
  TORCH_CHECK(out % 16 == 0 && in % 16 == 0 && out > 0 && in > 0, kCompress,
              ": cuSPARSELt needs out_features and in_features of a 2:4 weight to be positive multiples of 16, got [",
              out, ", ", in, "]");
  const c10::cuda::CUDAGuard guard(weight.device());
  at::Tensor w = weight.contiguous();
  if (!aligned(w)) w = w.clone();
  const cusparseLtHandle_t* h = handle_for(w.get_device(), kCompress);
  const WeightDescriptor desc(h, out, in, w.scalar_type(), kCompress);
  const std::string problem = describe(out, in, -1, w.scalar_type());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(w.get_device()).stream();

  // A weight that is not 2:4 would be compressed silently wrong: check it (once, at conversion).
  at::Tensor invalid = at::empty({1}, w.options().dtype(at::kInt));
  check(cusparseLtSpMMAPruneCheck2(h, &desc.desc, 1, CUSPARSE_OPERATION_NON_TRANSPOSE, w.const_data_ptr(),
                                   invalid.mutable_data_ptr<int>(), stream),
        kCompress, "cusparseLtSpMMAPruneCheck2", problem);
  TORCH_CHECK(invalid.item<int>() == 0, kCompress, ": the weight is not 2:4 sparse along in_features (every group of ",
              "4 consecutive inputs of an output needs at least 2 zeros); prune it with sparseyolo.prune first");

  size_t size = 0, buffer = 0;
  check(cusparseLtSpMMACompressedSize2(h, &desc.desc, &size, &buffer), kCompress, "cusparseLtSpMMACompressedSize2",
        problem);
  at::Tensor compressed = at::empty({static_cast<int64_t>(size)}, w.options().dtype(at::kByte));
  at::Tensor scratch = at::empty({static_cast<int64_t>(buffer > 0 ? buffer : 1)}, w.options().dtype(at::kByte));
  check(cusparseLtSpMMACompress2(h, &desc.desc, 1, CUSPARSE_OPERATION_NON_TRANSPOSE, w.const_data_ptr(),
                                 compressed.mutable_data_ptr(), scratch.mutable_data_ptr(), stream),
        kCompress, "cusparseLtSpMMACompress2", problem);
  return compressed;
}

at::Tensor cusparselt_linear_cuda(const at::Tensor& compressed, const at::Tensor& input, int64_t out_features,
                                  const c10::optional<at::Tensor>& bias, int64_t alg_id) {
  check_half(input, kLinear, "input");
  TORCH_CHECK(input.dim() == 2, kLinear, ": input must be [P, in_features], got shape ", input.sizes());
  TORCH_CHECK(compressed.is_cuda() && compressed.scalar_type() == at::kByte && compressed.dim() == 1, kLinear,
              ": compressed must be the uint8 CUDA tensor sparseyolo::cusparselt_compress returned");
  TORCH_CHECK(compressed.device() == input.device(), kLinear, ": compressed is on ", compressed.device(),
              ", input on ", input.device());
  const int64_t in = input.size(1), p = input.size(0), out = out_features;
  TORCH_CHECK(out % 16 == 0 && in % 16 == 0 && out > 0 && in > 0, kLinear,
              ": cuSPARSELt needs out_features and in_features to be positive multiples of 16, got ", out, " and ", in);
  at::Tensor b;
  if (bias.has_value()) {
    b = bias->contiguous();
    TORCH_CHECK(b.device() == input.device() && b.scalar_type() == input.scalar_type() && b.dim() == 1 &&
                    b.size(0) == out,
                kLinear, ": bias must be a [", out, "] ", input.scalar_type(), " tensor on ", input.device(),
                ", got ", b.sizes(), " ", b.scalar_type(), " on ", b.device());
    TORCH_CHECK(aligned(b), kLinear, ": bias must start 16-byte aligned (pass a tensor of its own, not a view)");
  }
  auto y = at::empty({p, out}, input.options());
  if (p == 0) return y;
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor x = input.contiguous();
  if (!aligned(x)) x = x.clone();
  TORCH_CHECK(aligned(compressed), kLinear, ": compressed must start 16-byte aligned (pass it as returned)");
  const c10::DeviceIndex device = x.get_device();
  const cusparseLtHandle_t* h = handle_for(device, kLinear);
  const void* bias_ptr = b.defined() ? b.const_data_ptr() : nullptr;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  // D[:, :rows] = W * X[:rows]^T + bias, written to y_rows (rows a multiple of 8).
  auto run = [&](const at::Tensor& x_rows, const at::Tensor& y_rows) {
    const int64_t rows = x_rows.size(0);
    const std::shared_ptr<Plan> plan = cached_plan(h, device, out, in, rows, x.scalar_type(), bias_ptr, alg_id);
    TORCH_CHECK(compressed.numel() == static_cast<int64_t>(plan->compressed_size), kLinear, ": compressed has ",
                compressed.numel(), " bytes, but a [", out, ", ", in, "] weight compresses to ",
                plan->compressed_size, ": was it compressed from a weight of that shape and dtype?");
    at::Tensor workspace = at::empty({static_cast<int64_t>(plan->workspace > 0 ? plan->workspace : 1)},
                                     x.options().dtype(at::kByte));
    const float alpha = 1.f, beta = 0.f;
    check(cusparseLtMatmul(h, &plan->plan, &alpha, compressed.const_data_ptr(), x_rows.const_data_ptr(), &beta,
                           y_rows.const_data_ptr(), y_rows.mutable_data_ptr(), workspace.mutable_data_ptr(), &stream,
                           1),
          kLinear, "cusparseLtMatmul", describe(out, in, rows, x.scalar_type()));
  };
  const int64_t main_rows = p / 8 * 8, tail = p - main_rows;
  if (main_rows > 0) run(x.narrow(0, 0, main_rows), y.narrow(0, 0, main_rows));  // row offsets stay 16-byte aligned
  if (tail > 0) {
    at::Tensor x_pad = at::zeros({8, in}, x.options());
    x_pad.narrow(0, 0, tail).copy_(x.narrow(0, main_rows, tail));
    at::Tensor y_pad = at::empty({8, out}, x.options());
    run(x_pad, y_pad);
    y.narrow(0, main_rows, tail).copy_(y_pad.narrow(0, 0, tail));
  }
  return y;
}

#else  // built without cuSPARSELt

[[noreturn]] void not_built(const char* op) {
  TORCH_CHECK(false, op, ": sparseyolo was built without cuSPARSELt (it is experimental: built with ",
              "SPARSEYOLO_EXPERIMENTAL_GPU=1 when the torch wheel ships nvidia/cusparselt headers and library); the ",
              "\"cuda_cusparselt\" backend is unavailable");
}
at::Tensor cusparselt_compress_cuda(const at::Tensor&) { not_built(kCompress); }
at::Tensor cusparselt_linear_cuda(const at::Tensor&, const at::Tensor&, int64_t, const c10::optional<at::Tensor>&,
                                  int64_t) {
  not_built(kLinear);
}

#endif  // SPARSEYOLO_WITH_CUSPARSELT

}  // namespace
}  // namespace ops
}  // namespace sparseyolo

TORCH_LIBRARY_IMPL(sparseyolo, CUDA, m) {
  m.impl("cusparselt_compress", TORCH_FN(sparseyolo::ops::cusparselt_compress_cuda));
  m.impl("cusparselt_linear", TORCH_FN(sparseyolo::ops::cusparselt_linear_cuda));
}
