#!/usr/bin/env bash
# The GPU check of sparseyolo, in one command, on a machine with an NVIDIA GPU (written for the H200 device
# machine: python3 3.12 with torch 2.11+cu130, 16 cores, no network), in about 8 minutes at most:
#
#   bash benchmarks/device_check.sh            # from the repository root; results under $OUT (default ./device_out)
#
# Stages (each one's failure is recorded and the next still runs; every stage has a time limit and the whole
# run a deadline of DEADLINE_S seconds, default 470):
#   1. probes  the one-instruction mma.sp and wgmma.sp layout probes (CMake; each prints which fragment/metadata/
#              descriptor layouts give the right product); the wgmma one names the kernel's -D flags for a layout
#              that works, and the rest is built with them if they are not the defaults (SPARSEYOLO_NVCC_FLAGS)
#   2. build   FORCE_CUDA=1 MAX_JOBS=16 python3 setup.py build_ext --inplace (the machine's own python3/torch);
#              ctest: the torch-free kernels' CUDA tests
#   3. pytest  every CUDA-marked test (-m "cuda and not wgmma"): NMS, box_iou, N:M masks/compress, the 2:4
#              sparse conv, ...; then, in their own process, the wgmma-marked ones (sm_90a kernel not yet run on
#              a GPU: a fault there poisons the process's CUDA context)
#   4. bench   benchmarks/bench_sparse_conv_cuda.py (batch 32, fp16): dense vs the four mma.sp kernels + end to
#              end; then the wgmma kernels in their own process; then cuSPARSELt (sparseyolo's binding, plans
#              cached) on the 1x1 layers + yolov5x end to end, in its own process; Nsight Compute counters of
#              cuDNN and every 2:4 kernel on two layers (benchmarks/experimental/profile_sparse_conv_ncu.py); benchmarks/
#              bench_nms.py --device cuda; benchmarks/experimental/probe_cusparselt.py (which of PyTorch's cuSPARSELt calls run)
# SKIP_STAGES="ctest_cuda bench_nms" skips stages by name (a rerun after a fix).
# Files under $OUT (the device tool returns at most 8): log.txt (everything), summary.md (stage table + every
# benchmark table), results.tgz (the benchmarks' .json and .md files). Pytest failures are in log.txt (-rfE).
set -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/device_out}"
mkdir -p "$OUT"
RES="$OUT/results"  # packed into results.tgz at the end
rm -rf "$RES"
mkdir -p "$RES"
LOG="$OUT/log.txt"
DEADLINE_S="${DEADLINE_S:-470}"
START=$(date +%s)
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 MAX_JOBS="${MAX_JOBS:-16}"
# The device check runs the experimental GPU code too (kernels not yet shown correct on hardware): built and
# registered with this switch (setup.py, CMake via CMAKE_ARGS, sparseyolo.sparse).
export SPARSEYOLO_EXPERIMENTAL_GPU=1
declare -a STAGES

log() { echo "[device_check $(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

# run_stage NAME CAP_SECONDS CMD...: runs CMD with timeout min(CAP, time left), tees its output to the log.
run_stage() {
  local name="$1" cap="$2"
  shift 2
  if [[ " ${SKIP_STAGES:-} " == *" $name "* ]]; then
    STAGES+=("| $name | skipped | SKIP_STAGES |")
    log "SKIP $name: in SKIP_STAGES"
    return 0
  fi
  local left=$((DEADLINE_S - ($(date +%s) - START)))
  local limit=$((cap < left ? cap : left))
  if ((limit < 10)); then
    STAGES+=("| $name | skipped | no time left |")
    log "SKIP $name: no time left"
    return 0
  fi
  log "START $name (limit ${limit}s): $*"
  local t0=$(date +%s) rc
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=$?
  local dt=$(($(date +%s) - t0)) status="ok"
  if ((rc == 124 || rc == 137)); then status="TIMEOUT"; elif ((rc == 77)); then status="skipped (rc 77: no suitable GPU)"
  elif ((rc != 0)); then status="FAILED (rc $rc)"; fi
  STAGES+=("| $name | $status | ${dt}s |")
  log "END $name: $status in ${dt}s"
  return 0
}

# --- environment ------------------------------------------------------------------------------------------
if [[ -z "${CUDA_HOME:-}" || ! -x "${CUDA_HOME}/bin/nvcc" ]]; then
  CUDA_HOME=""
  for d in /usr/local/cuda /usr/local/cuda-13.0 /usr/local/cuda-13 /opt/cuda \
           "$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /x/x/x)")")"; do
    if [[ -x "$d/bin/nvcc" && -f "$d/include/cuda_runtime.h" ]]; then CUDA_HOME="$d"; break; fi
  done
fi
export CUDA_HOME
export PATH="${CUDA_HOME:+$CUDA_HOME/bin:}$PATH"
{
  echo "# environment"
  date
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 || true
  echo "CUDA_HOME=$CUDA_HOME"; nvcc --version 2>&1 | tail -1 || true
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)" 2>&1
  "$PY" -m pip --version 2>&1
} | tee -a "$LOG"
# Pure-python deps the tests import; the machine has no network, so only report what is missing.
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib
for name in ("yaml", "tqdm", "cv2", "numpy", "torchvision", "pytest", "hypothesis", "pycocotools"):
    try:
        importlib.import_module(name)
    except Exception as e:  # noqa: BLE001
        print(f"missing python module {name}: {e} (tests that need it skip or fail)")
EOF
# Wheels carried in .whl/ (see the device README) are installed when present.
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    2>&1 | tee -a "$LOG" && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

# The device image sets CC/CXX to /opt/gcc, whose objects carried their own copy of libstdc++'s ostream code
# into the extension: every TORCH_CHECK message with an integer in it then segfaulted (std::codecvt through the
# system libstdc++'s locale). Build with the system compiler, which matches the libstdc++ torch runs with.
if [[ -z "${KEEP_CC:-}" && -x /usr/bin/g++ && -x /usr/bin/gcc ]]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
log "CC=${CC:-unset} CXX=${CXX:-unset}: $(${CXX:-c++} --version 2>&1 | head -1)"

# --- 1. layout probes ------------------------------------------------------------------------------------
# One instruction each: the mma.sp probe (checked on an H200) and the wgmma.sp one (not yet run on a GPU). Both
# print which operand layouts give the right product. The wgmma probe's last line names the kernel's compile flags
# for a layout that works (SPARSEYOLO_WGMMA_FLAGS: -D...); when they differ from the kernel's defaults (the PTX
# reading, sparse_conv2d_24_device.cuh), everything below is built with them, so that this one run still tests
# and times the wgmma kernels. A SPARSEYOLO_NVCC_FLAGS set by the caller wins.
CMAKE_ARGS=(-S . -B build/device_cmake -DSPARSEYOLO_CUDA=ON -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc"
            -DCMAKE_CUDA_ARCHITECTURES=90a -DSPARSEYOLO_EXPERIMENTAL_GPU=ON)
probe_layouts() {
  cmake "${CMAKE_ARGS[@]}" -DCMAKE_CUDA_FLAGS= >/dev/null &&
    cmake --build build/device_cmake -j "$MAX_JOBS" --target cuda_test_mma_sp_layout cuda_test_wgmma_sp_layout \
      >/dev/null || return 1
  ./build/device_cmake/cuda_test_mma_sp_layout
  ./build/device_cmake/cuda_test_wgmma_sp_layout | tee "$RES/wgmma_layout_probe.txt"
}
run_stage probe_layouts 90 bash -o pipefail -c "$(declare -f probe_layouts); \
  CMAKE_ARGS=($(printf '%q ' "${CMAKE_ARGS[@]}")); RES='$RES' MAX_JOBS='$MAX_JOBS' probe_layouts"
WGMMA_DEFAULT_FLAGS="-DSPARSEYOLO_WGMMA_META_SLOTS=0x0213 -DSPARSEYOLO_WGMMA_A_SWAP12=0 -DSPARSEYOLO_WGMMA_TRANS_B=0"
probe_flags=$(grep -a '^SPARSEYOLO_WGMMA_FLAGS: ' "$RES/wgmma_layout_probe.txt" 2>/dev/null | tail -1 |
  sed 's/^SPARSEYOLO_WGMMA_FLAGS: //')
if [[ -n "${SPARSEYOLO_NVCC_FLAGS:-}" ]]; then
  log "wgmma layout: building with the caller's SPARSEYOLO_NVCC_FLAGS=$SPARSEYOLO_NVCC_FLAGS" \
    "(probe: ${probe_flags:-no answer})"
elif [[ "$probe_flags" == -D* && "$probe_flags" != "$WGMMA_DEFAULT_FLAGS" ]]; then
  export SPARSEYOLO_NVCC_FLAGS="$probe_flags"
  log "wgmma layout: NOT the kernel's default. Building with the probe's $probe_flags;" \
    "make them the defaults in csrc/kernels/cuda/sparse_conv2d_24_device.cuh" \
    "(and SIMT_WGMMA_HW_* in tests/cpp/simt_emulator.h)"
else
  log "wgmma layout: ${probe_flags:-no answer from the probe} (the kernel's defaults are built)"
fi
WGMMA_LAYOUT_NOTE="wgmma layout probe: ${probe_flags:-no answer}; built with: ${SPARSEYOLO_NVCC_FLAGS:-the defaults}"

# --- 2. build ---------------------------------------------------------------------------------------------
# build_ext --inplace: the tests and benchmarks import sparseyolo from the checkout; no pip metadata needed.
run_stage build 300 env FORCE_CUDA=1 MAX_JOBS="$MAX_JOBS" CUDA_HOME="$CUDA_HOME" \
  SPARSEYOLO_NVCC_FLAGS="${SPARSEYOLO_NVCC_FLAGS:-}" \
  TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" "$PY" setup.py -q build_ext --inplace
"$PY" -c "import sparseyolo._C, torch; print('ops:', sorted(n for n in dir(torch.ops.sparseyolo) if not n.startswith('_')))" \
  2>&1 | tee -a "$LOG"

# --- 2b. ctest (torch-free kernels) -----------------------------------------------------------------------
# Every CUDA ctest (the probes again, then the kernels; the sparse conv's covers every kernel, wgmma last), built
# with the same flags as the extension.
ctest_all() {
  cmake "${CMAKE_ARGS[@]}" -DCMAKE_CUDA_FLAGS="${SPARSEYOLO_NVCC_FLAGS:-}" >/dev/null &&
    cmake --build build/device_cmake -j "$MAX_JOBS" >/dev/null || return 1
  ctest --test-dir build/device_cmake --output-on-failure -R cuda_test
}
run_stage ctest_cuda 120 bash -c "$(declare -f ctest_all); CMAKE_ARGS=($(printf '%q ' "${CMAKE_ARGS[@]}")); \
  MAX_JOBS='$MAX_JOBS' SPARSEYOLO_NVCC_FLAGS='${SPARSEYOLO_NVCC_FLAGS:-}' ctest_all"

# --- 3. CUDA tests ----------------------------------------------------------------------------------------
# pytest-timeout and pytest-xdist when the machine has them: 4 workers, and a crashing test (a segfault) takes
# down one worker, which is replaced, instead of the whole run.
EXTRA_ARGS=()
"$PY" -c "import pytest_timeout" 2>/dev/null && EXTRA_ARGS+=(--timeout 60)
"$PY" -c "import xdist" 2>/dev/null && EXTRA_ARGS+=(-n 4)
run_stage pytest_cuda 180 "$PY" -m pytest -q -m "cuda and not wgmma" -p no:cacheprovider \
  --continue-on-collection-errors -rfE "${EXTRA_ARGS[@]}" tests
run_stage pytest_wgmma 60 "$PY" -m pytest -q -m wgmma -p no:cacheprovider -rfE tests/test_sparse_conv_cuda.py

# --- 4. benchmarks ----------------------------------------------------------------------------------------
# Most informative first, so that the deadline cuts what is already known (NMS was measured on the H200 before).
# The mma.sp kernels with cuSPARSELt off: on the H200 (torch 2.11) a failing cuSPARSELt call has left the CUDA
# context unusable, which would end this benchmark; cuSPARSELt gets its own process.
run_stage bench_sparse_conv 300 env SPARSEYOLO_CUSPARSELT=0 "$PY" benchmarks/bench_sparse_conv_cuda.py --batch 32 \
  --dtype fp16 --reps 10 --methods dense cuda_mma_sp cuda_mma_sp_tile128 cuda_mma_sp_tile128x256 \
  cuda_mma_sp_tile256x128 --out "$RES" --name sparse_conv_cuda
# The wgmma kernels in their own process: per layer, and end to end with the autotuner choosing among them, the
# tile64 kernel and cuDNN (auto never tries them unless named).
run_stage bench_wgmma 120 env SPARSEYOLO_CUSPARSELT=0 "$PY" benchmarks/bench_sparse_conv_cuda.py \
  --batch 32 --dtype fp16 --reps 10 --methods dense cuda_wgmma cuda_wgmma_overlap cuda_wgmma64 --out "$RES" \
  --backends cuda_mma_sp cuda_wgmma cuda_wgmma_overlap cuda_wgmma64 --name sparse_conv_cuda_wgmma
# cuSPARSELt through sparseyolo's own binding (plans cached; PyTorch 2.11's binding took 170-210 ms per call here),
# in its own process: the 1x1 layers, and yolov5x end to end with `auto` free to pick it next to the mma.sp kernels.
run_stage bench_cusparselt 150 "$PY" benchmarks/bench_sparse_conv_cuda.py --batch 32 --dtype fp16 --reps 10 \
  --methods dense cusparselt --models yolov5x --out "$RES" --name sparse_conv_cuda_cslt
# Hardware counters (Nsight Compute) of cuDNN and every 2:4 kernel on two yolov5x layers: why a kernel is slow
# (tensor pipe, L2, DRAM, occupancy, warp stalls), for the sessions that tune without a device.
profile_ncu() {
  local ncu rc
  ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu "$CUDA_HOME"/bin/ncu 2>/dev/null | tail -1)
  [[ -n "$ncu" && -x "$ncu" ]] || { echo "ncu not found: no hardware counters"; return 77; }
  "$ncu" --clock-control none --profile-from-start off --section SpeedOfLight --section MemoryWorkloadAnalysis \
    --section Occupancy --section WarpStateStats --section LaunchStats --section ComputeWorkloadAnalysis \
    --export "$RES/ncu_sparse_conv" --force-overwrite "$PY" benchmarks/experimental/profile_sparse_conv_ncu.py --wgmma
  rc=$?  # a fault in the last (wgmma) kernels still leaves the report of the ones before
  "$ncu" --import "$RES/ncu_sparse_conv.ncu-rep" --csv --page raw --print-units base >"$RES/ncu_sparse_conv.csv" &&
    rm -f "$RES/ncu_sparse_conv.ncu-rep" || return 1
  "$PY" benchmarks/experimental/profile_sparse_conv_ncu.py --summarize "$RES/ncu_sparse_conv.csv" | tee "$RES/ncu_sparse_conv.md"
  return $rc
}
run_stage profile_ncu 90 bash -o pipefail -c "$(declare -f profile_ncu); RES='$RES' PY='$PY' CUDA_HOME='$CUDA_HOME' \
  profile_ncu"
run_stage bench_nms 60 "$PY" benchmarks/bench_nms.py --device cuda --batch 1 32 --min-run-time 0.3 \
  --json "$RES/nms_cuda.json" --markdown "$RES/nms_cuda.md"
run_stage probe_cusparselt 60 "$PY" benchmarks/experimental/probe_cusparselt.py

# --- summary ----------------------------------------------------------------------------------------------
{
  echo "# sparseyolo device check ($(date '+%Y-%m-%d %H:%M'), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"
  echo
  echo "| stage | status | time |"
  echo "|---|---|---|"
  printf '%s\n' "${STAGES[@]}"
  echo
  echo "$WGMMA_LAYOUT_NOTE"
  echo
  grep -E "passed|failed|error" "$LOG" | grep -E "^[=]* ?[0-9]+ (passed|failed)" | tail -2
  for f in sparse_conv_cuda sparse_conv_cuda_wgmma sparse_conv_cuda_cslt ncu_sparse_conv nms_cuda; do
    [[ -f "$RES/$f.md" ]] && { echo; cat "$RES/$f.md"; }
  done
  echo  # the best correct method per layer over all three sparse-conv runs: what a perfect `auto` could reach
  "$PY" benchmarks/bench_sparse_conv_cuda.py --merge "$RES/sparse_conv_cuda.json" "$RES/sparse_conv_cuda_wgmma.json" \
    "$RES/sparse_conv_cuda_cslt.json" 2>&1 | tail -3
} >"$OUT/summary.md"
tar czf "$OUT/results.tgz" -C "$RES" . && rm -rf "$RES"
log "done in $(($(date +%s) - START))s"
cat "$OUT/summary.md"
