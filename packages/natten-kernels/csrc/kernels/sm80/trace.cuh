// Diagnostic clock trace of the SM80 forward kernel, compiled only into a build configured with
// -DNATTEN_SM80_TRACE (CMAKE_CUDA_FLAGS and CMAKE_CXX_FLAGS); a normal build has none of it.
//
// The host launcher reads NATTEN_SM80_TRACE_PTR (a device address, decimal or 0x-hex) per call and
// passes it in FnaParams::trace (the block's last field). The buffer is 64-bit words, zeroed by the
// caller: a header of kTraceHeader words, then 8 per CTA of the grid. Thread 0 of CTA b writes
// %globaltimer (ns) into word kTraceHeader + 8 b + m at its marks m (TraceMark below) and %smid into
// word kTraceHeader + 8 b + 7 (the entry mark of its first work tile; in a grid-strided launch the
// other marks are those of its last). Header word 0, if nonzero, is a start delay in
// ns for every second CTA to arrive on an SM (arrival order from the per-SM counters in header words
// 8 + smid): an experiment on whether the two CTAs of an SM running their key steps in phase costs
// time (NATTEN_SM80_TRACE_DELAY at kernel entry).
#pragma once

#include <cstdint>
#include <cstdlib>

namespace natten {
namespace sm80 {

enum TraceMark : int {
  kMarkEntry = 0,       // kernel entry
  kMarkDescriptor = 1,  // CTA descriptor built (after its barrier)
  kMarkTables = 2,      // thread 0's share of the mask tables done
  kMarkFirstData = 3,   // Q and the first K tile landed (the key loop's first barrier)
  kMarkLoopEnd = 4,     // key loop done
  kMarkStaged = 5,      // O normalized and staged in shared memory
  kMarkExit = 6,        // O's stores issued
};

#if defined(NATTEN_SM80_TRACE)
#define NATTEN_SM80_TRACE_FIELD unsigned long long* trace;

inline unsigned long long* trace_buffer_from_env() {
  const char* e = std::getenv("NATTEN_SM80_TRACE_PTR");
  return e != nullptr ? reinterpret_cast<unsigned long long*>(std::strtoull(e, nullptr, 0)) : nullptr;
}

constexpr int kTraceHeader = 1024;

#if defined(__CUDACC__)
__device__ __forceinline__ unsigned long long trace_clock() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// All threads of the CTA; see the header comment.
__device__ __forceinline__ void trace_delay(unsigned long long* buf) {
  if (buf == nullptr) return;
  if (threadIdx.x == 0 && buf[0] != 0) {
    unsigned smid;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
    const unsigned long long order = atomicAdd(buf + 8 + smid, 1ull);
    if (order & 1) {
      const unsigned long long t0 = trace_clock();
      while (trace_clock() - t0 < buf[0]) {
      }
    }
  }
  __syncthreads();
}

__device__ __forceinline__ void trace_mark(unsigned long long* buf, int mark) {
  if (buf == nullptr || threadIdx.x != 0) return;
  const unsigned long long t = trace_clock();
  unsigned long long* r = buf + kTraceHeader + 8ull * blockIdx.x;
  if (r[kMarkEntry] != 0 && mark == kMarkEntry) return;  // a later work tile of a grid-strided CTA
  r[mark] = t;
  if (mark == kMarkExit) {
    unsigned smid;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
    r[7] = smid;
  }
}
#endif
#define NATTEN_SM80_TRACE_MARK(buf, mark) trace_mark(buf, mark)
#define NATTEN_SM80_TRACE_DELAY(buf) trace_delay(buf)
#else
#define NATTEN_SM80_TRACE_FIELD
#define NATTEN_SM80_TRACE_MARK(buf, mark)
#define NATTEN_SM80_TRACE_DELAY(buf)
#endif

}  // namespace sm80
}  // namespace natten
