#include "steadyserve/latency_model.h"

#include <algorithm>
#include <cmath>

namespace steadyserve {

LatencyModel::LatencyModel(uint32_t max_batch_size, uint32_t window, double quantile)
    : max_batch_size_(std::max<uint32_t>(1, max_batch_size)),
      window_(std::max<uint32_t>(1, window)),
      quantile_(std::clamp(quantile, 0.01, 1.0)),
      buckets_(max_batch_size_) {
  for (auto& b : buckets_) b.ring.assign(window_, 0);
  scratch_.reserve(window_);
}

void LatencyModel::Record(uint32_t rows, int64_t exec_ns) {
  if (rows == 0 || rows > max_batch_size_ || exec_ns < 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  Bucket& b = buckets_[rows - 1];
  b.ring[b.next] = exec_ns;
  b.next = (b.next + 1) % window_;
  if (b.count < window_) ++b.count;
  scratch_.assign(b.ring.begin(), b.ring.begin() + b.count);
  // Nearest-rank quantile: the smallest sample with at least q of the samples at or below it.
  size_t rank = static_cast<size_t>(std::ceil(quantile_ * static_cast<double>(b.count)));
  rank = std::clamp<size_t>(rank, 1, b.count) - 1;
  std::nth_element(scratch_.begin(), scratch_.begin() + rank, scratch_.end());
  b.estimate_ns = scratch_[rank];
}

int64_t LatencyModel::EstimateNs(uint32_t rows) const {
  std::lock_guard<std::mutex> lock(mu_);
  return EstimateLocked(rows);
}

int64_t LatencyModel::EstimateLocked(uint32_t rows) const {
  if (rows == 0) return 0;
  rows = std::min(rows, max_batch_size_);
  if (buckets_[rows - 1].count > 0) return buckets_[rows - 1].estimate_ns;
  // Nearest measured sizes below and above.
  int below = -1, above = -1;
  for (int i = static_cast<int>(rows) - 2; i >= 0; --i)
    if (buckets_[i].count > 0) {
      below = i;
      break;
    }
  for (uint32_t i = rows; i < max_batch_size_; ++i)
    if (buckets_[i].count > 0) {
      above = static_cast<int>(i);
      break;
    }
  if (below < 0 && above < 0) return 0;
  if (below < 0) return buckets_[above].estimate_ns;  // smaller batches cost no more
  const double b_rows = below + 1, b_ns = static_cast<double>(buckets_[below].estimate_ns);
  if (above < 0) return static_cast<int64_t>(b_ns * (rows / b_rows));
  const double a_rows = above + 1, a_ns = static_cast<double>(buckets_[above].estimate_ns);
  const double t = (rows - b_rows) / (a_rows - b_rows);
  return static_cast<int64_t>(b_ns + t * (a_ns - b_ns));
}

uint32_t LatencyModel::SampleCount(uint32_t rows) const {
  if (rows == 0 || rows > max_batch_size_) return 0;
  std::lock_guard<std::mutex> lock(mu_);
  return buckets_[rows - 1].count;
}

}  // namespace steadyserve
