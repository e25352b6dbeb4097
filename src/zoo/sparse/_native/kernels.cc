// zoo.sparse's CPU kernels, called from JAX through XLA's typed FFI (`jax.ffi.ffi_call`).
//
// Each kernel moves whole rows of a table: a row is contiguous, so it is copied, added or
// updated with vector instructions (the compiler vectorises the inner loops at -O3), and the
// rows of the next few ids are prefetched while one is worked on, since random rows of a large
// table come from DRAM. The kernels that write the table (or an optimizer's per-row state)
// write it in place: JAX aliases their output to that operand (`input_output_aliases`).
//
// Ids outside [0, rows) are skipped by the writers and read as zeros by the gather: zoo.sparse
// pads coalesced ids with the sentinel `rows`, and Embedding has refused invalid ids before.
// Every kernel runs its ids in order on one thread: duplicate ids then add up in the order XLA's
// scatter-add uses, so the results equal the pure-JAX path's bit for bit (compiled with
// -ffp-contract=off, so that no multiply-add is fused into one rounding).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kAhead = 8;  // ids prefetched ahead: a few DRAM latencies' worth of rows

inline int64_t Rows(const ffi::AnyBuffer& b) {
  auto d = b.dimensions();
  return d.size() == 0 ? 1 : d[0];
}

inline int64_t RowElements(const ffi::AnyBuffer& b) {
  int64_t rows = Rows(b);
  return rows == 0 ? 0 : static_cast<int64_t>(b.element_count()) / rows;
}

inline void Prefetch(const char* row, int64_t bytes, int write) {
  for (int64_t b = 0; b < bytes; b += 64) {
    if (write) {
      __builtin_prefetch(row + b, 1, 3);
    } else {
      __builtin_prefetch(row + b, 0, 3);
    }
  }
}

inline bool Valid(int32_t id, int64_t rows) { return id >= 0 && id < rows; }

inline void PrefetchAhead(const int32_t* ids, int64_t i, int64_t n, const char* base,
                          int64_t rows, int64_t row_bytes, int write) {
  if (i + kAhead < n && Valid(ids[i + kAhead], rows)) {
    Prefetch(base + ids[i + kAhead] * row_bytes, row_bytes, write);
  }
}

// Rows of kBytes bytes (kBytes > 0: known when compiling, so each copy is a few vector moves).
template <int64_t kBytes>
void Gather(const char* src, char* dst, const int32_t* id, int64_t n, int64_t rows,
            int64_t bytes_arg) {
  const int64_t row_bytes = kBytes > 0 ? kBytes : bytes_arg;
  for (int64_t i = 0; i < n; ++i) {
    PrefetchAhead(id, i, n, src, rows, row_bytes, 0);
    if (Valid(id[i], rows)) {
      std::memcpy(dst + i * row_bytes, src + id[i] * row_bytes, row_bytes);
    } else {
      std::memset(dst + i * row_bytes, 0, row_bytes);
    }
  }
}

// out[i] = table[ids[i]], zeros where ids[i] is out of range.
ffi::Error GatherRowsImpl(ffi::AnyBuffer table, ffi::Buffer<ffi::S32> ids,
                          ffi::Result<ffi::AnyBuffer> out) {
  const int64_t rows = Rows(table);
  const int64_t row_bytes = static_cast<int64_t>(table.size_bytes()) / (rows ? rows : 1);
  const char* src = static_cast<const char*>(table.untyped_data());
  char* dst = static_cast<char*>(out->untyped_data());
  const int32_t* id = ids.typed_data();
  const int64_t n = static_cast<int64_t>(ids.element_count());
  if (row_bytes == 256) {
    Gather<256>(src, dst, id, n, rows, row_bytes);
  } else if (row_bytes == 128) {
    Gather<128>(src, dst, id, n, rows, row_bytes);
  } else if (row_bytes == 512) {
    Gather<512>(src, dst, id, n, rows, row_bytes);
  } else {
    Gather<0>(src, dst, id, n, rows, row_bytes);
  }
  return ffi::Error::Success();
}

// table[ids[i]] = values[i], in place; out-of-range ids are dropped.
ffi::Error ScatterRowsImpl(ffi::AnyBuffer table, ffi::Buffer<ffi::S32> ids,
                           ffi::AnyBuffer values, ffi::Result<ffi::AnyBuffer> out) {
  const int64_t rows = Rows(*out);
  const int64_t row_bytes = static_cast<int64_t>(out->size_bytes()) / (rows ? rows : 1);
  char* dst = static_cast<char*>(out->untyped_data());
  if (dst != table.untyped_data()) std::memcpy(dst, table.untyped_data(), table.size_bytes());
  const char* src = static_cast<const char*>(values.untyped_data());
  const int32_t* id = ids.typed_data();
  const int64_t n = static_cast<int64_t>(ids.element_count());
  for (int64_t i = 0; i < n; ++i) {
    PrefetchAhead(id, i, n, dst, rows, row_bytes, 1);
    if (Valid(id[i], rows)) std::memcpy(dst + id[i] * row_bytes, src + i * row_bytes, row_bytes);
  }
  return ffi::Error::Success();
}

template <typename T, int64_t kDim>
void ScatterAddFixed(T* table, int64_t rows, int64_t dim_arg, const int32_t* id, int64_t n,
                const T* values, T scale, bool scaled) {
  // kDim > 0: the row length known when compiling, so the row loops unroll and vectorise.
  const int64_t dim = kDim > 0 ? kDim : dim_arg;
  const int64_t row_bytes = dim * static_cast<int64_t>(sizeof(T));
  const char* base = reinterpret_cast<const char*>(table);
  for (int64_t i = 0; i < n; ++i) {
    PrefetchAhead(id, i, n, base, rows, row_bytes, 1);
    if (!Valid(id[i], rows)) continue;
    T* __restrict__ row = table + id[i] * dim;
    const T* __restrict__ v = values + i * dim;
    if (scaled) {
      for (int64_t d = 0; d < dim; ++d) row[d] += scale * v[d];
    } else {
      for (int64_t d = 0; d < dim; ++d) row[d] += v[d];
    }
  }
}

template <typename T>
void ScatterAdd(T* table, int64_t rows, int64_t dim, const int32_t* id, int64_t n,
                const T* values, T scale, bool scaled) {
  if (dim == 64) return ScatterAddFixed<T, 64>(table, rows, dim, id, n, values, scale, scaled);
  if (dim == 128) return ScatterAddFixed<T, 128>(table, rows, dim, id, n, values, scale, scaled);
  if (dim == 32) return ScatterAddFixed<T, 32>(table, rows, dim, id, n, values, scale, scaled);
  ScatterAddFixed<T, 0>(table, rows, dim, id, n, values, scale, scaled);
}

// table[ids[i]] += scale * values[i] in place (or += values[i] when `scaled` is false), in the
// order of the ids; out-of-range ids are dropped. float32 and float64.
ffi::Error ScatterAddRowsImpl(ffi::AnyBuffer table, ffi::Buffer<ffi::S32> ids,
                              ffi::AnyBuffer values, ffi::AnyBuffer scale,
                              ffi::Result<ffi::AnyBuffer> out, bool scaled) {
  if (out->untyped_data() != table.untyped_data()) {
    std::memcpy(out->untyped_data(), table.untyped_data(), table.size_bytes());
  }
  const int64_t rows = Rows(*out), dim = RowElements(*out);
  const int64_t n = static_cast<int64_t>(ids.element_count());
  switch (out->element_type()) {
    case ffi::DataType::F32:
      ScatterAdd(out->typed_data<float>(), rows, dim, ids.typed_data(), n,
                 values.typed_data<float>(), *scale.typed_data<float>(), scaled);
      return ffi::Error::Success();
    case ffi::DataType::F64:
      ScatterAdd(out->typed_data<double>(), rows, dim, ids.typed_data(), n,
                 values.typed_data<double>(), *scale.typed_data<double>(), scaled);
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument("zoo_scatter_add_rows: float32 or float64 tables only");
  }
}

// Row-wise Adagrad over coalesced rows (each valid id at most once), table and accumulator in
// place: acc[r] += mean_d(g[d]^2); table[r] += (-lr) * (g / (sqrt(acc[r]) + eps)). The sum of
// squares runs in 8 interleaved partial sums, so that it is vectorised: it differs from XLA's
// reduction by the order of its additions only.
template <typename T>
inline T MeanSquare(const T* __restrict__ g, int64_t dim) {
  T part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= dim; d += 8) {
    for (int k = 0; k < 8; ++k) part[k] += g[d + k] * g[d + k];
  }
  T sum = ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
  for (; d < dim; ++d) sum += g[d] * g[d];
  return sum / static_cast<T>(dim);
}

template <typename T, int64_t kDim>
void RowwiseAdagradFixed(T* table, T* acc, int64_t rows, int64_t dim_arg, const int32_t* id, int64_t n,
                    const T* grads, T neg_lr, T eps) {
  // kDim > 0: the row length known when compiling, so the row loops unroll and vectorise.
  const int64_t dim = kDim > 0 ? kDim : dim_arg;
  const int64_t row_bytes = dim * static_cast<int64_t>(sizeof(T));
  const char* base = reinterpret_cast<const char*>(table);
  for (int64_t i = 0; i < n; ++i) {
    PrefetchAhead(id, i, n, base, rows, row_bytes, 1);
    if (i + kAhead < n && Valid(id[i + kAhead], rows)) __builtin_prefetch(acc + id[i + kAhead], 1);
    if (!Valid(id[i], rows)) continue;
    const T* __restrict__ g = grads + i * dim;
    const T a = acc[id[i]] + MeanSquare(g, dim);
    acc[id[i]] = a;
    const T denom = std::sqrt(a) + eps;
    T* __restrict__ row = table + id[i] * dim;
    for (int64_t d = 0; d < dim; ++d) row[d] += neg_lr * (g[d] / denom);
  }
}

template <typename T>
void RowwiseAdagrad(T* table, T* acc, int64_t rows, int64_t dim, const int32_t* id, int64_t n,
                    const T* grads, T neg_lr, T eps) {
  if (dim == 64) return RowwiseAdagradFixed<T, 64>(table, acc, rows, dim, id, n, grads, neg_lr, eps);
  if (dim == 128) return RowwiseAdagradFixed<T, 128>(table, acc, rows, dim, id, n, grads, neg_lr, eps);
  if (dim == 32) return RowwiseAdagradFixed<T, 32>(table, acc, rows, dim, id, n, grads, neg_lr, eps);
  RowwiseAdagradFixed<T, 0>(table, acc, rows, dim, id, n, grads, neg_lr, eps);
}

ffi::Error RowwiseAdagradImpl(ffi::AnyBuffer table, ffi::AnyBuffer acc,
                              ffi::Buffer<ffi::S32> ids, ffi::AnyBuffer grads,
                              ffi::AnyBuffer neg_lr, ffi::AnyBuffer eps,
                              ffi::Result<ffi::AnyBuffer> table_out,
                              ffi::Result<ffi::AnyBuffer> acc_out) {
  if (table_out->untyped_data() != table.untyped_data() ||
      acc_out->untyped_data() != acc.untyped_data()) {
    return ffi::Error::InvalidArgument("zoo_rowwise_adagrad: outputs must alias the operands");
  }
  const int64_t rows = Rows(table), dim = RowElements(table);
  const int64_t n = static_cast<int64_t>(ids.element_count());
  switch (table.element_type()) {
    case ffi::DataType::F32:
      RowwiseAdagrad(table.typed_data<float>(), acc.typed_data<float>(), rows, dim,
                     ids.typed_data(), n, grads.typed_data<float>(), *neg_lr.typed_data<float>(), *eps.typed_data<float>());
      return ffi::Error::Success();
    case ffi::DataType::F64:
      RowwiseAdagrad(table.typed_data<double>(), acc.typed_data<double>(), rows, dim,
                     ids.typed_data(), n, grads.typed_data<double>(), *neg_lr.typed_data<double>(),
                     *eps.typed_data<double>());
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument("zoo_rowwise_adagrad: float32 or float64 tables only");
  }
}

// Lazy Adam over coalesced rows, table and moments (interleaved m, v: a complex array) in
// place: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; table += (-step) * (m / (sqrt(v) + eps)).
template <typename T, int64_t kDim>
void LazyAdamFixed(T* table, T* moments, int64_t rows, int64_t dim_arg, const int32_t* id, int64_t n,
              const T* grads, T neg_step, const T* hyper) {
  // kDim > 0: the row length known when compiling, so the row loops unroll and vectorise.
  const int64_t dim = kDim > 0 ? kDim : dim_arg;
  // b1, 1 - b1, b2, 1 - b2, eps: the differences rounded from double as JAX rounds them.
  const T b1 = hyper[0], c1 = hyper[1], b2 = hyper[2], c2 = hyper[3], eps = hyper[4];
  const int64_t row_bytes = dim * static_cast<int64_t>(sizeof(T));
  const char* base = reinterpret_cast<const char*>(table);
  const char* mbase = reinterpret_cast<const char*>(moments);
  for (int64_t i = 0; i < n; ++i) {
    PrefetchAhead(id, i, n, base, rows, row_bytes, 1);
    PrefetchAhead(id, i, n, mbase, rows, 2 * row_bytes, 1);
    if (!Valid(id[i], rows)) continue;
    const T* __restrict__ g = grads + i * dim;
    T* __restrict__ mv = moments + 2 * id[i] * dim;
    T* __restrict__ row = table + id[i] * dim;
    for (int64_t d = 0; d < dim; ++d) {
      const T m = b1 * mv[2 * d] + c1 * g[d];
      const T v = b2 * mv[2 * d + 1] + c2 * (g[d] * g[d]);
      mv[2 * d] = m;
      mv[2 * d + 1] = v;
      row[d] += neg_step * (m / (std::sqrt(v) + eps));
    }
  }
}

template <typename T>
void LazyAdam(T* table, T* moments, int64_t rows, int64_t dim, const int32_t* id, int64_t n,
              const T* grads, T neg_step, const T* hyper) {
  if (dim == 64) return LazyAdamFixed<T, 64>(table, moments, rows, dim, id, n, grads, neg_step, hyper);
  if (dim == 128) return LazyAdamFixed<T, 128>(table, moments, rows, dim, id, n, grads, neg_step, hyper);
  if (dim == 32) return LazyAdamFixed<T, 32>(table, moments, rows, dim, id, n, grads, neg_step, hyper);
  LazyAdamFixed<T, 0>(table, moments, rows, dim, id, n, grads, neg_step, hyper);
}

ffi::Error LazyAdamImpl(ffi::AnyBuffer table, ffi::AnyBuffer moments, ffi::Buffer<ffi::S32> ids,
                        ffi::AnyBuffer grads, ffi::AnyBuffer neg_step, ffi::AnyBuffer hyper,
                        ffi::Result<ffi::AnyBuffer> table_out,
                        ffi::Result<ffi::AnyBuffer> moments_out) {
  if (table_out->untyped_data() != table.untyped_data() ||
      moments_out->untyped_data() != moments.untyped_data()) {
    return ffi::Error::InvalidArgument("zoo_lazy_adam: outputs must alias the operands");
  }
  const int64_t rows = Rows(table), dim = RowElements(table);
  const int64_t n = static_cast<int64_t>(ids.element_count());
  switch (table.element_type()) {
    case ffi::DataType::F32: {
      LazyAdam(table.typed_data<float>(), static_cast<float*>(moments.untyped_data()), rows,
               dim, ids.typed_data(), n, grads.typed_data<float>(),
               *neg_step.typed_data<float>(), hyper.typed_data<float>());
      return ffi::Error::Success();
    }
    case ffi::DataType::F64: {
      LazyAdam(table.typed_data<double>(), static_cast<double*>(moments.untyped_data()), rows,
               dim, ids.typed_data(), n, grads.typed_data<double>(),
               *neg_step.typed_data<double>(), hyper.typed_data<double>());
      return ffi::Error::Success();
    }
    default:
      return ffi::Error::InvalidArgument("zoo_lazy_adam: float32 or float64 tables only");
  }
}

// out = zeros; out[ids[i]] += scale * values[i], in the order of the ids: the scatter-add of a
// gradient into a fresh accumulator, without a separate pass that writes the zeros.
ffi::Error ScatterAddIntoZerosImpl(ffi::Buffer<ffi::S32> ids, ffi::AnyBuffer values,
                                   ffi::AnyBuffer scale, ffi::Result<ffi::AnyBuffer> out) {
  std::memset(out->untyped_data(), 0, out->size_bytes());
  const int64_t rows = Rows(*out), dim = RowElements(*out);
  const int64_t n = static_cast<int64_t>(ids.element_count());
  switch (out->element_type()) {
    case ffi::DataType::F32:
      ScatterAdd(out->typed_data<float>(), rows, dim, ids.typed_data(), n,
                 values.typed_data<float>(), *scale.typed_data<float>(), true);
      return ffi::Error::Success();
    case ffi::DataType::F64:
      ScatterAdd(out->typed_data<double>(), rows, dim, ids.typed_data(), n,
                 values.typed_data<double>(), *scale.typed_data<double>(), true);
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument("zoo_scatter_add_into_zeros: float32 or float64 only");
  }
}

// out = ids sorted in ascending order: an LSD radix sort, one byte per pass, skipping the passes
// whose byte is the same for every id (the high bytes of ids below 2^24). A sort of integers,
// so it equals XLA's sort exactly, at a fraction of its cost for a batch's ids.
ffi::Error SortIdsImpl(ffi::Buffer<ffi::S32> ids, ffi::Result<ffi::Buffer<ffi::S32>> out) {
  const int64_t n = static_cast<int64_t>(ids.element_count());
  std::vector<uint32_t> a(n), b(n);
  const int32_t* in = ids.typed_data();
  for (int64_t i = 0; i < n; ++i) a[i] = static_cast<uint32_t>(in[i]) ^ 0x80000000u;  // signed
  for (int shift = 0; shift < 32 && n > 0; shift += 8) {
    int64_t count[257] = {0};
    for (int64_t i = 0; i < n; ++i) ++count[((a[i] >> shift) & 0xFF) + 1];
    if (count[((a[0] >> shift) & 0xFF) + 1] == n) continue;  // one value of this byte
    for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
    for (int64_t i = 0; i < n; ++i) b[count[(a[i] >> shift) & 0xFF]++] = a[i];
    a.swap(b);
  }
  int32_t* o = out->typed_data();
  for (int64_t i = 0; i < n; ++i) o[i] = static_cast<int32_t>(a[i] ^ 0x80000000u);
  return ffi::Error::Success();
}

ffi::Error ScatterAddScaled(ffi::AnyBuffer table, ffi::Buffer<ffi::S32> ids,
                            ffi::AnyBuffer values, ffi::AnyBuffer scale,
                            ffi::Result<ffi::AnyBuffer> out) {
  return ScatterAddRowsImpl(table, ids, values, scale, out, true);
}

ffi::Error ScatterAddPlain(ffi::AnyBuffer table, ffi::Buffer<ffi::S32> ids,
                           ffi::AnyBuffer values, ffi::AnyBuffer scale,
                           ffi::Result<ffi::AnyBuffer> out) {
  return ScatterAddRowsImpl(table, ids, values, scale, out, false);
}

// The sum of squares of a float32 array, read once: the global gradient norm of every training
// step. XLA squares into a buffer of the gradient's size and then reduces it, a second pass
// that cost about as much as the rest of an MLP's step at batch 32 (benchmarks/train_epoch.py).
// Sixteen independent partial sums let the compiler keep them in vector registers.
ffi::Error SumSquaresImpl(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> out) {
  const float* p = x.typed_data();
  const int64_t n = static_cast<int64_t>(x.element_count());
  constexpr int64_t kLanes = 16;
  float lanes[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) lanes[k] += p[i + k] * p[i + k];
  }
  float total = 0;
  for (; i < n; ++i) total += p[i] * p[i];
  for (int64_t k = 0; k < kLanes; ++k) total += lanes[k];
  out->typed_data()[0] = total;
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooGatherRows, GatherRowsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::AnyBuffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooScatterRows, ScatterRowsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooScatterAddRowsScaled, ScatterAddScaled,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooScatterAddRows, ScatterAddPlain,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooRowwiseAdagrad, RowwiseAdagradImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooLazyAdam, LazyAdamImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooScatterAddIntoZeros, ScatterAddIntoZerosImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooSortIds, SortIdsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooSumSquares, SumSquaresImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
