#include "steadyserve/feature_transform.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>

namespace steadyserve {
namespace {

int64_t SteadyNowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string FormatValue(float v) {
  if (std::isnan(v)) return "nan";  // never "-nan": the sign of a NaN means nothing here
  char buf[48];
  std::snprintf(buf, sizeof(buf), "%.9g", static_cast<double>(v));
  return buf;
}

}  // namespace

Status FeatureTransform::Create(const FeatureTransformOptions& o, std::unique_ptr<FeatureTransform>* out) {
  const std::string where = "model '" + o.model + "' input '" + o.input + "': ";
  const size_t n = o.n_features;
  if (n == 0) return Status(StatusCode::kInvalidArgument, where + "feature transform needs n_features >= 1");
  auto sized = [n](const auto& v) { return v.size() == n; };
  if (!sized(o.lo) || !sized(o.hi) || !sized(o.range_policy) || !sized(o.missing_policy) ||
      !sized(o.impute) || !sized(o.offset) || !sized(o.scale))
    return Status(StatusCode::kInvalidArgument,
                  where + "every per-feature parameter needs " + std::to_string(n) + " values");
  if (!o.names.empty() && o.names.size() != n)
    return Status(StatusCode::kInvalidArgument, where + std::to_string(o.names.size()) +
                                                    " feature names for " + std::to_string(n) + " features");
  for (size_t f = 0; f < n; ++f) {
    if (o.lo[f] > o.hi[f] || std::isnan(o.lo[f]) || std::isnan(o.hi[f]))
      return Status(StatusCode::kInvalidArgument, where + "feature " + std::to_string(f) + ": range [" +
                                                      FormatValue(o.lo[f]) + ", " + FormatValue(o.hi[f]) +
                                                      "] is empty");
    if (o.range_policy[f] > 2 || o.missing_policy[f] > 1)
      return Status(StatusCode::kInvalidArgument, where + "unknown policy for feature " + std::to_string(f));
    if (!std::isfinite(o.offset[f]) || !std::isfinite(o.scale[f]) ||
        (o.missing_policy[f] == static_cast<uint8_t>(MissingPolicy::kImpute) && !std::isfinite(o.impute[f])))
      return Status(StatusCode::kInvalidArgument, where + "feature " + std::to_string(f) +
                                                      ": scaling and imputation values must be finite");
  }
  if (o.bins == 1 || o.bins > 1024)
    return Status(StatusCode::kInvalidArgument, where + "drift bins must be 0 (off) or 2..1024");
  if (o.bins > 1) {
    if (o.edges.size() != n * (o.bins - 1))
      return Status(StatusCode::kInvalidArgument, where + "expected " + std::to_string(n * (o.bins - 1)) +
                                                      " bin edges, got " + std::to_string(o.edges.size()));
    for (size_t f = 0; f < n; ++f) {
      const float* e = o.edges.data() + f * (o.bins - 1);
      for (uint32_t k = 0; k + 1 < o.bins; ++k) {
        if (!std::isfinite(e[k]) || (k > 0 && e[k] < e[k - 1]))
          return Status(StatusCode::kInvalidArgument, where + "bin edges of feature " + std::to_string(f) +
                                                          " must be finite and ascending");
      }
    }
    if (o.sub_windows < 1 || o.sub_windows > 1000 ||
        (o.sub_window_ns <= 0 && (o.sub_window_rows < 1 || o.sub_window_rows > (1ull << 31))))
      return Status(StatusCode::kInvalidArgument,
                    where + "drift window needs 1..1000 sub_windows and 1..2^31 rows (or a duration) each");
  }
  out->reset(new FeatureTransform(o));
  return Status::Ok();
}

FeatureTransform::FeatureTransform(const FeatureTransformOptions& o) : options_(o) {
  for (uint32_t f = 0; f < o.n_features; ++f) {
    any_reject_ |= o.range_policy[f] == static_cast<uint8_t>(RangePolicy::kReject) ||
                   o.missing_policy[f] == static_cast<uint8_t>(MissingPolicy::kReject);
    any_impute_ |= o.missing_policy[f] == static_cast<uint8_t>(MissingPolicy::kImpute);
    any_clip_ |= o.range_policy[f] == static_cast<uint8_t>(RangePolicy::kClip);
  }
  const uint32_t n = o.n_features;
  reject_missing_.resize(n);
  reject_range_.resize(n);
  for (uint32_t f = 0; f < n; ++f) {
    reject_missing_[f] = o.missing_policy[f] == static_cast<uint8_t>(MissingPolicy::kReject);
    reject_range_[f] = o.range_policy[f] == static_cast<uint8_t>(RangePolicy::kReject);
  }
  clip_lo_.resize(n);
  clip_hi_.resize(n);
  for (uint32_t f = 0; f < n; ++f) {
    const bool clip = o.range_policy[f] == static_cast<uint8_t>(RangePolicy::kClip);
    clip_lo_[f] = clip ? o.lo[f] : -std::numeric_limits<float>::infinity();
    clip_hi_[f] = clip ? o.hi[f] : std::numeric_limits<float>::infinity();
  }
  if (o.bins > 1) {
    edges_by_edge_.resize(static_cast<size_t>(o.bins - 1) * n);
    for (uint32_t f = 0; f < n; ++f)
      for (uint32_t k = 0; k + 1 < o.bins; ++k) edges_by_edge_[k * n + f] = o.edges[f * (o.bins - 1) + k];
  }
  const uint32_t subs = std::max<uint32_t>(1, o.sub_windows);
  counts_.assign(subs,
                 std::vector<uint32_t>(static_cast<size_t>(n) * (std::max<uint32_t>(o.bins, 1) + 1), 0));
  missing_.assign(subs, std::vector<uint32_t>(o.n_features, 0));
  out_of_range_.assign(subs, std::vector<uint32_t>(o.n_features, 0));
  rows_.assign(subs, 0);
  current_start_ns_ = SteadyNowNs();
}

std::string FeatureTransform::FeatureName(uint32_t f) const {
  if (!options_.names.empty()) return "'" + options_.names[f] + "' (index " + std::to_string(f) + ")";
  return std::to_string(f);
}

Status FeatureTransform::Reject(uint64_t row, uint32_t f, float value, const char* rule) const {
  return Status(StatusCode::kInvalidArgument,
                "model '" + options_.model + "': input '" + options_.input + "' row " + std::to_string(row) +
                    ", feature " + FeatureName(f) + ": value " + FormatValue(value) + " " + rule);
}

void FeatureTransform::AdvanceLocked(int64_t now_ns) {
  const auto& o = options_;
  const uint32_t subs = static_cast<uint32_t>(rows_.size());
  auto next = [&] {
    current_ = (current_ + 1) % subs;
    std::fill(counts_[current_].begin(), counts_[current_].end(), 0);
    std::fill(missing_[current_].begin(), missing_[current_].end(), 0);
    std::fill(out_of_range_[current_].begin(), out_of_range_[current_].end(), 0);
    rows_[current_] = 0;
  };
  if (o.sub_window_ns > 0) {
    // Skip as many sub-windows as have passed (at most a full turn).
    uint32_t steps = 0;
    while (now_ns - current_start_ns_ >= o.sub_window_ns && steps < subs) {
      next();
      current_start_ns_ += o.sub_window_ns;
      ++steps;
    }
    if (now_ns - current_start_ns_ >= o.sub_window_ns) current_start_ns_ = now_ns;
  } else if (rows_[current_] >= o.sub_window_rows) {
    next();
  }
}

Status FeatureTransform::Apply(const float* src, float* dst, uint64_t rows) {
  const auto& o = options_;
  const uint32_t n = o.n_features;
  if (any_reject_) {
    // Whole-request check first, branch-free per row; the slow search for the
    // first offending value only runs when a row is refused.
    const uint8_t* __restrict reject_missing = reject_missing_.data();
    const uint8_t* __restrict reject_range = reject_range_.data();
    const float* __restrict lo = o.lo.data();
    const float* __restrict hi = o.hi.data();
    for (uint64_t r = 0; r < rows; ++r) {
      const float* __restrict x = src + r * n;
      int bad = 0;
      for (uint32_t f = 0; f < n; ++f) {
        const float v = x[f];
        const int finite = std::isfinite(v);
        const int outside = finite & ((v < lo[f]) | (v > hi[f]));
        bad |= ((!finite) & reject_missing[f]) | (outside & reject_range[f]);
      }
      if (!bad) continue;
      for (uint32_t f = 0; f < n; ++f) {
        const float v = x[f];
        if (!std::isfinite(v)) {
          if (reject_missing[f]) return Reject(r, f, v, "is not allowed (NaN/inf policy: reject)");
        } else if (reject_range[f] && (v < lo[f] || v > hi[f])) {
          return Reject(
              r, f, v,
              ("is outside [" + FormatValue(lo[f]) + ", " + FormatValue(hi[f]) + "] (range policy: reject)")
                  .c_str());
        }
      }
    }
  }

  std::lock_guard<std::mutex> lock(mu_);
  if (o.bins > 1 && o.sub_window_ns > 0) AdvanceLocked(SteadyNowNs());
  for (uint64_t r = 0; r < rows; ++r) RowLocked(src + r * n, dst + r * n, true, true);
  return Status::Ok();
}

void FeatureTransform::RowLocked(const float* x, float* y, bool apply_policies, bool scale_out) {
  const auto& o = options_;
  const uint32_t n = o.n_features;
  // Scratch for one row, reused by this thread: no allocation in steady state.
  thread_local std::vector<float> value_scratch;
  thread_local std::vector<uint32_t> bin_scratch;
  if (value_scratch.size() < n) value_scratch.resize(n);
  if (bin_scratch.size() < n) bin_scratch.resize(n);
  float* __restrict v = value_scratch.data();
  uint32_t* __restrict bin = bin_scratch.data();
  const float* __restrict lo = o.lo.data();
  const float* __restrict hi = o.hi.data();

  // Pass 1, branch-free so it vectorises: impute, clip, and note whether
  // anything in the row was unusual (rows are normally clean).
  int unusual = 0;
  if (apply_policies) {
    const float* __restrict impute = o.impute.data();
    const float* __restrict clip_lo = clip_lo_.data();
    const float* __restrict clip_hi = clip_hi_.data();
    for (uint32_t f = 0; f < n; ++f) {
      // Every operand loaded unconditionally, so the compiler can if-convert.
      const float raw = x[f], imp = impute[f], cl = clip_lo[f], ch = clip_hi[f];
      const bool finite = (raw - raw) == 0.f;  // false for NaN and +-inf
      unusual |= !finite | (raw < lo[f]) | (raw > hi[f]);
      float val = finite ? raw : imp;
      val = val < cl ? cl : val;
      val = val > ch ? ch : val;
      v[f] = val;
    }
  } else {
    for (uint32_t f = 0; f < n; ++f) {
      const float raw = x[f];
      unusual |= !((raw - raw) == 0.f) | (raw < lo[f]) | (raw > hi[f]);
      v[f] = raw;
    }
  }

  // Pass 2: bin index = number of edges <= value. Blocks of 8 features keep
  // their counters in registers while the edges stream past.
  const uint32_t sink = std::max<uint32_t>(o.bins, 1);  // bin slot of non-finite values
  if (o.bins > 1) {
    const uint32_t n_edges = o.bins - 1;
    const float* __restrict edges = edges_by_edge_.data();
    uint32_t f0 = 0;
    for (; f0 + 8 <= n; f0 += 8) {
      uint32_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      float val[8];
      for (int j = 0; j < 8; ++j) val[j] = v[f0 + j];
      for (uint32_t k = 0; k < n_edges; ++k) {
        const float* __restrict e = edges + static_cast<size_t>(k) * n + f0;
        for (int j = 0; j < 8; ++j) acc[j] += val[j] >= e[j];
      }
      for (int j = 0; j < 8; ++j) bin[f0 + j] = acc[j];
    }
    for (; f0 < n; ++f0) {
      uint32_t acc = 0;
      for (uint32_t k = 0; k < n_edges; ++k) acc += v[f0] >= edges[static_cast<size_t>(k) * n + f0];
      bin[f0] = acc;
    }
  }

  // The rare path: count missing and out-of-range values; non-finite values
  // go to the sink slot instead of a bin.
  if (unusual) {
    uint32_t* __restrict missing = missing_[current_].data();
    uint32_t* __restrict out_of_range = out_of_range_[current_].data();
    for (uint32_t f = 0; f < n; ++f) {
      const float raw = x[f];
      if (!std::isfinite(raw)) {
        ++missing[f];
        bin[f] = sink;
      } else if (raw < lo[f] || raw > hi[f]) {
        ++out_of_range[f];
      }
    }
  }
  if (o.bins > 1) {
    uint32_t* __restrict counts = counts_[current_].data();
    const uint32_t stride = o.bins + 1;
    for (uint32_t f = 0; f < n; ++f) ++counts[f * stride + bin[f]];
  }

  // Pass 3: scale into the output row.
  if (scale_out) {
    const float* __restrict off = o.offset.data();
    const float* __restrict sc = o.scale.data();
    for (uint32_t f = 0; f < n; ++f) y[f] = (v[f] - off[f]) * sc[f];
  }
  ++rows_[current_];
  if (o.bins > 1 && o.sub_window_ns <= 0) AdvanceLocked(0);
}

void FeatureTransform::Observe(const float* values, uint64_t rows) {
  const auto& o = options_;
  if (o.bins < 2) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (o.sub_window_ns > 0) AdvanceLocked(SteadyNowNs());
  for (uint64_t r = 0; r < rows; ++r) RowLocked(values + r * o.n_features, nullptr, false, false);
}

DriftSnapshot FeatureTransform::Snapshot() {
  DriftSnapshot s;
  const size_t n = options_.n_features;
  const size_t bins = std::max<uint32_t>(options_.bins, 1), stride = bins + 1;
  s.counts.assign(n * bins, 0);
  s.missing.assign(n, 0);
  s.out_of_range.assign(n, 0);
  std::lock_guard<std::mutex> lock(mu_);
  // A time-based window drops what has aged out even when no rows arrive.
  if (options_.bins > 1 && options_.sub_window_ns > 0) AdvanceLocked(SteadyNowNs());
  for (size_t w = 0; w < rows_.size(); ++w) {
    s.rows += rows_[w];
    for (size_t f = 0; f < n; ++f)
      for (size_t b = 0; b < bins; ++b) s.counts[f * bins + b] += counts_[w][f * stride + b];
    for (size_t f = 0; f < n; ++f) {
      s.missing[f] += missing_[w][f];
      s.out_of_range[f] += out_of_range_[w][f];
    }
  }
  return s;
}

void FeatureTransform::Reset() {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t w = 0; w < rows_.size(); ++w) {
    std::fill(counts_[w].begin(), counts_[w].end(), 0);
    std::fill(missing_[w].begin(), missing_[w].end(), 0);
    std::fill(out_of_range_[w].begin(), out_of_range_[w].end(), 0);
    rows_[w] = 0;
  }
  current_ = 0;
  current_start_ns_ = SteadyNowNs();
}

}  // namespace steadyserve
