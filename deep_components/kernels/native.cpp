// Native CPU kernels of the towers.
//
// 1. Fused DIN attention scores:  a[b, n, r] = sum_d relu(q[b, n, d] + h[b, r, d]) * w[d]
// for the valid (suffix) history rows r >= H - len[b], 0 elsewhere, and the exact gradients
// with respect to q, h and w, without ever storing the [B, N, H, D] hidden layer.
//
// 2. The dense gradient of an embedding lookup (scatter-add of the output gradient rows).
//
// 3. Kendall's tau-b per request (evaluation), the same integer counts as the NumPy form.
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
template <typename T>
void embedding_backward(const int64_t* idx, const T* __restrict__ grad, T* __restrict__ out,
                        int64_t n, int64_t rows, int64_t dim, int64_t padding_idx) {
  std::fill(out, out + rows * dim, T(0));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = idx[i];
    if (r == padding_idx || r < 0 || r >= rows) continue;
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

int lcron_kernel_abi() { return 3; }

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
                            int64_t rows, int64_t dim, int64_t padding_idx) {
  embedding_backward(idx, grad, out, n, rows, dim, padding_idx);
}

void embedding_backward_f64(const int64_t* idx, const double* grad, double* out, int64_t n,
                            int64_t rows, int64_t dim, int64_t padding_idx) {
  embedding_backward(idx, grad, out, n, rows, dim, padding_idx);
}

}  // extern "C"
