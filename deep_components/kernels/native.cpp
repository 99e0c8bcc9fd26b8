// Native CPU kernels of the towers.
//
// 1. Fused DIN attention scores:  a[b, n, r] = sum_d relu(q[b, n, d] + h[b, r, d]) * w[d]
// for the valid (suffix) history rows r >= H - len[b], 0 elsewhere, and the exact gradients
// with respect to q, h and w, without ever storing the [B, N, H, D] hidden layer.
//
// 2. The dense gradient of an embedding lookup (scatter-add of the output gradient rows), or the
// same additions into a step's running gradient buffer of the table.
//
// 3. Kendall's tau-b per request (evaluation), the same integer counts as the NumPy form.
//
// 4. Adam's step (torch.optim.Adam's single-tensor form) in one pass over value, gradient and
// moments, with the same float operations in the same order as torch's kernels, so the same
// bits: m = fma(1-b1, g - m, m) (torch's lerp), v = fma((1-b2) g, g, v b2) (mul_ then addcmul),
// d = sqrt(v) / sqrt(bc2) + eps, p = p + (-lr / bc1) m / d (addcdiv).  The square root is the
// one torch's sqrt uses, passed in as a function (MKL's vector sqrt where torch is built with
// MKL, which is not correctly rounded for every input); the Python side checks the bits against
// torch's Adam before using it.  Optionally only the rows a mask marks are updated: a row whose
// gradient and moments are zero is left unchanged by Adam, bit for bit.
//
// Built at run time by deep_components/kernels/__init__.py (g++ -O3 -march=native, loaded with
// ctypes); every function takes contiguous row-major arrays and a thread count, splits the
// requests into contiguous ranges of about equal work and runs one std::thread per range.
// The w gradient is summed per request first and then over requests in order, so results do not
// depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

namespace {

inline int64_t first_valid_row(const int64_t* len, int64_t b, int64_t H) {
  return H - std::min<int64_t>(std::max<int64_t>(len[b], 0), H);
}

// Per request, the valid history rows are transposed into hT [D, Lp] (Lp = L rounded up to
// the vector width), so each candidate's L scores accumulate as one vector over rows, d by d:
// no horizontal sums.  Each score is summed over d in order.
// acc[j] = sum_d relu(qn[d] + hT[d, j]) * w[d] for j < Lp (rows of hT are Lp long).
template <typename T>
inline void score_rows_any(const T* __restrict__ qn, const T* __restrict__ hT,
                           const T* __restrict__ w, int64_t D, int64_t Lp, T* __restrict__ acc) {
  for (int64_t j = 0; j < Lp; ++j) acc[j] = T(0);
  for (int64_t d = 0; d < D; ++d) {
    const T qd = qn[d], wd = w[d];
    const T* __restrict__ row = hT + d * Lp;
#pragma omp simd
    for (int64_t j = 0; j < Lp; ++j) {
      const T x = qd + row[j];
      acc[j] += (x > T(0) ? x : T(0)) * wd;
    }
  }
}

// The same with Lp known at compile time: the accumulators stay in registers.
template <typename T, int64_t Lp>
inline void score_rows(const T* __restrict__ qn, const T* __restrict__ hT, const T* __restrict__ w,
                       int64_t D, T* __restrict__ out) {
  T acc[Lp];
  score_rows_any(qn, hT, w, D, Lp, acc);
  for (int64_t j = 0; j < Lp; ++j) out[j] = acc[j];
}

template <typename T>
void forward_range(const T* __restrict__ q, const T* __restrict__ h, const T* __restrict__ w,
                   const int64_t* len, T* __restrict__ out, int64_t b0, int64_t b1, int64_t N,
                   int64_t H, int64_t D) {
  constexpr int64_t kWidth = 64 / sizeof(T);
  std::vector<T> hT_buf(D * ((H + kWidth - 1) / kWidth) * kWidth), acc_buf(H + kWidth);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t r0 = first_valid_row(len, b, H);
    const int64_t L = H - r0;
    const int64_t Lp = (L + kWidth - 1) / kWidth * kWidth;
    T* __restrict__ hT = hT_buf.data();
    for (int64_t d = 0; d < D; ++d) {
      for (int64_t j = 0; j < L; ++j) hT[d * Lp + j] = h[(b * H + r0 + j) * D + d];
      for (int64_t j = L; j < Lp; ++j) hT[d * Lp + j] = T(0);
    }
    for (int64_t n = 0; n < N; ++n) {
      T* __restrict__ acc = acc_buf.data();
      switch (Lp / kWidth) {       // fixed sizes keep the accumulators in registers
        case 1: score_rows<T, kWidth>(q + (b * N + n) * D, hT, w, D, acc); break;
        case 2: score_rows<T, 2 * kWidth>(q + (b * N + n) * D, hT, w, D, acc); break;
        case 3: score_rows<T, 3 * kWidth>(q + (b * N + n) * D, hT, w, D, acc); break;
        case 4: score_rows<T, 4 * kWidth>(q + (b * N + n) * D, hT, w, D, acc); break;
        default: score_rows_any(q + (b * N + n) * D, hT, w, D, Lp, acc);
      }
      T* __restrict__ o = out + (b * N + n) * H;
      for (int64_t r = 0; r < r0; ++r) o[r] = T(0);
      for (int64_t j = 0; j < L; ++j) o[r0 + j] = acc[j];
    }
  }
}

template <typename T>
void backward_range(const T* __restrict__ q, const T* __restrict__ h, const T* __restrict__ w,
                    const int64_t* len, const T* __restrict__ g, T* __restrict__ gq,
                    T* __restrict__ gh, T* __restrict__ gw_rows, int64_t b0, int64_t b1,
                    int64_t N, int64_t H, int64_t D) {
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t r0 = first_valid_row(len, b, H);
    std::fill(gq + b * N * D, gq + (b + 1) * N * D, T(0));
    std::fill(gh + b * H * D, gh + (b + 1) * H * D, T(0));
    T* __restrict__ gwb = gw_rows + b * D;
    std::fill(gwb, gwb + D, T(0));
    for (int64_t n = 0; n < N; ++n) {
      const T* __restrict__ qn = q + (b * N + n) * D;
      const T* __restrict__ gn = g + (b * N + n) * H;
      T* __restrict__ gqn = gq + (b * N + n) * D;
      for (int64_t r = r0; r < H; ++r) {
        const T* __restrict__ hr = h + (b * H + r) * D;
        T* __restrict__ ghr = gh + (b * H + r) * D;
        const T gr = gn[r];
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          const T x = qn[d] + hr[d];
          const bool on = x > T(0);
          const T t = on ? gr * w[d] : T(0);
          gqn[d] += t;
          ghr[d] += t;
          gwb[d] += on ? x * gr : T(0);
        }
      }
    }
  }
}

// Contiguous request ranges of about equal work (N * valid rows + a constant per request).
std::vector<int64_t> split(const int64_t* len, int64_t B, int64_t H, int threads) {
  std::vector<int64_t> cuts{0};
  if (threads <= 1 || B <= 1) {
    cuts.push_back(B);
    return cuts;
  }
  std::vector<double> cum(B + 1, 0.0);
  for (int64_t b = 0; b < B; ++b)
    cum[b + 1] = cum[b] + 1.0 + double(H - first_valid_row(len, b, H));
  for (int t = 1; t < threads; ++t) {
    const double target = cum[B] * t / threads;
    const int64_t cut = std::lower_bound(cum.begin(), cum.end(), target) - cum.begin();
    if (cut > cuts.back() && cut < B) cuts.push_back(cut);
  }
  cuts.push_back(B);
  return cuts;
}

template <typename F>
void run_ranges(const std::vector<int64_t>& cuts, F f) {
  std::vector<std::thread> pool;
  for (size_t i = 1; i + 1 < cuts.size(); ++i) pool.emplace_back(f, cuts[i], cuts[i + 1]);
  f(cuts[0], cuts[1]);
  for (auto& t : pool) t.join();
}

template <typename T>
void forward(const T* q, const T* h, const T* w, const int64_t* len, T* out, int64_t B, int64_t N,
             int64_t H, int64_t D, int threads) {
  run_ranges(split(len, B, H, threads), [=](int64_t b0, int64_t b1) {
    forward_range(q, h, w, len, out, b0, b1, N, H, D);
  });
}

template <typename T>
void backward(const T* q, const T* h, const T* w, const int64_t* len, const T* g, T* gq, T* gh,
              T* gw, T* gw_rows, int64_t B, int64_t N, int64_t H, int64_t D, int threads) {
  run_ranges(split(len, B, H, threads), [=](int64_t b0, int64_t b1) {
    backward_range(q, h, w, len, g, gq, gh, gw_rows, b0, b1, N, H, D);
  });
  std::fill(gw, gw + D, T(0));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t d = 0; d < D; ++d) gw[d] += gw_rows[b * D + d];
}

// grad_weight = 0; grad_weight[idx[i]] += grad[i] for every i in order, padding row skipped:
// the same additions in the same order as torch's CPU embedding backward, so the same bits.
// `mark` (nullable, uint8 [rows]): set to 1 on every row the gradient reaches (lazy Adam's rows).
template <typename T>
void embedding_backward(const int64_t* idx, const T* __restrict__ grad, T* __restrict__ out,
                        int64_t n, int64_t rows, int64_t dim, int64_t padding_idx, uint8_t* mark) {
  std::fill(out, out + rows * dim, T(0));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = idx[i];
    if (r == padding_idx || r < 0 || r >= rows) continue;
    if (mark) mark[r] = 1;
    T* __restrict__ o = out + r * dim;
    const T* __restrict__ g = grad + i * dim;
#pragma omp simd
    for (int64_t d = 0; d < dim; ++d) o[d] += g[d];
  }
}

// Kendall's tau-b of each row over its valid slots (NaN: fewer than two, constant scores or
// labels, or a NaN score): the integer counts of deep_components.metrics, pair by pair.
void kendall_rows(const double* s, const double* lab, const uint8_t* m, double* out, int64_t r0,
                  int64_t r1, int64_t N) {
  std::vector<int64_t> idx(N);
  for (int64_t r = r0; r < r1; ++r) {
    const double* sr = s + r * N;
    const double* lr = lab + r * N;
    int64_t nv = 0;
    bool nan = false;
    for (int64_t i = 0; i < N; ++i)
      if (m[r * N + i]) {
        idx[nv++] = i;
        nan |= sr[i] != sr[i];
      }
    int64_t S = 0, tie_s = 0, tie_l = 0;
    for (int64_t a = 0; a < nv; ++a) {
      const double si = sr[idx[a]], li = lr[idx[a]];
      for (int64_t b = a + 1; b < nv; ++b) {
        const double sj = sr[idx[b]], lj = lr[idx[b]];
        const int ds = (si > sj) - (si < sj), dl = (li > lj) - (li < lj);
        S += ds * dl;
        tie_s += ds == 0;
        tie_l += dl == 0;
      }
    }
    const int64_t n0 = nv * (nv - 1) / 2;
    const double denom = std::sqrt(double((n0 - tie_s) * (n0 - tie_l)));
    out[r] = (denom > 0 && !nan) ? double(S) / denom : std::nan("");
  }
}

// The contraction of a*b+c into one fma is spelled out where torch's kernels have it and must
// not happen anywhere else in the Adam step.
#if defined(__clang__)
#define ADAM_NO_CONTRACT _Pragma("clang fp contract(off)")
#else
#define ADAM_NO_CONTRACT
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

typedef void (*vsqrt_fn)(int, const float*, float*, long long);
typedef int (*threads_local_fn)(int);     // MKL's mkl_set_num_threads_local
constexpr long long VML_HA = 0x2;      // MKL's high-accuracy mode, the one torch asks for
constexpr int64_t ADAM_BLOCK = 2048;   // elements per square-root call (stays in L1/L2)

struct AdamArgs {
  float w1, beta2, c2, bc2_sqrt, eps, neg_step;
};

// the moments of k elements; their new second moments also go to vcopy
inline void adam_moments(const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
                         float* __restrict__ vcopy, int64_t k, const AdamArgs& a) {
  ADAM_NO_CONTRACT
#pragma omp simd
  for (int64_t i = 0; i < k; ++i) {
    const float gi = g[i];
    m[i] = std::fma(a.w1, gi - m[i], m[i]);
    const float vi = std::fma(a.c2 * gi, gi, v[i] * a.beta2);
    v[i] = vi;
    vcopy[i] = vi == 0.0f ? 1.0f : vi;    // MKL's sqrt is slow on zeros; adam_values puts 0 back
  }
}

inline void adam_sqrt(const float* __restrict__ x, float* __restrict__ y, int64_t k, vsqrt_fn vs) {
  if (vs != nullptr) {
    vs(int(k), x, y, VML_HA);
    return;
  }
#pragma omp simd
  for (int64_t i = 0; i < k; ++i) y[i] = std::sqrt(x[i]);
}

inline void adam_values(float* __restrict__ p, const float* __restrict__ m, const float* __restrict__ v,
                        const float* __restrict__ s, int64_t k, const AdamArgs& a) {
  ADAM_NO_CONTRACT
#pragma omp simd
  for (int64_t i = 0; i < k; ++i) {
    const float root = v[i] == 0.0f ? 0.0f : s[i];         // sqrt(0) = 0
    const float d = root / a.bc2_sqrt + a.eps;
    p[i] = p[i] + a.neg_step * m[i] / d;
  }
}

// every element of [e0, e1); buf: 2 * ADAM_BLOCK floats of scratch
void adam_dense_range(float* p, const float* g, float* m, float* v, int64_t e0, int64_t e1,
                      const AdamArgs& a, vsqrt_fn vs, float* buf) {
  float* vc = buf;
  float* sq = vc + ADAM_BLOCK;
  for (int64_t o = e0; o < e1; o += ADAM_BLOCK) {
    const int64_t k = std::min(ADAM_BLOCK, e1 - o);
    adam_moments(g + o, m + o, v + o, vc, k, a);
    adam_sqrt(vc, sq, k, vs);
    adam_values(p + o, m + o, v + o, sq, k, a);
  }
}

// the rows of [r0, r1) that `mask` marks, up to ADAM_BLOCK / dim rows per square-root call
void adam_rows_range(float* p, const float* g, float* m, float* v, const uint8_t* mask, int64_t r0,
                     int64_t r1, int64_t dim, const AdamArgs& a, vsqrt_fn vs) {
  const int64_t per = std::max<int64_t>(1, ADAM_BLOCK / dim);
  std::vector<float> vc(per * dim), sq(per * dim);
  std::vector<int64_t> rows(per);
  int64_t r = r0;
  while (r < r1) {
    int64_t n = 0;
    for (; r < r1 && n < per; ++r)
      if (mask[r]) {
        rows[n] = r;
        adam_moments(g + r * dim, m + r * dim, v + r * dim, vc.data() + n * dim, dim, a);
        ++n;
      }
    if (n == 0) break;
    adam_sqrt(vc.data(), sq.data(), n * dim, vs);
    for (int64_t j = 0; j < n; ++j)
      adam_values(p + rows[j] * dim, m + rows[j] * dim, v + rows[j] * dim, sq.data() + j * dim, dim, a);
  }
}

// the rows of [r0, r1) in chunks of ADAM_CHUNK rows: a chunk that `mask` marks no row of is
// skipped, runs of the others are updated whole (for rows whose gradient and moments are zero,
// the update changes no bit, so this equals updating every row; the mask only saves the work)
void adam_chunks_range(float* p, const float* g, float* m, float* v, const uint8_t* mask,
                       int64_t r0, int64_t r1, int64_t dim, const AdamArgs& a, vsqrt_fn vs) {
  constexpr int64_t ADAM_CHUNK = 16;
  auto active = [&](int64_t c0) {
    const int64_t c1 = std::min(r1, c0 + ADAM_CHUNK);
    for (int64_t r = c0; r < c1; ++r)
      if (mask[r]) return true;
    return false;
  };
  std::vector<float> buf(2 * ADAM_BLOCK);
  int64_t run = -1;                       // first row of the current run of active chunks
  for (int64_t c = r0; c < r1; c += ADAM_CHUNK) {
    const bool on = active(c);
    if (on && run < 0) run = c;
    if (!on && run >= 0) {
      adam_dense_range(p, g, m, v, run * dim, c * dim, a, vs, buf.data());
      run = -1;
    }
  }
  if (run >= 0) adam_dense_range(p, g, m, v, run * dim, r1 * dim, a, vs, buf.data());
}

#if !defined(__clang__)
#pragma GCC pop_options
#endif

}  // namespace

extern "C" {

void kendall_tau_rows(const double* s, const double* lab, const uint8_t* m, double* out, int64_t R,
                      int64_t N, int threads) {
  std::vector<int64_t> cuts{0};
  for (int t = 1; t < threads; ++t)
    if (R * t / threads > cuts.back()) cuts.push_back(R * t / threads);
  cuts.push_back(R);
  run_ranges(cuts, [=](int64_t a, int64_t b) { kendall_rows(s, lab, m, out, a, b, N); });
}

int lcron_kernel_abi() { return 4; }

// Adam's step over a contiguous float32 tensor of `rows` x `dim` (rows = 1 for any other shape).
// `mask` (uint8 [rows]) with mask_mode 1: update the marked rows only (others keep value and
// moments: lazy Adam); mask_mode 2: the marked rows are those whose gradient or moments may be
// non-zero, the rest are skipped (the same bits as updating every row); 0: every element.
// `vsqrt` (nullable: IEEE sqrt) is the square root.
void adam_step_f32(float* p, const float* g, float* m, float* v, const uint8_t* mask, int64_t rows,
                   int64_t dim, int mask_mode, float w1, float beta2, float c2, float bc2_sqrt,
                   float eps, float neg_step, void* vsqrt, void* mkl_threads_local, int threads) {
  const AdamArgs a{w1, beta2, c2, bc2_sqrt, eps, neg_step};
  const vsqrt_fn vs = reinterpret_cast<vsqrt_fn>(vsqrt);
  const threads_local_fn local = reinterpret_cast<threads_local_fn>(mkl_threads_local);
  const int64_t n = rows * dim;
  if (mask == nullptr) mask_mode = 0;
  const int t = int(std::max<int64_t>(1, std::min<int64_t>(threads, n / (4 * ADAM_BLOCK))));
  std::vector<int64_t> cuts{0};
  const int64_t units = mask_mode ? rows : (n + ADAM_BLOCK - 1) / ADAM_BLOCK;
  for (int i = 1; i < t; ++i) cuts.push_back(units * i / t / 64 * 64);
  cuts.push_back(units);
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  if (cuts.size() < 2) return;
  run_ranges(cuts, [=](int64_t a0, int64_t a1) {
    // one MKL thread per range: MKL's own threads inside every small sqrt call, from several
    // ranges at once, cost more than the whole step
    const int before = local ? local(1) : 0;
    if (mask_mode == 1)
      adam_rows_range(p, g, m, v, mask, a0, a1, dim, a, vs);
    else if (mask_mode == 2)
      adam_chunks_range(p, g, m, v, mask, a0, a1, dim, a, vs);
    else {
      std::vector<float> buf(2 * ADAM_BLOCK);
      adam_dense_range(p, g, m, v, a0 * ADAM_BLOCK, std::min(n, a1 * ADAM_BLOCK), a, vs, buf.data());
    }
    if (local) local(before);
  });
}

void pair_attention_forward_f32(const float* q, const float* h, const float* w, const int64_t* len,
                                float* out, int64_t B, int64_t N, int64_t H, int64_t D,
                                int threads) {
  forward(q, h, w, len, out, B, N, H, D, threads);
}

void pair_attention_forward_f64(const double* q, const double* h, const double* w,
                                const int64_t* len, double* out, int64_t B, int64_t N, int64_t H,
                                int64_t D, int threads) {
  forward(q, h, w, len, out, B, N, H, D, threads);
}

void pair_attention_backward_f32(const float* q, const float* h, const float* w,
                                 const int64_t* len, const float* g, float* gq, float* gh,
                                 float* gw, float* gw_rows, int64_t B, int64_t N, int64_t H,
                                 int64_t D, int threads) {
  backward(q, h, w, len, g, gq, gh, gw, gw_rows, B, N, H, D, threads);
}

void pair_attention_backward_f64(const double* q, const double* h, const double* w,
                                 const int64_t* len, const double* g, double* gq, double* gh,
                                 double* gw, double* gw_rows, int64_t B, int64_t N, int64_t H,
                                 int64_t D, int threads) {
  backward(q, h, w, len, g, gq, gh, gw, gw_rows, B, N, H, D, threads);
}

}  // extern "C"

extern "C" {

void embedding_backward_f32(const int64_t* idx, const float* grad, float* out, int64_t n,
                            int64_t rows, int64_t dim, int64_t padding_idx, uint8_t* mark) {
  embedding_backward(idx, grad, out, n, rows, dim, padding_idx, mark);
}

void embedding_backward_f64(const int64_t* idx, const double* grad, double* out, int64_t n,
                            int64_t rows, int64_t dim, int64_t padding_idx, uint8_t* mark) {
  embedding_backward(idx, grad, out, n, rows, dim, padding_idx, mark);
}

// The same gradient added into a table-sized buffer `acc` that holds the sum of the step's
// earlier lookups of this table (zero where none), without a dense pass: as torch adds a
// second lookup's whole gradient to the first's.  The first lookup of a step (first != 0) adds
// its rows straight into `acc` (zero there: the same additions as a zero-filled gradient).  A
// later one sums its rows in order into a scratch row per distinct row first (`slot`, int32
// [rows], -1 everywhere before and after), then adds each sum to `acc`.  Threads own contiguous
// row ranges and each visits every id in order, so every row's additions keep their order.
void embedding_backward_add_f32(const int64_t* idx, const float* grad, float* acc, int32_t* slot,
                                uint8_t* mark, int64_t n, int64_t rows, int64_t dim,
                                int64_t padding_idx, int first, int threads) {
  constexpr int64_t AHEAD = 16;            // prefetch distance (rows are random: latency-bound)
  const int t = int(std::max<int64_t>(1, std::min<int64_t>(threads, n / 4096)));
  std::vector<int64_t> cuts{0};
  for (int i = 1; i < t; ++i) cuts.push_back(rows * i / t);
  cuts.push_back(rows);
  run_ranges(cuts, [=](int64_t lo, int64_t hi) {
    auto mine = [&](int64_t r) { return r >= lo && r < hi && r != padding_idx; };
    if (first) {
      for (int64_t i = 0; i < n; ++i) {
        if (i + AHEAD < n && mine(idx[i + AHEAD])) __builtin_prefetch(acc + idx[i + AHEAD] * dim, 1);
        const int64_t r = idx[i];
        if (!mine(r)) continue;
        if (mark) mark[r] = 1;
        float* __restrict__ o = acc + r * dim;
        const float* __restrict__ g = grad + i * dim;
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d) o[d] += g[d];
      }
      return;
    }
    std::vector<float> sums;
    std::vector<int64_t> order;
    for (int64_t i = 0; i < n; ++i) {
      if (i + AHEAD < n && mine(idx[i + AHEAD])) __builtin_prefetch(slot + idx[i + AHEAD], 1);
      const int64_t r = idx[i];
      if (!mine(r)) continue;
      if (mark) mark[r] = 1;
      if (slot[r] < 0) {
        slot[r] = int32_t(order.size());
        order.push_back(r);
        sums.resize(sums.size() + dim, 0.0f);
      }
      float* __restrict__ o = sums.data() + int64_t(slot[r]) * dim;
      const float* __restrict__ g = grad + i * dim;
#pragma omp simd
      for (int64_t d = 0; d < dim; ++d) o[d] += g[d];
    }
    for (size_t k = 0; k < order.size(); ++k) {
      if (k + AHEAD < order.size()) __builtin_prefetch(acc + order[k + AHEAD] * dim, 1);
      float* __restrict__ o = acc + order[k] * dim;
      const float* __restrict__ g = sums.data() + int64_t(k) * dim;
#pragma omp simd
      for (int64_t d = 0; d < dim; ++d) o[d] += g[d];
      slot[order[k]] = -1;
    }
  });
}

}  // extern "C"
