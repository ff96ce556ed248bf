// Host-only check (runs on the CPU, compiled by nvcc with the CUTLASS/CuTe headers) of the CuTe
// plumbing of the SM80 FNA forward kernel, for every compiled head-dim bucket:
//  * acc_rowcol: rows constant along a row of the view, columns constant along a column, the 4
//    threads of a quad own the same rows (quad shuffles), every S / O element owned exactly once,
//    and O rows == S rows per thread (the softmax correction of row mi applies to O row mi);
//  * acc_as_a_operand: the S accumulator reinterpreted as the A operand of O += P V holds, element
//    by element, the (query, key) coordinates that the MMA expects for A;
//  * smem -> register copies (ldmatrix, incl. the transposed V one): the destination side of the
//    tiled copy (which tile element lands in which thread / register) equals the MMA partition of
//    Q, K and V^T (the source side is ldmatrix's cooperative row-address layout);
//  * the epilogue's register -> smem staging writes element (row, col) to layout_q(row, col);
//  * the gmem <-> smem box copies' constant-offset rule (layout linear in whole atoms);
//  * gemm_slice_b_by_block's assignment of B-fragment MMA blocks to ldmatrix copy blocks (the
//    traits that use it: 32 rows per warp; its contiguous-offset rule does not hold for the V
//    fragment at head dim 32, which keeps the whole-slice loads);
//  and the same for the 128-token query tiles on 4 warps of 32 rows.
// Build: nvcc -std=c++17 --expt-relaxed-constexpr -I<cutlass>/include -Icsrc/include
//        -Icsrc/kernels/sm80 tests/sm80_layout_test.cu -o sm80_layout_test
#include <cstdio>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "kernel_traits.cuh"
#include "utils.cuh"

#include "cpu_check.hpp"

using namespace cute;
using namespace natten::sm80;

template <class Coord>
static std::pair<int, int> rc(Coord const& c) {
  return {int(get<0>(c)), int(get<1>(c))};
}

// gemm_slice_b_by_block (mainloop.cuh, 32 rows per warp): for every slice kk, the MMA blocks n of
// the B fragment that mma_block_in_copy_block assigns to copy block cb hold exactly registers that
// copy block cb of slice kk writes, and every MMA block belongs to exactly one copy block (so every
// MMA runs once, after its fragment was loaded).
template <class Frag, class View>
static void check_b_blocks(Frag const& frag, View const& view, const char* what, int D, int t) {
  CHECK(size<2>(frag) == size<2>(view), "%s k slices D=%d", what, D);
  for (int kk = 0; kk < size<2>(frag); ++kk) {
    std::set<int> all;
    for (int n = 0; n < size<1>(frag); ++n) {
      int owners = 0;
      for (int cb = 0; cb < size<1>(view); ++cb) {
        if (!mma_block_in_copy_block(frag.layout(), n, view.layout(), cb)) continue;
        ++owners;
        std::set<int> written;
        for (int v = 0; v < size<0>(view); ++v) written.insert(int(view.layout()(v, cb, kk)));
        for (int v = 0; v < size<0>(frag); ++v)
          CHECK(written.count(int(frag.layout()(v, n, kk))) == 1, "%s block %d in copy block %d D=%d t=%d kk=%d", what,
                n, cb, D, t, kk);
      }
      CHECK(owners == 1, "%s block %d has %d copy blocks D=%d t=%d", what, n, owners, D, t);
      for (int v = 0; v < size<0>(frag); ++v) all.insert(int(frag.layout()(v, n, kk)));
    }
    CHECK(int(all.size()) == int(size<0>(frag) * size<1>(frag)), "%s slice coverage D=%d", what, D);
  }
}

template <class T>
static void check_traits() {
  using Element = typename T::Element;
  constexpr int D = T::kDim;
  constexpr int TQ = T::kTileQ, TK = T::kTileKV;
  typename T::TiledMma mma;
  typename T::SmemLayoutQ lq;
  typename T::SmemLayoutKV lkv;

  std::map<std::pair<int, int>, int> s_owner, o_owner;
  std::vector<std::vector<int>> rows_of(T::kThreads);
  for (int t = 0; t < T::kThreads; ++t) {
    auto thr = mma.get_thread_slice(t);
    // --- S accumulator coordinates
    Tensor cS = make_identity_tensor(Shape<Int<TQ>, Int<TK>>{});
    Tensor tScS = thr.partition_C(cS);
    Tensor s_rc = make_tensor(tScS.data(), acc_rowcol(tScS.layout()));
    for (int mi = 0; mi < size<0>(s_rc); ++mi) {
      rows_of[t].push_back(rc(s_rc(mi, 0)).first);
      for (int ni = 0; ni < size<1>(s_rc); ++ni) {
        auto c = rc(s_rc(mi, ni));
        CHECK(c.first == rc(s_rc(mi, 0)).first, "row constant D=%d t=%d", D, t);
        CHECK(c.second == rc(s_rc(0, ni)).second, "col constant D=%d t=%d", D, t);
        CHECK(c.second - rc(s_rc(0, 0)).second >= 0 && c.second - rc(s_rc(0, 0)).second < 64, "bit range");
        s_owner[c]++;
      }
    }
    // --- O accumulator: same rows as S per mi
    Tensor cO = make_identity_tensor(Shape<Int<TQ>, Int<D>>{});
    Tensor tOcO = thr.partition_C(cO);
    Tensor o_rc = make_tensor(tOcO.data(), acc_rowcol(tOcO.layout()));
    CHECK(size<0>(o_rc) == size<0>(s_rc), "row count");
    for (int mi = 0; mi < size<0>(o_rc); ++mi)
      for (int nj = 0; nj < size<1>(o_rc); ++nj) {
        auto c = rc(o_rc(mi, nj));
        CHECK(c.first == rc(s_rc(mi, 0)).first, "O row == S row D=%d t=%d mi=%d", D, t, mi);
        o_owner[c]++;
      }
    // --- P as A operand
    Tensor pA = make_tensor(tScS.data(), acc_as_a_operand(tScS.layout()));
    Tensor cP = make_identity_tensor(Shape<Int<TQ>, Int<TK>>{});
    Tensor tAcP = thr.partition_A(cP);
    CHECK(size(pA) == size(tAcP), "P size");
    CHECK(size<1>(pA) == size<1>(tAcP) && size<2>(pA) == size<2>(tAcP), "P modes");
    for (int k = 0; k < size<2>(tAcP); ++k)
      for (int m = 0; m < size<1>(tAcP); ++m)
        for (int v = 0; v < size<0>(tAcP); ++v)
          CHECK(rc(pA(v, m, k)) == rc(tAcP(v, m, k)), "P as A D=%d t=%d v=%d m=%d k=%d", D, t, v, m, k);
    // --- smem -> register copies vs MMA partitions (coordinates)
    {
      auto cq = make_tiled_copy_A(typename T::SmemCopyAtom{}, mma).get_thread_slice(t);
      Tensor id = make_identity_tensor(Shape<Int<TQ>, Int<D>>{});
      Tensor src = cq.partition_D(id);
      Tensor dst = cq.retile_D(thr.partition_A(id));
      CHECK(size(src) == size(dst), "Q copy size");
      for (int i = 0; i < size(src); ++i) CHECK(rc(src(i)) == rc(dst(i)), "Q copy D=%d t=%d i=%d", D, t, i);
    }
    {
      auto ck = make_tiled_copy_B(typename T::SmemCopyAtom{}, mma).get_thread_slice(t);
      Tensor id = make_identity_tensor(Shape<Int<TK>, Int<D>>{});
      Tensor src = ck.partition_D(id);
      Tensor dst = ck.retile_D(thr.partition_B(id));
      CHECK(size(src) == size(dst), "K copy size");
      for (int i = 0; i < size(src); ++i) CHECK(rc(src(i)) == rc(dst(i)), "K copy D=%d t=%d i=%d", D, t, i);
      Tensor frag = thr.partition_fragment_B(make_tensor(make_smem_ptr((Element*)nullptr), lkv));
      if constexpr (T::kRows32) check_b_blocks(frag, ck.retile_D(frag), "K", D, t);  // gemm_slice_b_by_block
    }
    {
      auto cv = make_tiled_copy_B(typename T::SmemCopyAtomT{}, mma).get_thread_slice(t);
      Tensor id = make_identity_tensor(Shape<Int<D>, Int<TK>>{});  // (dim, key)
      Tensor src = cv.partition_D(id);
      Tensor dst = cv.retile_D(thr.partition_B(id));
      CHECK(size(src) == size(dst), "V copy size");
      for (int i = 0; i < size(src); ++i) CHECK(rc(src(i)) == rc(dst(i)), "V copy D=%d t=%d i=%d", D, t, i);
      // the register fragment built from the swizzled smem view has the plain shape
      Tensor sVt = make_tensor(make_smem_ptr((Element*)nullptr), typename T::SmemLayoutVt{});
      Tensor frag = thr.partition_fragment_B(sVt);
      Tensor ref = thr.partition_B(id);
      CHECK(size(frag) == size(ref) && size<1>(frag) == size<1>(ref) && size<2>(frag) == size<2>(ref), "Vt frag");
      if constexpr (T::kRows32) check_b_blocks(frag, cv.retile_D(frag), "V", D, t);
      // V^T view: element (d, j) of sVt is element (j, d) of sV
      for (int d = 0; d < D; d += 7)
        for (int j = 0; j < TK; ++j) CHECK(typename T::SmemLayoutVt{}(d, j) == lkv(j, d), "Vt view");
    }
    // --- epilogue staging: element i of the O fragment goes to layout_q(row, col)
    {
      Tensor sO = make_tensor(make_smem_ptr((Element*)nullptr), lq);
      Tensor tOsO = thr.partition_C(sO);
      CHECK(size(tOsO) == size(tOcO), "O staging size");
      for (int i = 0; i < size(tOsO); ++i) {
        auto c = rc(tOcO(i));
        CHECK(&tOsO(i) - (Element*)nullptr == lq(c.first, c.second), "O staging D=%d t=%d i=%d", D, t, i);
      }
    }
  }
  // quads share rows
  for (int t = 0; t < T::kThreads; ++t) {
    CHECK(rows_of[t] == rows_of[t ^ 1] && rows_of[t] == rows_of[t ^ 2], "quad rows D=%d t=%d", D, t);
  }
  CHECK(int(s_owner.size()) == TQ * TK, "S coverage");
  for (auto& kv : s_owner) CHECK(kv.second == 1, "S owned once");
  CHECK(int(o_owner.size()) == TQ * D, "O coverage");
  for (auto& kv : o_owner) CHECK(kv.second == 1, "O owned once");

  // --- gmem <-> smem box copy offsets (utils.cuh): layout(r0 + pass * kRpp, c0 + j * kTpr * 8) ==
  //     layout(r0, c0) + layout(pass * kRpp, j * kTpr * 8); 8-element chunks contiguous; every
  //     (row, chunk) of a tile covered exactly once.
  constexpr int kTpr = T::kThreadsPerRow, kRpp = T::kRowsPerPass, kCpt = T::kChunksPerThread;
  std::set<std::pair<int, int>> covered;
  for (int t = 0; t < T::kThreads; ++t) {
    const int r0 = t / kTpr, c0 = (t % kTpr) * 8;
    for (int pass = 0; pass < TK / kRpp; ++pass)
      for (int j = 0; j < kCpt; ++j) {
        const int r = r0 + pass * kRpp, c = c0 + j * kTpr * 8;
        CHECK(lkv(r, c) == lkv(r0, c0) + lkv(pass * kRpp, j * kTpr * 8), "copy offset D=%d", D);
        CHECK(int(lq(r, c)) == int(lq(r0, c0)) + int(lq(pass * kRpp, j * kTpr * 8)), "copy offset Q");
        for (int e = 0; e < 8; ++e) CHECK(lkv(r, c + e) == lkv(r, c) + e, "chunk contiguous");
        CHECK(lkv(r, c) % 8 == 0, "chunk 16B aligned");
        covered.insert({r, c});
      }
  }
  CHECK(int(covered.size()) == TK * D / 8, "copy coverage D=%d", D);
  std::printf("D=%d, %d x %d tiles on %d warps (%s): checked\n", D, TQ, TK, T::kWarps,
              sizeof(Element) == 2 ? "16-bit" : "?");
}

int main() {
  check_traits<FnaForwardTraits<cutlass::half_t, 32>>();
  check_traits<FnaForwardTraits<cutlass::half_t, 64>>();
  check_traits<FnaForwardTraits<cutlass::half_t, 128>>();
  check_traits<FnaForwardTraits<cutlass::half_t, 256>>();
  check_traits<FnaForwardTraits<cutlass::bfloat16_t, 128>>();
  // 128-token query tiles on 4 warps of 32 rows (the forward's q128 kernels, head dim 128)
  check_traits<FnaForwardTraits<cutlass::half_t, 128, 128, 64, 4>>();
  check_traits<FnaForwardTraits<cutlass::bfloat16_t, 128, 128, 64, 4>>();
  if (g_failures) {
    std::printf("FAILED (%ld)\n", g_failures);
    return 1;
  }
  std::printf("OK\n");
  return 0;
}
