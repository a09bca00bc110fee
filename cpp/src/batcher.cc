#include "steadyserve/batcher.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <limits>

namespace steadyserve {
namespace {

constexpr int64_t kNoTime = std::numeric_limits<int64_t>::max();

std::string ModelPrefix(const std::string& model) { return "model '" + model + "': "; }

}  // namespace

int64_t Batcher::NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Status Batcher::Create(const BatcherOptions& o, std::unique_ptr<Batcher>* out) {
  const std::string where = ModelPrefix(o.model);
  if (o.inputs.empty()) return Status(StatusCode::kInvalidArgument, where + "no inputs");
  for (const auto& in : o.inputs) {
    if (in.row_bytes == 0)
      return Status(StatusCode::kInvalidArgument, where + "input '" + in.name + "' has 0 bytes per row");
    if (in.transform && in.transform->options().n_features * sizeof(float) != in.row_bytes)
      return Status(StatusCode::kInvalidArgument, where + "input '" + in.name + "': feature transform for " +
                                                      std::to_string(in.transform->options().n_features) +
                                                      " float32 features, but a row has " +
                                                      std::to_string(in.row_bytes) + " bytes");
  }
  if (o.max_batch_size < 1)
    return Status(StatusCode::kInvalidArgument, where + "max_batch_size must be >= 1");
  for (uint32_t p : o.preferred_batch_sizes) {
    if (p < 1 || p > o.max_batch_size)
      return Status(StatusCode::kInvalidArgument, where + "preferred batch size " + std::to_string(p) +
                                                      " is outside [1, " + std::to_string(o.max_batch_size) +
                                                      "]");
  }
  if (o.max_queue_delay_ns < 0)
    return Status(StatusCode::kInvalidArgument, where + "max_queue_delay must be >= 0");
  if (o.max_queue_size < 1)
    return Status(StatusCode::kInvalidArgument, where + "max_queue_size must be >= 1");
  if (o.priority_levels < 1 || o.priority_levels > 16)
    return Status(StatusCode::kInvalidArgument, where + "priority_levels must be in [1, 16]");
  if (!o.level_max_queue.empty() && o.level_max_queue.size() != o.priority_levels)
    return Status(StatusCode::kInvalidArgument, where + "level_max_queue needs one entry per priority level");
  if (o.executors < 1 || o.executors > 64)
    return Status(StatusCode::kInvalidArgument, where + "executors must be in [1, 64]");
  if (o.slack_margin_ns < 0) return Status(StatusCode::kInvalidArgument, where + "slack margin must be >= 0");
  if (o.slo_latency_ns < 0) return Status(StatusCode::kInvalidArgument, where + "SLO latency must be >= 0");
  out->reset(new Batcher(o));
  return Status::Ok();
}

Batcher::Batcher(const BatcherOptions& o) : options_(o), latency_(o.max_batch_size) {
  // Cancelled requests hold their slot until a dispatcher pops them, so keep
  // headroom beyond max_queue_size; staging memory grows only as used.
  const uint32_t n_slots = o.max_queue_size * 2;
  slots_.resize(n_slots);
  free_slots_.reserve(n_slots);
  for (uint32_t i = n_slots; i-- > 0;) {
    slots_[i].data.resize(o.inputs.size());
    free_slots_.push_back(i);
  }
  levels_.resize(o.priority_levels);
  level_rows_.assign(o.priority_levels, 0);
  level_requests_.assign(o.priority_levels, 0);
  batch_cap_ = o.max_batch_size;
  inflight_start_ns_.assign(o.executors, 0);
  inflight_rows_.assign(o.executors, 0);
  for (auto& level : levels_) level.items.assign(n_slots, 0);
  buffers_.resize(o.executors);
  for (auto& buffer : buffers_) {
    buffer.resize(o.inputs.size());
    for (size_t i = 0; i < o.inputs.size(); ++i) buffer[i].resize(o.inputs[i].row_bytes * o.max_batch_size);
  }
  for (uint32_t b = o.executors; b-- > 0;) free_buffers_.push_back(b);
}

Batcher::~Batcher() = default;

Status Batcher::Submit(uint64_t token, const uint8_t* const* inputs, size_t n_inputs, uint32_t rows,
                       int64_t deadline_ns, uint32_t priority, SubmitResult* result) {
  *result = SubmitResult();
  const auto& o = options_;
  if (n_inputs != o.inputs.size())
    return Status(StatusCode::kInvalidArgument, ModelPrefix(o.model) + "expected " +
                                                    std::to_string(o.inputs.size()) + " inputs, got " +
                                                    std::to_string(n_inputs));
  if (rows < 1 || rows > o.max_batch_size)
    return Status(StatusCode::kInvalidArgument, ModelPrefix(o.model) + "batch of " + std::to_string(rows) +
                                                    " rows is outside [1, max_batch_size " +
                                                    std::to_string(o.max_batch_size) + "]");
  if (priority >= o.priority_levels)
    return Status(StatusCode::kInvalidArgument, ModelPrefix(o.model) + "priority level " +
                                                    std::to_string(priority) + " is outside [0, " +
                                                    std::to_string(o.priority_levels - 1) + "]");

  uint32_t index;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      ++stats_.rejected_stopped;
      return Status(StatusCode::kUnavailable, ModelPrefix(o.model) + "is stopping, not accepting requests");
    }
    const int64_t now = NowNs();
    if (deadline_ns != 0 && deadline_ns <= now) {
      ++stats_.rejected_deadline;
      return Status(StatusCode::kDeadlineExceeded,
                    ModelPrefix(o.model) + "deadline already passed when the request arrived");
    }
    if (deadline_ns != 0 && o.admission_control) {
      const int64_t done = EstimateCompletionLocked(now, rows, priority);
      if (done > deadline_ns) {
        ++stats_.rejected_admission;
        char buf[256];
        std::snprintf(buf, sizeof(buf),
                      "would miss its deadline: estimated completion in %.2f ms (%u rows queued "
                      "ahead), deadline in %.2f ms",
                      (done - now) / 1e6, AheadRowsLocked(priority), (deadline_ns - now) / 1e6);
        return Status(StatusCode::kDeadlineExceeded, ModelPrefix(o.model) + buf);
      }
    }
    if (!o.level_max_queue.empty() && o.level_max_queue[priority] != 0 &&
        level_requests_[priority] >= o.level_max_queue[priority]) {
      ++stats_.rejected_queue_full;
      return Status(StatusCode::kResourceExhausted,
                    ModelPrefix(o.model) + "queue of priority level " + std::to_string(priority + 1) +
                        " is full: " + std::to_string(level_requests_[priority]) +
                        " requests queued (max_queue_size " + std::to_string(o.level_max_queue[priority]) +
                        " for this level)");
    }
    if (queued_requests_ >= o.max_queue_size || free_slots_.empty()) {
      uint64_t evicted_token = 0;
      if (!EvictLowerLocked(priority, &evicted_token)) {
        ++stats_.rejected_queue_full;
        return Status(StatusCode::kResourceExhausted,
                      ModelPrefix(o.model) + "queue is full: " + std::to_string(queued_requests_) +
                          " requests queued (max_queue_size " + std::to_string(o.max_queue_size) + ")");
      }
      result->evicted = true;
      result->evicted_token = evicted_token;
    }
    index = free_slots_.back();
    free_slots_.pop_back();
    slots_[index].state = SlotState::kFilling;
  }

  // Copy (or transform) outside the lock: the slot is ours while kFilling.
  Slot& slot = slots_[index];
  for (size_t i = 0; i < n_inputs; ++i) {
    const size_t bytes = static_cast<size_t>(rows) * o.inputs[i].row_bytes;
    slot.data[i].resize(bytes);
    if (o.inputs[i].transform) {
      Status s = o.inputs[i].transform->Apply(reinterpret_cast<const float*>(inputs[i]),
                                              reinterpret_cast<float*>(slot.data[i].data()), rows);
      if (!s.ok()) {
        std::lock_guard<std::mutex> lock(mu_);
        FreeSlotLocked(index);
        ++stats_.rejected_invalid;
        return s;
      }
    } else {
      std::memcpy(slot.data[i].data(), inputs[i], bytes);
    }
  }

  {
    std::lock_guard<std::mutex> lock(mu_);
    slot.token = token;
    slot.rows = rows;
    slot.priority = priority;
    slot.deadline_ns = deadline_ns;
    slot.enqueue_ns = NowNs();
    if (stopping_) {  // Stop raced with the copy: refuse rather than strand it
      FreeSlotLocked(index);
      ++stats_.rejected_stopped;
      return Status(StatusCode::kUnavailable, ModelPrefix(o.model) + "is stopping, not accepting requests");
    }
    slot.state = SlotState::kQueued;
    levels_[priority].push(index);
    ++queued_requests_;
    queued_rows_ += rows;
    level_rows_[priority] += rows;
    ++level_requests_[priority];
    ++stats_.submitted;
    result->handle = (static_cast<uint64_t>(slot.generation) << 32) | index;
  }
  cv_.notify_one();
  return Status::Ok();
}

bool Batcher::Cancel(uint64_t handle) {
  const uint32_t index = static_cast<uint32_t>(handle & 0xffffffffu);
  const uint32_t generation = static_cast<uint32_t>(handle >> 32);
  std::lock_guard<std::mutex> lock(mu_);
  if (index >= slots_.size()) return false;
  Slot& slot = slots_[index];
  if (slot.generation != generation || slot.state != SlotState::kQueued) return false;
  slot.state = SlotState::kCancelled;  // popped (and freed) by the next dispatcher pass
  --queued_requests_;
  queued_rows_ -= slot.rows;
  level_rows_[slot.priority] -= slot.rows;
  --level_requests_[slot.priority];
  ++stats_.cancelled;
  return true;
}

void Batcher::FreeSlotLocked(uint32_t index) {
  Slot& slot = slots_[index];
  slot.state = SlotState::kFree;
  ++slot.generation;
  free_slots_.push_back(index);
}

void Batcher::ExpireLocked(uint32_t index, Batch* batch) {
  const Slot& slot = slots_[index];
  --queued_requests_;
  queued_rows_ -= slot.rows;
  level_rows_[slot.priority] -= slot.rows;
  --level_requests_[slot.priority];
  ++stats_.expired;
  batch->dropped.push_back({slot.token, StatusCode::kDeadlineExceeded});
  FreeSlotLocked(index);
}

void Batcher::PruneHeadsLocked(int64_t now, Batch* batch) {
  for (auto& level : levels_) {
    while (level.size > 0) {
      const uint32_t index = level.front();
      Slot& slot = slots_[index];
      if (slot.state == SlotState::kCancelled) {
        level.pop();
        FreeSlotLocked(index);
      } else if (slot.deadline_ns != 0 && slot.deadline_ns <= now) {
        level.pop();
        ExpireLocked(index, batch);
      } else {
        break;
      }
    }
  }
}

uint32_t Batcher::TargetRows() const {
  uint32_t target = options_.max_batch_size;
  if (!options_.preferred_batch_sizes.empty())
    target = *std::max_element(options_.preferred_batch_sizes.begin(), options_.preferred_batch_sizes.end());
  return std::min(target, batch_cap_);
}

uint32_t Batcher::AheadRowsLocked(uint32_t priority) const {
  uint32_t ahead = 0;
  for (uint32_t l = 0; l <= priority && l < level_rows_.size(); ++l) ahead += level_rows_[l];
  return ahead;
}

int64_t Batcher::EstimateCompletionLocked(int64_t now, uint32_t rows, uint32_t priority) const {
  const uint32_t cap = std::max<uint32_t>(1, batch_cap_);
  const int64_t full_ns = latency_.EstimateNs(cap);
  if (full_ns == 0) return 0;  // nothing measured yet: no basis to refuse
  // Work ahead: everything queued at this level or above, then this request,
  // in batches of `cap` rows; plus what is left of the batches executing now.
  const uint64_t total = static_cast<uint64_t>(AheadRowsLocked(priority)) + rows;
  const uint64_t full = total / cap, rest = total % cap;
  int64_t work =
      static_cast<int64_t>(full) * full_ns + (rest ? latency_.EstimateNs(static_cast<uint32_t>(rest)) : 0);
  for (size_t b = 0; b < inflight_start_ns_.size(); ++b) {
    if (inflight_start_ns_[b] == 0) continue;
    work += std::max<int64_t>(0, inflight_start_ns_[b] + latency_.EstimateNs(inflight_rows_[b]) - now);
  }
  return now + work / static_cast<int64_t>(options_.executors) + options_.slack_margin_ns;
}

int64_t Batcher::EstimateCompletionNs(uint32_t rows, uint32_t priority) const {
  std::lock_guard<std::mutex> lock(mu_);
  return EstimateCompletionLocked(NowNs(), rows, std::min(priority, options_.priority_levels - 1));
}

bool Batcher::EvictLowerLocked(uint32_t priority, uint64_t* token) {
  for (uint32_t l = options_.priority_levels; l-- > priority + 1;) {
    Ring& level = levels_[l];
    while (level.size > 0) {
      const uint32_t index = level.back();
      Slot& slot = slots_[index];
      level.pop_back();
      if (slot.state == SlotState::kCancelled) {
        FreeSlotLocked(index);
        continue;
      }
      *token = slot.token;
      --queued_requests_;
      queued_rows_ -= slot.rows;
      level_rows_[l] -= slot.rows;
      --level_requests_[l];
      ++stats_.evicted;
      FreeSlotLocked(index);
      return true;
    }
  }
  return false;
}

uint32_t Batcher::BatchCap() const {
  std::lock_guard<std::mutex> lock(mu_);
  return batch_cap_;
}

void Batcher::RefreshCap() {
  uint32_t cap = options_.max_batch_size;
  if (options_.slo_latency_ns > 0) {
    // Largest size whose estimate (plus margin) fits the SLO; unmeasured sizes
    // (estimate 0) fit until measured. Never below one row.
    cap = 1;
    for (uint32_t b = options_.max_batch_size; b >= 1; --b) {
      const int64_t est = latency_.EstimateNs(b);
      if (est + options_.slack_margin_ns <= options_.slo_latency_ns) {
        cap = b;
        break;
      }
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  batch_cap_ = cap;
}

Status Batcher::NextBatch(int64_t timeout_ns, Batch* batch) {
  batch->rows = 0;
  batch->stopped = false;
  batch->items.clear();
  batch->dropped.clear();
  const auto& o = options_;
  const int64_t give_up = timeout_ns < 0 ? kNoTime : NowNs() + timeout_ns;

  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    const int64_t now = NowNs();
    const uint32_t target = TargetRows();
    PruneHeadsLocked(now, batch);
    if (queued_requests_ == 0) {
      if (!batch->dropped.empty()) return Status::Ok();
      if (stopping_) {
        batch->stopped = true;
        return Status::Ok();
      }
      if (now >= give_up) return Status::Ok();
      if (give_up == kNoTime)
        cv_.wait(lock);
      else
        cv_.wait_until(lock, std::chrono::steady_clock::time_point(std::chrono::nanoseconds(give_up)));
      continue;
    }

    // Oldest queued request and earliest deadline among the level heads.
    int64_t oldest_ns = kNoTime, earliest_deadline = kNoTime;
    for (const auto& level : levels_) {
      if (level.size == 0) continue;
      const Slot& head = slots_[level.front()];
      oldest_ns = std::min(oldest_ns, head.enqueue_ns);
      if (head.deadline_ns != 0) earliest_deadline = std::min(earliest_deadline, head.deadline_ns);
    }
    const uint32_t batch_rows = std::min(queued_rows_, batch_cap_);
    int64_t slack_close = kNoTime;  // when the earliest deadline can no longer wait
    if (earliest_deadline != kNoTime) {
      const int64_t estimate = latency_.EstimateNs(batch_rows);
      slack_close = earliest_deadline - estimate - o.slack_margin_ns;
    }
    const int64_t window_close = o.max_queue_delay_ns == 0 ? now : oldest_ns + o.max_queue_delay_ns;
    const bool close = stopping_ || queued_rows_ >= target || now >= window_close || now >= slack_close;

    if (!close || free_buffers_.empty()) {
      if (!batch->dropped.empty()) return Status::Ok();  // report expiries without waiting
      if (now >= give_up) return Status::Ok();
      int64_t wake = std::min({window_close, slack_close, earliest_deadline, give_up});
      if (free_buffers_.empty()) wake = give_up;  // Complete() notifies
      if (wake == kNoTime)
        cv_.wait(lock);
      else
        cv_.wait_until(lock, std::chrono::steady_clock::time_point(std::chrono::nanoseconds(wake)));
      continue;
    }

    // Gather: highest level first, FIFO within a level; stop at the first request that does not fit.
    batch->slots.clear();
    uint32_t rows = 0;
    bool full = false;
    for (auto& level : levels_) {
      while (level.size > 0 && !full) {
        const uint32_t index = level.front();
        Slot& slot = slots_[index];
        if (slot.state == SlotState::kCancelled) {
          level.pop();
          FreeSlotLocked(index);
          continue;
        }
        if (slot.deadline_ns != 0 && slot.deadline_ns <= now) {
          level.pop();
          ExpireLocked(index, batch);
          continue;
        }
        if (rows > 0 && rows + slot.rows > batch_cap_) {
          full = true;
          break;
        }
        level.pop();
        slot.state = SlotState::kTaken;
        --queued_requests_;
        queued_rows_ -= slot.rows;
        level_rows_[slot.priority] -= slot.rows;
        --level_requests_[slot.priority];
        batch->items.push_back({slot.token, rows, slot.rows, slot.enqueue_ns});
        rows += slot.rows;
        batch->slots.push_back(index);
      }
      if (full) break;
    }
    if (rows == 0) continue;  // everything at the heads was dropped; look again

    const uint32_t buffer = free_buffers_.back();
    free_buffers_.pop_back();
    batch->id = next_batch_id_++;
    batch->buffer = buffer;
    batch->rows = rows;
    batch->formed_ns = now;
    inflight_start_ns_[buffer] = now;
    inflight_rows_[buffer] = rows;
    ++stats_.batches;
    stats_.rows_executed += rows;

    // Copy into the batch buffer without the lock: taken slots and the buffer are ours.
    lock.unlock();
    for (size_t k = 0; k < batch->slots.size(); ++k) {
      const Slot& slot = slots_[batch->slots[k]];
      const BatchItem& item = batch->items[k];
      for (size_t i = 0; i < o.inputs.size(); ++i) {
        const size_t row_bytes = o.inputs[i].row_bytes;
        std::memcpy(buffers_[buffer][i].data() + item.offset * row_bytes, slot.data[i].data(),
                    static_cast<size_t>(item.rows) * row_bytes);
      }
    }
    lock.lock();
    for (uint32_t index : batch->slots) FreeSlotLocked(index);
    return Status::Ok();
  }
}

uint8_t* Batcher::BufferData(uint32_t buffer, size_t input) { return buffers_[buffer][input].data(); }

void Batcher::Complete(uint32_t buffer, uint32_t rows, int64_t exec_ns) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    free_buffers_.push_back(buffer);
    inflight_start_ns_[buffer] = 0;
    inflight_rows_[buffer] = 0;
  }
  latency_.Record(rows, exec_ns);
  if (options_.slo_latency_ns > 0) RefreshCap();
  cv_.notify_all();
}

void Batcher::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
}

BatcherStats Batcher::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  BatcherStats s = stats_;
  s.queued_requests = queued_requests_;
  s.queued_rows = queued_rows_;
  return s;
}

}  // namespace steadyserve
