// Causal self-attention on the CPU in fp32, forward and backward, skipping the keys a query
// cannot see. See `olmolab/kernels/causal_attention.py` ("Tiled") for why and what it pays.
//
// The queries go in tiles of `tile` rows. A tile's scores against every key up to its last
// query are one matrix product (MKL's sgemm, which PyTorch's wheel exports), softmaxed row by row
// while the (tile x keys) block is in cache, then multiplied by the values: the keys after a tile
// are never touched. PyTorch's own CPU flash kernel takes keys in blocks of 512, so below 512
// tokens it computes the whole (T x T) square and masks half of it away.
//
// The backward recomputes each tile's probabilities from the forward's log-sum-exps (as flash
// attention does) and accumulates the keys' and values' gradients per (batch, head), so that no
// two threads ever write the same row.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

extern "C" void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                       const int*, const float*, const int*, const float*, float*, const int*);

namespace {

// Column-major C (m x n) = alpha op(A) op(B) + beta C, as BLAS has it. A row-major (r x c) matrix
// with leading dimension ld is a column-major (c x r) one, which is how every call below reads.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const char TA = ta ? 'T' : 'N', TB = tb ? 'T' : 'N';
  const int M = m, N = n, K = k, LDA = lda, LDB = ldb, LDC = ldc;
  sgemm_(&TA, &TB, &M, &N, &K, &alpha, a, &LDA, b, &LDB, &beta, c, &LDC);
}

typedef float v8f __attribute__((vector_size(32), aligned(4)));
typedef int v8i __attribute__((vector_size(32), aligned(4)));

inline v8f load8(const float* p) { return *reinterpret_cast<const v8f*>(p); }
inline void store8(float* p, v8f v) { *reinterpret_cast<v8f*>(p) = v; }

// exp(x) for x <= 0, eight at a time, to about 1 ulp (Cephes' expf): x = n ln2 + r with
// |r| <= ln2 / 2, e^r by a degree-7 polynomial, 2^n put into the exponent bits.
inline v8f exp8(v8f x) {
  const v8f lowest = x - x - 87.f;  // below, 2^n would leave the normal floats
  x = x < lowest ? lowest : x;
  const v8f t = x * 1.4426950408889634f + 0.5f;
  v8i n = __builtin_convertvector(t, v8i);  // toward zero
  v8f fn = __builtin_convertvector(n, v8f);
  const v8i above = fn > t;  // -1 where that rounded up: floor(t) is one less
  n += above;
  fn += __builtin_convertvector(above, v8f);
  const v8f r = x - fn * 0.693359375f + fn * 2.12194440e-4f;  // ln2 in two parts
  v8f p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  return (v8f)((v8i)p + (n << 23));
}

// s[0:n] <- exp(s - max(s[0:n])); returns the max and the sum of the exponentials.
void exp_minus_max(float* s, int64_t n, float& max_out, float& sum_out) {
  const int64_t n8 = n & ~int64_t(7);
  float mx = -INFINITY;
  if (n8) {
    v8f m = load8(s);
    for (int64_t j = 8; j < n8; j += 8) {
      const v8f a = load8(s + j);
      m = a > m ? a : m;
    }
    for (int k = 0; k < 8; ++k) mx = std::max(mx, m[k]);
  }
  for (int64_t j = n8; j < n; ++j) mx = std::max(mx, s[j]);
  v8f acc = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t j = 0; j < n8; j += 8) {
    const v8f p = exp8(load8(s + j) - mx);
    store8(s + j, p);
    acc += p;
  }
  float sum = 0.f;
  for (int k = 0; k < 8; ++k) sum += acc[k];
  for (int64_t j = n8; j < n; ++j) sum += (s[j] = std::exp(s[j] - mx));
  max_out = mx;
  sum_out = sum;
}

// p[0:n] <- exp(p - c)
void exp_minus(float* p, int64_t n, float c) {
  const int64_t n8 = n & ~int64_t(7);
  for (int64_t j = 0; j < n8; j += 8) store8(p + j, exp8(load8(p + j) - c));
  for (int64_t j = n8; j < n; ++j) p[j] = std::exp(p[j] - c);
}

// d[0:n] <- p * (d - c): the softmax's backward for a row whose output gradient dotted with its
// output is c.
void softmax_grad(float* d, const float* p, int64_t n, float c) {
  const int64_t n8 = n & ~int64_t(7);
  for (int64_t j = 0; j < n8; j += 8) store8(d + j, load8(p + j) * (load8(d + j) - c));
  for (int64_t j = n8; j < n; ++j) d[j] = p[j] * (d[j] - c);
}

struct Strides {  // of a (B, H, T, D) tensor whose last dimension is contiguous
  int64_t b, h, t;
  explicit Strides(const at::Tensor& x) : b(x.stride(0)), h(x.stride(1)), t(x.stride(2)) {}
  int64_t at(int64_t bi, int64_t hi, int64_t ti) const { return bi * b + hi * h + ti * t; }
};

// (B, H, T, D) laid out as (B, T, H, D), the layout the model's output projection reads.
at::Tensor empty_bthd(const at::Tensor& like) {
  return at::empty({like.size(0), like.size(2), like.size(1), like.size(3)}, like.options()).transpose(1, 2);
}

void check(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4 && x.stride(3) == 1,
              name, ": a CPU fp32 (B, H, T, D) tensor with a contiguous last dimension is needed");
}

}  // namespace

// softmax(q k^T / sqrt(D) + causal mask) v and each query's log-sum-exp of its scores.
// q, k, v: (B, H, T, D). Returns out (B, H, T, D), a view of (B, T, H, D) memory, and lse (B, H, T).
std::vector<at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t tile) {
  check(q, "q"), check(k, "k"), check(v, "v");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), "q, k and v must have one shape");
  auto out = empty_bthd(q);
  auto lse = at::empty({B, H, T}, q.options());
  const float scale = 1.f / std::sqrt(float(D));
  const int64_t tiles = (T + tile - 1) / tile;
  const Strides qs(q), ks(k), vs(v), os(out);
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  float *op = out.data_ptr<float>(), *lp = lse.data_ptr<float>();
  at::parallel_for(0, B * H * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(tile * T), inverse_sum(tile);
    for (int64_t w = begin; w < end; ++w) {
      const int64_t bh = w / tiles, b = bh / H, h = bh % H, i = w % tiles;
      const int64_t m0 = i * tile, rows = std::min(tile, T - m0), keys = m0 + rows;
      const float *Q = qp + qs.at(b, h, m0), *K = kp + ks.at(b, h, 0), *V = vp + vs.at(b, h, 0);
      float *O = op + os.at(b, h, m0), *L = lp + bh * T + m0;
      float* S = scores.data();  // (rows x keys), row-major
      gemm(true, false, keys, rows, D, scale, K, ks.t, Q, qs.t, 0.f, S, keys);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t seen = m0 + r + 1;
        float mx, sum;
        exp_minus_max(S + r * keys, seen, mx, sum);
        std::fill(S + r * keys + seen, S + (r + 1) * keys, 0.f);
        inverse_sum[r] = 1.f / sum;
        L[r] = mx + std::log(sum);
      }
      gemm(false, false, D, rows, keys, 1.f, V, vs.t, S, keys, 0.f, O, os.t);  // O = exp(S - max) V
      for (int64_t r = 0; r < rows; ++r)  // normalised here, D values a row rather than `keys`
        for (int64_t d = 0; d < D; ++d) O[r * os.t + d] *= inverse_sum[r];
    }
  });
  return {out, lse};
}

// The gradients of `forward` with respect to q, k and v, given its out and lse; each a view of
// (B, T, H, D) memory.
std::vector<at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, int64_t tile) {
  check(grad_out, "grad_out"), check(q, "q"), check(k, "k"), check(v, "v"), check(out, "out");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  auto dq = empty_bthd(q);
  auto dk = empty_bthd(k).zero_();
  auto dv = empty_bthd(v).zero_();
  const auto lse_c = lse.contiguous();
  const float scale = 1.f / std::sqrt(float(D));
  const int64_t tiles = (T + tile - 1) / tile;
  const Strides qs(q), ks(k), vs(v), os(out), gs(grad_out), dqs(dq), dks(dk), dvs(dv);
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const float *op = out.data_ptr<float>(), *gp = grad_out.data_ptr<float>(), *lp = lse_c.data_ptr<float>();
  float *dqp = dq.data_ptr<float>(), *dkp = dk.data_ptr<float>(), *dvp = dv.data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> probs(tile * T), grads(tile * T), out_dot_grad(tile);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const float *K = kp + ks.at(b, h, 0), *V = vp + vs.at(b, h, 0);
      float *dK = dkp + dks.at(b, h, 0), *dV = dvp + dvs.at(b, h, 0);
      for (int64_t i = 0; i < tiles; ++i) {
        const int64_t m0 = i * tile, rows = std::min(tile, T - m0), keys = m0 + rows;
        const float *Q = qp + qs.at(b, h, m0), *O = op + os.at(b, h, m0), *dO = gp + gs.at(b, h, m0);
        const float* L = lp + bh * T + m0;
        float* dQ = dqp + dqs.at(b, h, m0);
        float *P = probs.data(), *dS = grads.data();  // (rows x keys), row-major
        gemm(true, false, keys, rows, D, scale, K, ks.t, Q, qs.t, 0.f, P, keys);  // the scores again
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t seen = m0 + r + 1;
          exp_minus(P + r * keys, seen, L[r]);  // the probabilities
          std::fill(P + r * keys + seen, P + (r + 1) * keys, 0.f);
          float dot = 0.f;
          for (int64_t d = 0; d < D; ++d) dot += dO[r * gs.t + d] * O[r * os.t + d];
          out_dot_grad[r] = dot;
        }
        gemm(false, true, D, keys, rows, 1.f, dO, gs.t, P, keys, 1.f, dV, dvs.t);  // dV += P^T dO
        gemm(true, false, keys, rows, D, 1.f, V, vs.t, dO, gs.t, 0.f, dS, keys);  // dP = dO V^T
        for (int64_t r = 0; r < rows; ++r) {  // dS = P (dP - rowsum(dO O)); zero where P is
          const int64_t seen = m0 + r + 1;
          softmax_grad(dS + r * keys, P + r * keys, seen, out_dot_grad[r]);
          std::fill(dS + r * keys + seen, dS + (r + 1) * keys, 0.f);
        }
        gemm(false, false, D, rows, keys, scale, K, ks.t, dS, keys, 0.f, dQ, dqs.t);  // dQ = dS K
        gemm(false, true, D, keys, rows, scale, Q, qs.t, dS, keys, 1.f, dK, dks.t);  // dK += dS^T Q
      }
    }
  });
  return {dq, dk, dv};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "tiled causal attention, fp32 CPU: (out, lse)");
  m.def("backward", &backward, "its gradients: (dq, dk, dv)");
}
