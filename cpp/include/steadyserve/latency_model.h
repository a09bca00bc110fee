// LatencyModel: how long a batch of N rows takes to execute, per batch size.
//
// Each batch size keeps a ring of its most recent execution times; the estimate
// is a high quantile of that ring (robust to one slow outlier, quick to follow a
// real slowdown). Sizes never measured are interpolated linearly between the
// nearest measured sizes, and extrapolated from the largest one in proportion to
// rows, which over- rather than under-estimates for models whose cost grows
// sub-linearly with batch size.
//
// Thread-safety: all methods are safe to call concurrently (one mutex; updates
// happen once per executed batch, reads once per submit/dispatch).
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

namespace steadyserve {

class LatencyModel {
 public:
  // max_batch_size >= 1; window = samples kept per size; quantile in (0, 1].
  LatencyModel(uint32_t max_batch_size, uint32_t window = 32, double quantile = 0.9);

  // Records one executed batch of `rows` rows (1..max_batch_size) that took exec_ns.
  void Record(uint32_t rows, int64_t exec_ns);

  // Estimated execution time of a batch of `rows` rows; 0 when nothing was recorded yet.
  int64_t EstimateNs(uint32_t rows) const;

  // Number of samples recorded for exactly this size (for stats and tests).
  uint32_t SampleCount(uint32_t rows) const;

  uint32_t max_batch_size() const { return max_batch_size_; }

 private:
  struct Bucket {
    std::vector<int64_t> ring;  // capacity `window`, filled round-robin
    uint32_t next = 0;
    uint32_t count = 0;       // total recorded, saturating at ring size for the quantile
    int64_t estimate_ns = 0;  // cached quantile of ring
  };

  int64_t EstimateLocked(uint32_t rows) const;

  const uint32_t max_batch_size_;
  const uint32_t window_;
  const double quantile_;
  mutable std::mutex mu_;
  std::vector<Bucket> buckets_;   // index = rows - 1
  std::vector<int64_t> scratch_;  // reused by Record to sort without allocating
};

}  // namespace steadyserve
