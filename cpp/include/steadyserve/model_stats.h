// ModelStats: every figure of one model version, counted where it happens.
//
// Atomics only (relaxed: each figure is a monotonic count or sum read at scrape
// time), so counting costs a few uncontended increments and no lock. This is
// the one source of truth for Prometheus /metrics, Triton's ModelStatistics and
// the SLO report; nothing in Python keeps a copy.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "steadyserve/status.h"

namespace steadyserve {

// A cumulative histogram with fixed upper bounds (ns or rows), plus sum and count.
class AtomicHistogram {
 public:
  explicit AtomicHistogram(std::vector<int64_t> upper_bounds);
  void Observe(int64_t value);
  const std::vector<int64_t>& bounds() const { return bounds_; }
  // Per-bucket counts (bounds().size() + 1 entries, the last for +Inf), non-cumulative.
  std::vector<uint64_t> Counts() const;
  uint64_t Count() const { return count_.load(std::memory_order_relaxed); }
  int64_t Sum() const { return sum_.load(std::memory_order_relaxed); }

 private:
  std::vector<int64_t> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;
  std::atomic<uint64_t> count_{0};
  std::atomic<int64_t> sum_{0};
};

struct DurationStat {
  std::atomic<uint64_t> count{0};
  std::atomic<uint64_t> ns{0};
  void Add(uint64_t ns_, uint64_t n = 1) {
    count.fetch_add(n, std::memory_order_relaxed);
    ns.fetch_add(ns_, std::memory_order_relaxed);
  }
};

// Why a request was not executed (the reasons of steadyserve_refused_requests_total).
enum class Refusal : uint8_t {
  kAdmission,
  kDeadlinePassed,
  kExpiredInQueue,
  kQueueFull,
  kShedForPriority,
  kCancelled,
  kInvalidInput,
  kStopping,
  kCount,
};
const char* RefusalName(Refusal r);

class ModelStats {
 public:
  // latency_bounds_ns: request/queue/compute histogram bounds; max_batch_size >= 1.
  ModelStats(const std::vector<int64_t>& latency_bounds_ns, uint32_t max_batch_size, int64_t slo_ns);

  // A request answered by this model (code kOk) or failed here, latency from arrival.
  void RequestDone(StatusCode code, int64_t latency_ns, int64_t queue_ns);
  // A request refused or withdrawn before execution.
  void Refused(Refusal why);
  // An executed batch: rows, time spent on input, the run and output, whether it failed.
  void BatchDone(uint32_t rows, int64_t input_ns, int64_t infer_ns, int64_t output_ns, bool ok,
                 int64_t wall_ms);

  // --- read at scrape time
  uint64_t Outcome(StatusCode code) const { return outcomes_[Index(code)].load(std::memory_order_relaxed); }
  uint64_t RefusalCount(Refusal r) const {
    return refusals_[static_cast<size_t>(r)].load(std::memory_order_relaxed);
  }
  struct BatchSizeStat {
    std::atomic<uint64_t> count{0}, input_ns{0}, infer_ns{0}, output_ns{0};
  };
  const BatchSizeStat& batch_size_stat(uint32_t rows) const { return by_batch_size_[rows - 1]; }
  uint32_t max_batch_size() const { return static_cast<uint32_t>(by_batch_size_.size()); }
  // The most recent request latencies / queue times (up to kRecent), for percentiles.
  static constexpr size_t kRecent = 4096;
  std::vector<int64_t> RecentLatencies() const { return Recent(recent_latency_, recent_latency_n_); }
  std::vector<int64_t> RecentQueueTimes() const { return Recent(recent_queue_, recent_queue_n_); }

  std::atomic<uint64_t> inference_count{0};  // rows answered
  std::atomic<uint64_t> execution_count{0};  // batches executed
  std::atomic<int64_t> last_inference_ms{0};
  std::atomic<uint64_t> slo_met{0}, slo_missed{0};
  DurationStat success, fail, queue, compute_input, compute_infer, compute_output;
  AtomicHistogram request_latency, queue_latency, compute_latency, batch_size;

 private:
  static size_t Index(StatusCode code) {
    const int c = static_cast<int>(code);
    return c >= 0 && c < 17 ? static_cast<size_t>(c) : 2;
  }
  static std::vector<int64_t> Recent(const std::unique_ptr<std::atomic<int64_t>[]>& ring,
                                     const std::atomic<uint64_t>& n);
  const int64_t slo_ns_;
  std::array<std::atomic<uint64_t>, 17> outcomes_{};
  std::array<std::atomic<uint64_t>, static_cast<size_t>(Refusal::kCount)> refusals_{};
  std::vector<BatchSizeStat> by_batch_size_;
  std::unique_ptr<std::atomic<int64_t>[]> recent_latency_, recent_queue_;
  std::atomic<uint64_t> recent_latency_n_{0}, recent_queue_n_{0};
};

}  // namespace steadyserve
