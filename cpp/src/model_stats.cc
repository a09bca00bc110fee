#include "steadyserve/model_stats.h"

#include <algorithm>

namespace steadyserve {

const char* RefusalName(Refusal r) {
  switch (r) {
    case Refusal::kAdmission:
      return "admission";
    case Refusal::kDeadlinePassed:
      return "deadline_passed";
    case Refusal::kExpiredInQueue:
      return "expired_in_queue";
    case Refusal::kQueueFull:
      return "queue_full";
    case Refusal::kShedForPriority:
      return "shed_for_priority";
    case Refusal::kCancelled:
      return "cancelled";
    case Refusal::kInvalidInput:
      return "invalid_input";
    case Refusal::kStopping:
      return "stopping";
    case Refusal::kCount:
      break;
  }
  return "unknown";
}

AtomicHistogram::AtomicHistogram(std::vector<int64_t> upper_bounds) : bounds_(std::move(upper_bounds)) {
  std::sort(bounds_.begin(), bounds_.end());
  buckets_.reset(new std::atomic<uint64_t>[bounds_.size() + 1]);
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void AtomicHistogram::Observe(int64_t value) {
  const size_t b = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  buckets_[b].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

std::vector<uint64_t> AtomicHistogram::Counts() const {
  std::vector<uint64_t> out(bounds_.size() + 1);
  for (size_t i = 0; i < out.size(); ++i) out[i] = buckets_[i].load(std::memory_order_relaxed);
  return out;
}

namespace {
std::vector<int64_t> BatchBounds(uint32_t max_batch_size) {
  std::vector<int64_t> b;
  for (int64_t s = 1; s <= std::max<int64_t>(1024, max_batch_size); s *= 2) b.push_back(s);
  return b;
}
}  // namespace

ModelStats::ModelStats(const std::vector<int64_t>& latency_bounds_ns, uint32_t max_batch_size, int64_t slo_ns)
    : request_latency(latency_bounds_ns),
      queue_latency(latency_bounds_ns),
      compute_latency(latency_bounds_ns),
      batch_size(BatchBounds(max_batch_size)),
      slo_ns_(slo_ns),
      by_batch_size_(std::max<uint32_t>(1, max_batch_size)),
      recent_latency_(new std::atomic<int64_t>[kRecent]),
      recent_queue_(new std::atomic<int64_t>[kRecent]) {
  for (size_t i = 0; i < kRecent; ++i) {
    recent_latency_[i].store(0, std::memory_order_relaxed);
    recent_queue_[i].store(0, std::memory_order_relaxed);
  }
}

void ModelStats::RequestDone(StatusCode code, int64_t latency_ns, int64_t queue_ns) {
  latency_ns = std::max<int64_t>(0, latency_ns);
  outcomes_[Index(code)].fetch_add(1, std::memory_order_relaxed);
  request_latency.Observe(latency_ns);
  if (code != StatusCode::kOk) {
    fail.Add(static_cast<uint64_t>(latency_ns));
    return;
  }
  success.Add(static_cast<uint64_t>(latency_ns));
  const uint64_t k = recent_latency_n_.fetch_add(1, std::memory_order_relaxed);
  recent_latency_[k % kRecent].store(latency_ns, std::memory_order_relaxed);
  if (slo_ns_ > 0) (latency_ns > slo_ns_ ? slo_missed : slo_met).fetch_add(1, std::memory_order_relaxed);
  if (queue_ns >= 0) {
    queue.Add(static_cast<uint64_t>(queue_ns));
    queue_latency.Observe(queue_ns);
    const uint64_t q = recent_queue_n_.fetch_add(1, std::memory_order_relaxed);
    recent_queue_[q % kRecent].store(queue_ns, std::memory_order_relaxed);
  }
}

void ModelStats::Refused(Refusal why) {
  refusals_[static_cast<size_t>(why)].fetch_add(1, std::memory_order_relaxed);
}

void ModelStats::BatchDone(uint32_t rows, int64_t input_ns, int64_t infer_ns, int64_t output_ns, bool ok,
                           int64_t wall_ms) {
  execution_count.fetch_add(1, std::memory_order_relaxed);
  if (ok) inference_count.fetch_add(rows, std::memory_order_relaxed);
  last_inference_ms.store(wall_ms, std::memory_order_relaxed);
  compute_input.Add(static_cast<uint64_t>(std::max<int64_t>(0, input_ns)) * rows, rows);
  compute_infer.Add(static_cast<uint64_t>(std::max<int64_t>(0, infer_ns)) * rows, rows);
  compute_output.Add(static_cast<uint64_t>(std::max<int64_t>(0, output_ns)) * rows, rows);
  compute_latency.Observe(infer_ns);
  batch_size.Observe(rows);
  if (rows >= 1 && rows <= by_batch_size_.size()) {
    BatchSizeStat& b = by_batch_size_[rows - 1];
    b.count.fetch_add(1, std::memory_order_relaxed);
    b.input_ns.fetch_add(static_cast<uint64_t>(std::max<int64_t>(0, input_ns)), std::memory_order_relaxed);
    b.infer_ns.fetch_add(static_cast<uint64_t>(std::max<int64_t>(0, infer_ns)), std::memory_order_relaxed);
    b.output_ns.fetch_add(static_cast<uint64_t>(std::max<int64_t>(0, output_ns)), std::memory_order_relaxed);
  }
}

std::vector<int64_t> ModelStats::Recent(const std::unique_ptr<std::atomic<int64_t>[]>& ring,
                                        const std::atomic<uint64_t>& n) {
  const uint64_t total = n.load(std::memory_order_relaxed);
  const size_t count = static_cast<size_t>(std::min<uint64_t>(total, kRecent));
  std::vector<int64_t> out(count);
  for (size_t i = 0; i < count; ++i) out[i] = ring[i].load(std::memory_order_relaxed);
  return out;
}

}  // namespace steadyserve
