// Host-side entry points of the torch-free CUDA NMS kernels (implemented in nms.cu).
//
// Both ops take a caller-allocated device workspace (size from the *_workspace_bytes functions), enqueue
// everything on `stream` and never synchronise: outputs stay on the device. They return the first
// launch error (cudaSuccess when fine).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "../dtype.h"
#include "../nms_rules.h"

namespace sparseyolo {
namespace kernels {

struct YoloNmsCudaArgs {
  const void* pred = nullptr;  // [batch, N, 5 + nc], contiguous, dtype
  DType dtype = DType::kFloat32;
  int64_t batch = 0;
  YoloNmsParams params;        // class_allowed is ignored: pass `classes` below
  const int64_t* classes = nullptr;  // device [num_classes_filter] class indices, or nullptr for all
  int64_t num_classes_filter = 0;
  int64_t out_width = 0;       // W of dets
  void* dets = nullptr;        // [batch, W, 6], dtype, zero-filled by the caller
  int64_t* counts = nullptr;   // [batch]
};

// Candidates buffered per image: min(max_nms, N * labels per anchor).
int64_t yolo_nms_cuda_capacity(const YoloNmsParams& params);
size_t yolo_nms_cuda_workspace_bytes(int64_t batch, const YoloNmsParams& params);
cudaError_t yolo_nms_cuda(const YoloNmsCudaArgs& args, void* workspace, size_t workspace_bytes, cudaStream_t stream);

// torchvision-style nms of n boxes [n, 4] (xyxy) with scores [n]: writes the kept indices by decreasing
// score to keep[0 .. *num_kept) (both device memory; the caller reads num_kept to size the result).
size_t nms_cuda_workspace_bytes(int64_t n);
cudaError_t nms_cuda(const void* boxes, const void* scores, int64_t n, DType dtype, float iou_cutoff, int64_t* keep,
                     int64_t* num_kept, void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace kernels
}  // namespace sparseyolo
