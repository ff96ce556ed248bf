// Diagnostic clock trace of the SM90 backward kernels, compiled only into a build configured with
// -DNATTEN_SM90_TRACE (CMAKE_CUDA_FLAGS and CMAKE_CXX_FLAGS); a normal build has none of it.
//
// The host launchers read NATTEN_SM90_TRACE_PTR (a device address, decimal or 0x-hex) per call and
// pass it in the parameter blocks (DkdvParams::trace, DqParams::trace). The buffer is 64-bit words:
// [0] events written (atomic counter, zeroed by the caller), [1] capacity in events, then 4 words
// per event: (kind | blockIdx.x << 8 | smid << 32), start and end (%globaltimer, ns), and
// (work index & 0xffffffff) | value << 32. Kinds: TraceKind below. Events past the capacity are
// dropped (the counter still counts them).
#pragma once

#include <cstdint>
#include <cstdlib>

namespace natten {
namespace sm90 {

enum TraceKind : unsigned {
  kTraceDkdvTile = 1,  // one dK / dV work tile on consumer thread 0 (value: query-tile visits)
  kTraceDkdvCta = 2,   // a dK / dV CTA from entry to exit (value: tiles run)
  kTraceDqTile = 3,    // one dQ work tile on consumer thread 0 (value: key-tile visits)
  kTraceDqCta = 4,     // a dQ CTA from entry to exit (value: tiles run)
  kTraceTables = 5,    // a visit-table block from entry to exit (value 0)
};

#if defined(NATTEN_SM90_TRACE)
#define NATTEN_SM90_TRACE_FIELD unsigned long long* trace;

inline unsigned long long* trace_buffer_from_env() {
  const char* e = std::getenv("NATTEN_SM90_TRACE_PTR");
  return e != nullptr ? reinterpret_cast<unsigned long long*>(std::strtoull(e, nullptr, 0)) : nullptr;
}

#if defined(__CUDACC__)
__device__ __forceinline__ unsigned long long trace_now() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ void trace_event(unsigned long long* buf, unsigned kind, int64_t idx, unsigned long long t0,
                                            unsigned long long t1, unsigned value) {
  if (buf == nullptr) return;
  unsigned smid;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
  const unsigned long long e = atomicAdd(buf, 1ull);
  if (e >= buf[1]) return;
  unsigned long long* r = buf + 2 + 4 * e;
  r[0] = kind | (unsigned long long)blockIdx.x << 8 | (unsigned long long)smid << 32;
  r[1] = t0;
  r[2] = t1;
  r[3] = (unsigned long long)(idx & 0xffffffffll) | (unsigned long long)value << 32;
}
#endif
#define NATTEN_SM90_TRACE_NOW(x) const unsigned long long x = trace_now()
#define NATTEN_SM90_TRACE_EVENT(...) trace_event(__VA_ARGS__)
#else
#define NATTEN_SM90_TRACE_FIELD
#define NATTEN_SM90_TRACE_NOW(x)
#define NATTEN_SM90_TRACE_EVENT(...)
#endif

}  // namespace sm90
}  // namespace natten
