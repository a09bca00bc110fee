// FeatureTransform: validate, impute, scale and count one float32 feature
// matrix in a single pass, writing the model-ready rows.
//
// Per feature f, for a value x of a row:
//   non-finite (NaN, +-inf):  reject, or impute with impute[f] (counted as missing)
//   outside [lo[f], hi[f]]:   reject, clip, or pass through (counted as out of range)
//   drift:                    a finite value (after clipping) is counted into its
//                             reference bin: bin = number of edges <= x; non-finite
//                             values are counted as missing, never binned
//   output:                   (x - offset[f]) * scale[f]
//
// A rejected request leaves no trace: validation runs first over the whole
// request, and only an accepted request is transformed and counted.
//
// Drift counts live in a sliding window built from `sub_windows` sub-windows,
// each closed after `sub_window_rows` rows (or `sub_window_ns` of time when
// that is > 0): advancing drops the oldest sub-window whole, so sliding is
// O(features x bins) per sub-window, not per row.
//
// Thread-safety: Apply may be called concurrently (counting takes a short
// lock per request); Snapshot and Reset too. The bindings keep the GIL for
// small calls (see kReleaseGilBytes there).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "steadyserve/status.h"

namespace steadyserve {

enum class RangePolicy : uint8_t { kNone = 0, kReject = 1, kClip = 2 };
enum class MissingPolicy : uint8_t { kReject = 0, kImpute = 1 };

struct FeatureTransformOptions {
  std::string model;  // named in error messages
  std::string input;
  uint32_t n_features = 0;
  std::vector<std::string> names;       // empty, or n_features names for messages
  std::vector<float> lo, hi;            // n_features each; -inf / +inf for no bound
  std::vector<uint8_t> range_policy;    // RangePolicy per feature
  std::vector<uint8_t> missing_policy;  // MissingPolicy per feature
  std::vector<float> impute;            // per feature, used with kImpute
  std::vector<float> offset, scale;     // per feature: y = (x - offset) * scale
  uint32_t bins = 0;                    // drift bins per feature; 0 = no drift counting
  std::vector<float> edges;             // n_features * (bins - 1) inner edges, ascending per feature
  uint32_t sub_windows = 10;
  uint64_t sub_window_rows = 1000;
  int64_t sub_window_ns = 0;  // > 0: time-based sub-windows instead of row-based
};

// Totals over the live window.
struct DriftSnapshot {
  uint64_t rows = 0;
  std::vector<uint64_t> counts;        // n_features * bins
  std::vector<uint64_t> missing;       // n_features: non-finite values seen
  std::vector<uint64_t> out_of_range;  // n_features
};

class FeatureTransform {
 public:
  static Status Create(const FeatureTransformOptions& options, std::unique_ptr<FeatureTransform>* out);

  // Transforms rows x n_features values from src into dst (may alias src).
  // INVALID_ARGUMENT names the input, row, feature, value and rule.
  Status Apply(const float* src, float* dst, uint64_t rows);

  // Counts values into the window without transforming (prediction drift on
  // model outputs: no policies apply, non-finite values count as missing).
  void Observe(const float* values, uint64_t rows);

  DriftSnapshot Snapshot();  // advances a time-based window first
  void Reset();
  const FeatureTransformOptions& options() const { return options_; }

 private:
  explicit FeatureTransform(const FeatureTransformOptions& options);
  Status Reject(uint64_t row, uint32_t feature, float value, const char* rule) const;
  void AdvanceLocked(int64_t now_ns);
  // The fused row kernel: v = policies(x) into y (scaled when `scale_out`), bins into counts.
  void RowLocked(const float* x, float* y, bool apply_policies, bool scale_out);
  std::string FeatureName(uint32_t f) const;

  const FeatureTransformOptions options_;
  bool any_reject_ = false;
  bool any_impute_ = false;
  bool any_clip_ = false;
  std::vector<float> edges_by_edge_;  // edge-major copy: [k * n_features + f], so the bin
                                      // count of a row vectorises across features
  std::vector<float> clip_lo_, clip_hi_;
  std::vector<uint8_t> reject_missing_,
      reject_range_;  // 1 where the policy rejects  // lo/hi where the policy clips, else -inf/+inf

  mutable std::mutex mu_;
  // Per sub-window s: counts_[s][f * (bins + 1) + b] (slot `bins` sinks non-finite
  // values), missing_[s][f], out_of_range_[s][f], rows_[s].
  // Sub-window counters are 32-bit (a sub-window holds < 2^32 rows: sub_window_rows
  // is capped, and a time-based one would need > 4e9 rows within its span).
  std::vector<std::vector<uint32_t>> counts_;
  std::vector<std::vector<uint32_t>> missing_;
  std::vector<std::vector<uint32_t>> out_of_range_;
  std::vector<uint64_t> rows_;
  uint32_t current_ = 0;
  int64_t current_start_ns_ = 0;
};

}  // namespace steadyserve
