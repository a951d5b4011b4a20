// A SIMT emulator for testing CUDA kernel source on a machine without a GPU.
//
// Include this header, then the kernel's .cuh (which sees SPARSEYOLO_SIMT_EMULATION and uses the primitives
// defined here instead of its inline PTX), and launch with simt::launch(kernel, grid, block, smem_bytes, args).
//
// What is emulated, and how faithfully:
//   * Threads. Every thread of a block is a fiber (its own stack; switched with _setjmp/_longjmp, started with
//     makecontext). Blocks run one after another; within a block, fibers run until they reach a barrier or a
//     warp-collective instruction, and the next fiber to run is drawn at random (seeded), so the order in which
//     warps reach and leave barriers varies from run to run.
//   * __syncthreads(): all threads of the block; a block whose live threads all wait on barriers that can never
//     complete (a deadlock, or a thread that left early) is reported.
//   * Warp collectives (.sync.aligned): every lane of the warp must arrive at the same instruction; the result is
//     computed from all 32 lanes' operands by the definitions in the PTX ISA:
//       ldmatrix.sync.aligned.m8n8.x4.shared.b16 (lane l addresses row l%8 of matrix l/8; register j of lane
//         4g+t = row g, columns 2t, 2t+1 of matrix j),
//       mma.sp.sync.aligned.m16n8k32.row.col.f32.{f16,bf16} with sparsity selector 0 (A fragment: element e of
//         lane 4g+t is row g + 8((e/2)&1), compressed column 2t + (e&1) + 8(e/4); metadata: lanes 4g and 4g+1
//         give rows g (bits 0-15) and g+8 (bits 16-31), dense columns 0-15 and 16-31, two 2-bit indices per
//         group of four; B fragment: element i of lane 4g+t is row 2t + (i&1) + 8(i/2), column g; C/D: element
//         i is row g + 8(i/2), column 2t + (i&1)). tests/cpp/cuda_test_mma_sp_layout.cu checked this layout on
//         an H200. Products are summed in float, in another order than the tensor cores.
//   * cp.async (16 bytes, zero-fill): in Mode::kEager the copy lands when issued; in Mode::kLazy it lands only
//     when a cp.async.wait_group retires its group. The first catches a stage overwritten while another warp still
//     reads it, the second a stage read before its wait; both should pass.
//   * wgmma.mma_async.sp m64n256k32 (sm_90a): A from registers (per warp, the mma.sp m16n8k32 fragment and
//     metadata layout above), B from shared memory through its descriptor (canonical K-major, 128-byte swizzle:
//     element (k, n) at start + (n / 8) SBO + (n % 8) 128 + 2k, address bits 4-6 XOR 7-9). It runs at its
//     wgmma.wait_group in Mode::kEager and at issue in Mode::kLazy: the opposite extreme of the copies. It reads
//     shared memory and the threads' A registers when it runs, so a stage or a register set reused too early is
//     caught. fence, commit_group and wait_group are warpgroup collectives. Every shared chunk it reads must
//     have been covered by a fence.proxy.async of the thread whose cp.async wrote it, issued after the copy
//     landed (cp.async writes through the generic proxy, wgmma reads through the async one); plain stores to
//     shared memory are not tracked.
//     Unlike the mma.sp layout, this reading of the ISA has not been checked on hardware yet
//     (tests/cpp/experimental/cuda_test_wgmma_sp_layout.cu will). SIMT_WGMMA_HW_META_SLOTS, _A_SWAP12 and _TRANS_B emulate a
//     GPU that reads the A registers, the metadata or imm-trans-b otherwise (see wgmma_sp_m64n256k32 below).
//   * Dynamic shared memory starts 144 bytes into the shared window, so alignment a kernel needs (1024 bytes for
//     swizzle atoms) must be made by the kernel, as on a GPU. It starts filled with 0xFF bytes (NaN in fp16, bf16
//     and fp32), so data an MMA reads that no copy wrote shows up in the output, even when multiplied by zero.
//   * Memory checks: shared-memory addresses of cp.async/ldmatrix/ld.shared are bounds- and alignment-checked;
//     global sources of cp.async and __ldg must lie in a buffer registered with simt::Buffer, which puts an
//     inaccessible page right after each buffer (and after shared memory), so a plain load or store past the end
//     faults. A thread that ends with cp.async copies still pending is reported.
// Not emulated: timing, occupancy, memory coalescing, bank conflicts, and anything not listed above.
#pragma once

#define SPARSEYOLO_SIMT_EMULATION 1

#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace simt {

enum class Mode { kEager, kLazy };

[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "simt emulator: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();  // a kernel bug: stop here, with the message, instead of running on with corrupt state
}

inline size_t page_size() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

// Memory that ends right before an inaccessible page.
class GuardedMemory {
 public:
  GuardedMemory() = default;
  explicit GuardedMemory(size_t bytes) : bytes_(bytes) {
    const size_t ps = page_size();
    span_ = (bytes + ps - 1) / ps * ps + ps;
    base_ = static_cast<unsigned char*>(
        mmap(nullptr, span_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (base_ == MAP_FAILED) fail("mmap failed");
    if (mprotect(base_ + span_ - ps, ps, PROT_NONE) != 0) fail("mprotect failed");
    data_ = base_ + (span_ - ps - bytes);  // so data_ + bytes is the guard page
  }
  GuardedMemory(const GuardedMemory&) = delete;
  GuardedMemory& operator=(const GuardedMemory&) = delete;
  GuardedMemory(GuardedMemory&& o) noexcept { *this = std::move(o); }
  GuardedMemory& operator=(GuardedMemory&& o) noexcept {
    std::swap(base_, o.base_);
    std::swap(data_, o.data_);
    std::swap(bytes_, o.bytes_);
    std::swap(span_, o.span_);
    return *this;
  }
  ~GuardedMemory() {
    if (base_ != nullptr) munmap(base_, span_);
  }
  unsigned char* data() const { return data_; }
  size_t size() const { return bytes_; }

 private:
  unsigned char* base_ = nullptr;
  unsigned char* data_ = nullptr;
  size_t bytes_ = 0, span_ = 0;
};

struct Copy {
  uint32_t dst;
  unsigned char bytes[16];
};

struct Fiber {
  jmp_buf ctx;
  ucontext_t start;
  std::vector<unsigned char> stack;
  uint3 tid;
  bool done = false;
  // What it waits for: the generation counter of its block barrier, warp or warpgroup (null: nothing) to reach
  // wait_gen.
  const uint64_t* wait_on = nullptr;
  uint64_t wait_gen = 0;
  std::vector<Copy> open_group;
  std::vector<std::vector<Copy>> groups;  // committed, not yet retired, oldest first
  std::vector<uint32_t> unfenced;         // 16-byte shared chunks its landed cp.async copies wrote since its last
                                          // fence.proxy.async
};

struct Warp {
  int arrived = 0;
  uint64_t gen = 0;
  const char* op = nullptr;  // the collective the lanes are at
  uint32_t u32[32][9];       // operands, per lane
  float f32[32][4];
  uint32_t out[32][4];       // results, per lane
  float fout[32][4];
};

// A warpgroup-wide asynchronous MMA (wgmma), recorded at issue and executed when a wgmma.wait_group retires its
// group (Mode::kEager: copies land early, MMAs read late) or at issue (Mode::kLazy: copies land late, MMAs read
// early), reading shared memory then.
struct WgmmaOp {
  std::function<void()> run;
};

struct WarpGroup {
  int arrived = 0;
  uint64_t gen = 0;
  const char* op = nullptr;
  uint64_t u64[128];
  void* ptr[128];
  const uint4* a_ptr[128];
  const uint32_t* e_ptr[128];
  std::vector<WgmmaOp> open;
  std::vector<std::vector<WgmmaOp>> committed;
  // A wgmma.fence since the warpgroup's last wgmma.wait_group (or its start): after a wait the threads may touch
  // accumulator and A-fragment registers, and PTX requires a wgmma.fence between such register writes and the
  // next wgmma.mma_async that uses them. (Register writes themselves are not tracked, so a fence issued before the
  // A fragments are loaded passes here.)
  bool fenced = false;
};

struct State {
  Mode mode = Mode::kEager;
  std::mt19937 rng{1};
  std::vector<std::pair<const unsigned char*, size_t>> buffers;  // registered global memory
  // The running block. Its dynamic shared memory starts kSmemOffset bytes into the shared window (addresses are
  // window offsets, as on a GPU), so a kernel that needs more alignment than 16 bytes has to make it itself.
  static constexpr size_t kSmemOffset = 144;
  GuardedMemory smem;  // the window: kSmemOffset bytes (canary-filled) + the block's dynamic shared memory
  // Per 16-byte chunk of the window: 1 + the thread whose cp.async wrote it last, while no fence.proxy.async of
  // that thread has followed the write (0: visible to the async proxy, i.e. to wgmma).
  std::vector<int32_t> smem_unfenced_by;
  std::vector<struct WarpGroup> warpgroups;
  uint3 block_idx{0, 0, 0};
  dim3 grid_dim, block_dim;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  int current = -1;
  int block_arrived = 0;
  uint64_t block_gen = 0;
  jmp_buf scheduler;
  std::function<void()> body;
};

inline State& state() {
  static State s;
  return s;
}

// A global-memory buffer the kernel may read with cp.async or __ldg (and write through plain pointers).
template <typename T>
class Buffer {
 public:
  explicit Buffer(const std::vector<T>& host) : mem_(std::max<size_t>(host.size() * sizeof(T), 16)), n_(host.size()) {
    if (!host.empty()) std::memcpy(mem_.data(), host.data(), host.size() * sizeof(T));
    state().buffers.emplace_back(mem_.data(), mem_.size());
  }
  Buffer(size_t n, unsigned char fill) : mem_(std::max<size_t>(n * sizeof(T), 16)), n_(n) {
    std::memset(mem_.data(), fill, mem_.size());
    state().buffers.emplace_back(mem_.data(), mem_.size());
  }
  ~Buffer() {
    auto& b = state().buffers;
    b.erase(std::remove_if(b.begin(), b.end(), [&](const auto& e) { return e.first == mem_.data(); }), b.end());
  }
  T* data() const { return reinterpret_cast<T*>(mem_.data()); }
  std::vector<T> to_host() const {
    std::vector<T> v(n_);
    if (n_) std::memcpy(v.data(), mem_.data(), n_ * sizeof(T));
    return v;
  }

 private:
  GuardedMemory mem_;
  size_t n_;
};

inline void check_global(const void* p, size_t bytes, const char* op) {
  const auto* c = static_cast<const unsigned char*>(p);
  for (const auto& [base, size] : state().buffers)
    if (c >= base && c + bytes <= base + size) return;
  fail(std::string(op) + ": global address outside every buffer");
}

inline unsigned char* smem_ptr(uint32_t addr, size_t bytes, size_t align, const char* op) {
  State& s = state();
  if (addr % align != 0) fail(std::string(op) + ": misaligned shared address " + std::to_string(addr));
  if (addr < State::kSmemOffset || static_cast<size_t>(addr) + bytes > s.smem.size())
    fail(std::string(op) + ": shared address " + std::to_string(addr) + " + " + std::to_string(bytes) +
         " outside the block's dynamic shared memory [" + std::to_string(State::kSmemOffset) + ", " +
         std::to_string(s.smem.size()) + ")");
  return s.smem.data() + addr;
}

inline Fiber& self() { return state().fibers[state().current]; }

inline bool satisfied(const Fiber& f) { return f.wait_on == nullptr || *f.wait_on >= f.wait_gen; }

// Switches to a fiber drawn at random among those that can run (the others wait at barriers that have not
// completed); returns when this one is picked again. No runnable fiber at all is a deadlock.
inline void yield() {
  State& s = state();
  std::vector<int> ready;
  for (int i = 0; i < static_cast<int>(s.fibers.size()); ++i)
    if (!s.fibers[i].done && satisfied(s.fibers[i])) ready.push_back(i);
  if (ready.empty()) fail("deadlock: every live thread waits at a barrier or warp collective that cannot complete");
  const int next = ready[std::uniform_int_distribution<int>(0, static_cast<int>(ready.size()) - 1)(s.rng)];
  if (next == s.current) return;
  if (s.current >= 0 && !s.fibers[s.current].done && _setjmp(s.fibers[s.current].ctx) != 0) return;
  s.current = next;
  _longjmp(s.fibers[next].ctx, 1);
}

inline void wait_until_released() {
  while (!satisfied(self())) yield();
  self().wait_on = nullptr;
}

inline int linear_tid() { return static_cast<int>(self().tid.x + self().tid.y * state().block_dim.x); }
inline int live_threads() {
  int n = 0;
  for (const Fiber& f : state().fibers) n += !f.done;
  return n;
}

inline void syncthreads() {
  State& s = state();
  Fiber& me = self();
  me.wait_on = &s.block_gen;
  me.wait_gen = s.block_gen + 1;
  if (++s.block_arrived == live_threads()) {
    s.block_arrived = 0;
    ++s.block_gen;
  }
  wait_until_released();
}

// A .sync.aligned instruction across the kSize threads of a warp (32) or warpgroup (128): thread i of the group
// deposits its operands for `op`; the last to arrive runs `compute` (every thread's results at once), then each
// thread reads its own.
template <int kSize, typename Group>
inline Group& group_collective(std::vector<Group>& groups, const char* op,
                               const std::function<void(Group&, int)>& deposit,
                               const std::function<void(Group&)>& compute) {
  const int t = linear_tid();
  if (state().block_dim.x * state().block_dim.y % kSize != 0)
    fail(std::string(op) + ": the block is not a whole number of groups of " + std::to_string(kSize) + " threads");
  Group& w = groups[t / kSize];
  if (w.arrived == 0) w.op = op;
  if (w.op != op && std::strcmp(w.op, op) != 0)
    fail(std::string("threads of one group at different collective instructions: ") + w.op + " and " + op);
  deposit(w, t % kSize);
  Fiber& me = self();
  me.wait_on = &w.gen;
  me.wait_gen = w.gen + 1;
  if (++w.arrived == kSize) {
    compute(w);
    w.arrived = 0;
    ++w.gen;
  }
  wait_until_released();
  return w;
}

inline Warp& collective(const char* op, const std::function<void(Warp&, int)>& deposit,
                        const std::function<void(Warp&)>& compute) {
  return group_collective<32>(state().warps, op, deposit, compute);
}
inline WarpGroup& wg_collective(const char* op, const std::function<void(WarpGroup&, int)>& deposit,
                                const std::function<void(WarpGroup&)>& compute) {
  return group_collective<128>(state().warpgroups, op, deposit, compute);
}

// A cp.async copy of thread `tid` lands: the generic proxy wrote the chunk, and the async proxy (wgmma) may not
// read it until that thread has run a fence.proxy.async.
inline void land(const Copy& c, Fiber& f, int tid) {
  std::memcpy(state().smem.data() + c.dst, c.bytes, 16);
  state().smem_unfenced_by[c.dst / 16] = 1 + tid;
  f.unfenced.push_back(c.dst / 16);
}

inline void retire_oldest_group(Fiber& f, int tid) {
  for (const Copy& c : f.groups.front()) land(c, f, tid);
  f.groups.erase(f.groups.begin());
}

[[noreturn]] inline void fiber_main() {
  State& s = state();
  s.body();
  Fiber& me = self();
  if (!me.open_group.empty() || !me.groups.empty()) fail("thread finished with cp.async copies not waited for");
  me.done = true;
  // A finished thread no longer counts at block barriers: release one that now has everyone.
  if (s.block_arrived > 0 && s.block_arrived == live_threads()) {
    s.block_arrived = 0;
    ++s.block_gen;
  }
  if (live_threads() == 0) _longjmp(s.scheduler, 1);
  yield();  // never returns: this fiber is done
  fail("unreachable");
}

inline void fiber_trampoline() {
  // First entry (from launch, via swapcontext): park here until the scheduler jumps in.
  State& s = state();
  if (_setjmp(s.fibers[s.current].ctx) == 0) {
    ucontext_t* back = reinterpret_cast<ucontext_t*>(s.fibers[s.current].stack.data());
    setcontext(back);  // back to launch's bootstrap loop
  }
  fiber_main();
}

// Runs `kernel(args...)` over the grid, one block at a time.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes, Args&&... args) {
  State& s = state();
  s.grid_dim = grid;
  s.block_dim = block;
  const int nthreads = static_cast<int>(block.x * block.y * block.z);
  if (nthreads % 32 != 0) fail("block size must be a multiple of 32 here");
  s.body = [&] { kernel(args...); };
  constexpr size_t kStack = 256 * 1024;
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      s.block_idx = uint3{bx, by, 0};
      s.smem = GuardedMemory(State::kSmemOffset + std::max<size_t>(smem_bytes, 16));
      s.smem_unfenced_by.assign(s.smem.size() / 16 + 1, 0);
      std::memset(s.smem.data(), 0x5A, State::kSmemOffset);  // canary below the block's shared memory
      // Garbage that is NaN in fp16, bf16 and fp32: an MMA that reads shared memory no copy wrote, even times a
      // zero, shows in the output (on a GPU it holds whatever the last block left).
      std::memset(s.smem.data() + State::kSmemOffset, 0xFF, s.smem.size() - State::kSmemOffset);
      s.warpgroups.assign((nthreads + 127) / 128, WarpGroup{});
      s.fibers.assign(nthreads, Fiber{});
      s.warps.assign(nthreads / 32, Warp{});
      s.block_arrived = 0;
      s.block_gen = 0;
      for (int i = 0; i < nthreads; ++i) {
        Fiber& f = s.fibers[i];
        f.tid = uint3{static_cast<unsigned>(i % block.x), static_cast<unsigned>(i / block.x), 0};
        f.stack.resize(kStack);
        // The bottom of the stack holds the context to return to after the fiber has parked (see trampoline).
        ucontext_t* back = reinterpret_cast<ucontext_t*>(f.stack.data());
        getcontext(&f.start);
        f.start.uc_stack.ss_sp = f.stack.data() + 4096;
        f.start.uc_stack.ss_size = kStack - 4096;
        f.start.uc_link = nullptr;
        makecontext(&f.start, fiber_trampoline, 0);
        s.current = i;
        swapcontext(back, &f.start);  // runs the trampoline up to its park point
      }
      if (_setjmp(s.scheduler) == 0) {
        s.current = std::uniform_int_distribution<int>(0, nthreads - 1)(s.rng);
        _longjmp(s.fibers[s.current].ctx, 1);
      }
      s.current = -1;
      for (size_t i = 0; i < State::kSmemOffset; ++i)
        if (s.smem.data()[i] != 0x5A) fail("a store landed below the block's dynamic shared memory");
      for (const WarpGroup& wg : s.warpgroups)
        if (!wg.open.empty() || !wg.committed.empty()) fail("block finished with wgmma operations not waited for");
    }
  s.fibers.clear();
  s.warps.clear();
  s.smem = GuardedMemory();
}

}  // namespace simt

// ---- CUDA names used by kernel source -----------------------------------------------------------------------
#define threadIdx (::simt::self().tid)
#define blockIdx (::simt::state().block_idx)
#define blockDim (::simt::state().block_dim)
#define gridDim (::simt::state().grid_dim)

inline void __syncthreads() { simt::syncthreads(); }
template <typename T>
inline T __ldg(const T* p) {
  simt::check_global(p, sizeof(T), "__ldg");
  return *p;
}
inline float __expf(float x) { return std::exp(x); }
using std::min;
using std::max;

// ---- the primitives of sparse_conv2d_24_device.cuh ------------------------------------------------------------
namespace sparseyolo {
namespace kernels {
namespace spconv24 {

#define SPARSEYOLO_DYNAMIC_SMEM(name) unsigned char* name = ::simt::state().smem.data() + ::simt::State::kSmemOffset

inline uint32_t smem_addr(const void* p) {
  const auto* c = static_cast<const unsigned char*>(p);
  const auto& sm = simt::state().smem;
  if (c < sm.data() || c > sm.data() + sm.size()) simt::fail("smem_addr of a pointer outside shared memory");
  return static_cast<uint32_t>(c - sm.data());
}

inline void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  if (src_bytes != 0 && src_bytes != 16) simt::fail("cp_async16: src_bytes must be 0 or 16");
  if (reinterpret_cast<uintptr_t>(src) % 16 != 0) simt::fail("cp.async: misaligned global source");
  simt::smem_ptr(dst, 16, 16, "cp.async");  // bounds and alignment
  simt::Copy c{dst, {}};
  if (src_bytes) {
    simt::check_global(src, 16, "cp.async");
    std::memcpy(c.bytes, src, 16);
  }
  if (simt::state().mode == simt::Mode::kEager)
    simt::land(c, simt::self(), simt::linear_tid());
  else
    simt::self().open_group.push_back(c);
}
inline void cp_async_commit() {
  simt::Fiber& f = simt::self();
  f.groups.push_back(std::move(f.open_group));
  f.open_group.clear();
}
template <int N>
inline void cp_async_wait() {
  simt::Fiber& f = simt::self();
  while (static_cast<int>(f.groups.size()) > N) simt::retire_oldest_group(f, simt::linear_tid());
}

inline uint4 lds128(uint32_t addr) {
  uint4 v;
  std::memcpy(&v, simt::smem_ptr(addr, 16, 16, "ld.shared.v4"), 16);
  return v;
}
inline uint32_t lds32(uint32_t addr) {
  uint32_t v;
  std::memcpy(&v, simt::smem_ptr(addr, 4, 4, "ld.shared.u32"), 4);
  return v;
}

inline void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  const int lane = simt::linear_tid() % 32;
  simt::Warp& w = simt::collective(
      "ldmatrix.x4", [&](simt::Warp& w, int l) { w.u32[l][0] = addr; },
      [](simt::Warp& w) {
        for (int l = 0; l < 32; ++l) {
          const int g = l / 4, t = l % 4;
          for (int j = 0; j < 4; ++j) {  // matrix j, row g: the address of lane 8j + g
            const unsigned char* row = simt::smem_ptr(w.u32[8 * j + g][0], 16, 16, "ldmatrix");
            std::memcpy(&w.out[l][j], row + 4 * t, 4);
          }
        }
      });
  for (int j = 0; j < 4; ++j) r[j] = w.out[lane][j];
}

template <typename T>
inline float emu_to_float(uint16_t bits) {
  T v;
  std::memcpy(static_cast<void*>(&v), &bits, 2);
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(v);
  } else {
    return __bfloat162float(v);
  }
}

// The dense 16 x 32 A of one warp's mma.sp m16n8k32 operands: lane l's compressed values `regs(l)[0..3]` and
// metadata word `meta(l)` (selector 0: lanes 4g and 4g+1 carry it).
template <typename T, typename Regs, typename Meta>
inline void decode_sparse_a(Regs regs, Meta meta, float (&A)[16][32]) {
  auto half = [](uint32_t word, int h) { return static_cast<uint16_t>(h ? word >> 16 : word & 0xFFFF); };
  for (auto& row : A)
    for (float& v : row) v = 0.f;
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int el = 0; el < 8; ++el) {  // compressed A element el of lane l
      const int row = g + 8 * ((el / 2) & 1), col = 2 * t + (el & 1) + 8 * (el / 4);
      const int grp = col / 2;  // dense group of 4 columns
      const uint32_t codes = (meta(4 * (row % 8) + (grp / 4)) >> (row < 8 ? 0 : 16)) & 0xFFFF;
      const uint32_t code = (codes >> (4 * (grp % 4))) & 0xF;
      // PTX allows only two distinct ascending positions per group of 4 (0b0100, 0b1000, 0b1100, 0b1001, 0b1101,
      // 0b1110; ::ordered_metadata demands the order); anything else is undefined on hardware, so stop here.
      if ((code & 3) >= (code >> 2))
        simt::fail("sparse MMA metadata names positions " + std::to_string(code & 3) + ", " +
                   std::to_string(code >> 2) + " in a group of 4 (row " + std::to_string(row) + "): undefined "
                   "on hardware; give unused rows and k-blocks a valid pattern such as 0x4");
      const int pos = (col & 1) ? static_cast<int>(code >> 2) : static_cast<int>(code & 3);
      A[row][4 * grp + pos] += emu_to_float<T>(half(regs(l)[el / 2], el & 1));
    }
  }
}

template <typename T>
inline void mma_sp_16832(float (&d)[4], const uint4& a, const uint32_t (&b)[4], uint32_t e) {
  const int lane = simt::linear_tid() % 32;
  simt::Warp& w = simt::collective(
      "mma.sp.m16n8k32",
      [&](simt::Warp& w, int l) {
        const uint32_t av[4] = {a.x, a.y, a.z, a.w};
        for (int i = 0; i < 4; ++i) {
          w.u32[l][i] = av[i];
          w.u32[l][4 + i] = b[i];
          w.f32[l][i] = d[i];
        }
        w.u32[l][8] = e;
      },
      [](simt::Warp& w) {
        auto half = [](uint32_t word, int h) { return static_cast<uint16_t>(h ? word >> 16 : word & 0xFFFF); };
        float A[16][32], B[32][8];
        decode_sparse_a<T>([&](int l) { return w.u32[l]; }, [&](int l) { return w.u32[l][8]; }, A);
        for (int l = 0; l < 32; ++l) {
          const int g = l / 4, t = l % 4;
          for (int i = 0; i < 8; ++i)  // B element i of lane l
            B[2 * t + (i & 1) + 8 * (i / 2)][g] = emu_to_float<T>(half(w.u32[l][4 + i / 2], i & 1));
        }
        for (int l = 0; l < 32; ++l) {
          const int g = l / 4, t = l % 4;
          for (int i = 0; i < 4; ++i) {
            const int row = g + 8 * (i / 2), col = 2 * t + (i & 1);
            float acc = w.f32[l][i];
            for (int k = 0; k < 32; ++k) acc += A[row][k] * B[k][col];
            w.fout[l][i] = acc;
          }
        }
      });
  for (int i = 0; i < 4; ++i) d[i] = w.fout[lane][i];
}

// ---- wgmma (sm_90a) -------------------------------------------------------------------------------------------
// The shared-memory operand is read through its matrix descriptor as the PTX ISA defines the canonical K-major
// 128-byte-swizzle layout: element (k, n) of a 16-bit B at start + (n / 8) * SBO + (n % 8) * 128 + 2 k, then
// address bits 4-6 XOR bits 7-9. It must read only chunks that every thread whose cp.async wrote them has since
// fenced (fence.proxy.async.shared::cta, after its wait_group: a copy that lands after the fence is not covered).
// Plain stores to shared memory are not tracked.

inline void fence_proxy_async_shared() {
  simt::Fiber& f = simt::self();
  const int32_t me = 1 + simt::linear_tid();
  for (uint32_t chunk : f.unfenced)
    if (simt::state().smem_unfenced_by[chunk] == me) simt::state().smem_unfenced_by[chunk] = 0;
  f.unfenced.clear();
}
inline void wgmma_fence() {
  simt::wg_collective("wgmma.fence", [](simt::WarpGroup&, int) {}, [](simt::WarpGroup& w) { w.fenced = true; });
}
inline void wgmma_commit() {
  simt::wg_collective("wgmma.commit_group", [](simt::WarpGroup&, int) {}, [](simt::WarpGroup& w) {
    w.committed.push_back(std::move(w.open));
    w.open.clear();
  });
}
template <int N>
inline void wgmma_wait() {
  simt::wg_collective("wgmma.wait_group", [](simt::WarpGroup&, int) {}, [](simt::WarpGroup& w) {
    while (static_cast<int>(w.committed.size()) > N) {
      for (simt::WgmmaOp& op : w.committed.front()) op.run();
      w.committed.erase(w.committed.begin());
    }
    w.fenced = false;
  });
}

// The emulated hardware's conventions for wgmma.sp operands (the kernel's are SPARSEYOLO_WGMMA_*, in
// sparse_conv2d_24_device.cuh, where they are described). The defaults are the PTX ISA reading the kernel assumes;
// ctest builds this test once more with other values on both sides (they must agree) and once with them on this
// side only (it must fail), so that the flags device_check.sh may build with are tested too.
#ifndef SIMT_WGMMA_HW_META_SLOTS
#define SIMT_WGMMA_HW_META_SLOTS 0x0213
#endif
#ifndef SIMT_WGMMA_HW_A_SWAP12
#define SIMT_WGMMA_HW_A_SWAP12 0
#endif
#ifndef SIMT_WGMMA_HW_TRANS_B
#define SIMT_WGMMA_HW_TRANS_B 0  // the imm-trans-b that reads B K-major (the only B layout emulated)
#endif

// The metadata word lane 4g + t (t = 0, 1) would hold in mma.sp order (word t: half t in bits 0-15, half 2 + t
// in bits 16-31; half 2 * (rows g + 8) + (dense columns 16-31)) from the hardware-order words hw0, hw1 of lanes
// 4g, 4g + 1.
inline uint32_t wgmma_meta_to_mma_order(uint32_t hw0, uint32_t hw1, int t) {
  auto half = [&](int h) {
    for (int s = 0; s < 4; ++s)
      if (static_cast<int>((SIMT_WGMMA_HW_META_SLOTS >> (4 * (3 - s))) & 0xF) == h)
        return ((s < 2 ? hw0 : hw1) >> (16 * (s & 1))) & 0xFFFFu;
    simt::fail("SIMT_WGMMA_HW_META_SLOTS is not a permutation of 0-3");
  };
  return half(t) | half(2 + t) << 16;
}

// `a` and `e` are taken by reference: like the accumulators, the A registers are read when the operation runs,
// so a kernel that reloads them before the wait_group is caught (in Mode::kEager).
template <typename T, int kTransB>
inline void wgmma_sp_m64n256k32(float (&d)[128], const uint4& a, const uint32_t& e, uint64_t desc_b) {
  if (kTransB != SIMT_WGMMA_HW_TRANS_B)
    simt::fail("wgmma: imm-trans-b " + std::to_string(kTransB) + " reads B MN-major here; only K-major B is emulated");
  simt::wg_collective(
      "wgmma.mma_async.sp.m64n256k32",
      [&](simt::WarpGroup& w, int i) {
        w.a_ptr[i] = &a;
        w.e_ptr[i] = &e;
        w.u64[i] = desc_b;
        w.ptr[i] = d;
      },
      [](simt::WarpGroup& w) {
        if (!w.fenced)
          simt::fail("wgmma.mma_async with no wgmma.fence since the warpgroup's last wgmma.wait_group (or its start): "
                     "registers it uses may have been written since");
        for (int i = 1; i < 128; ++i)
          if (w.u64[i] != w.u64[0]) simt::fail("wgmma: threads of a warpgroup passed different descriptors");
        const uint64_t desc = w.u64[0];
        if ((desc >> 62) != 1 || ((desc >> 49) & 7) != 0)
          simt::fail("wgmma: emulated only for the 128-byte swizzle layout with base offset 0");
        std::array<float*, 128> out;
        std::array<const uint4*, 128> a_regs;
        std::array<const uint32_t*, 128> e_regs;
        for (int i = 0; i < 128; ++i) {
          out[i] = static_cast<float*>(w.ptr[i]);
          a_regs[i] = w.a_ptr[i];
          e_regs[i] = w.e_ptr[i];
        }
        simt::WgmmaOp op{[out, a_regs, e_regs, desc] {
          auto A = std::make_shared<std::array<float[16][32], 4>>();  // registers are read when it runs
          for (int warp = 0; warp < 4; ++warp)
            decode_sparse_a<T>(
                [&](int l) {  // hardware order -> mma.sp order
                  const uint4& v = *a_regs[32 * warp + l];
                  return SIMT_WGMMA_HW_A_SWAP12 ? std::array<uint32_t, 4>{v.x, v.z, v.y, v.w}
                                                : std::array<uint32_t, 4>{v.x, v.y, v.z, v.w};
                },
                [&](int l) {
                  const int quad = 32 * warp + (l & ~3);
                  return wgmma_meta_to_mma_order(*e_regs[quad], *e_regs[quad + 1], l & 1);
                },
                (*A)[warp]);
          const uint32_t start = static_cast<uint32_t>(desc & 0x3FFF) << 4;
          const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFF) << 4;
          std::vector<float> B(32 * 256);  // shared memory is read when the operation runs
          for (int n = 0; n < 256; ++n)
            for (int k = 0; k < 32; ++k) {
              uint32_t addr = start + (n / 8) * sbo + (n % 8) * 128 + 2 * k;
              addr ^= ((addr >> 7) & 7) << 4;
              uint16_t bits;
              std::memcpy(&bits, simt::smem_ptr(addr, 2, 2, "wgmma B"), 2);
              if (const int32_t by = simt::state().smem_unfenced_by[addr / 16])
                simt::fail("wgmma B: shared address " + std::to_string(addr) + " was written by thread " +
                           std::to_string(by - 1) + "'s cp.async with no fence.proxy.async after it landed "
                           "(the async proxy may read stale data)");
              B[k * 256 + n] = emu_to_float<T>(bits);
            }
          for (int i = 0; i < 128; ++i) {
            const int warp = i / 32, g = (i % 32) / 4, t = i % 4;
            for (int r = 0; r < 128; ++r) {
              const int row = g + 8 * ((r / 2) & 1), col = 8 * (r / 4) + 2 * t + (r & 1);
              float acc = 0.f;
              for (int k = 0; k < 32; ++k) acc += (*A)[warp][row][k] * B[k * 256 + col];
              out[i][r] += acc;
            }
          }
        }};
        // The opposite extreme of the cp.async copies: with copies landing at once, the wgmma reads shared memory
        // as late as it may (its wait_group), and the other way round.
        if (simt::state().mode == simt::Mode::kLazy)
          op.run();
        else
          w.open.push_back(std::move(op));
      });
}

}  // namespace spconv24
}  // namespace kernels
}  // namespace sparseyolo
