#include "steadyserve/batcher.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>

namespace steadyserve {
namespace {

constexpr int64_t kNoTime = std::numeric_limits<int64_t>::max();

std::string ModelPrefix(const std::string& model) { return "model '" + model + "': "; }

}  // namespace

Status Batcher::Create(const BatcherOptions& o, RequestPool* pool, std::unique_ptr<Batcher>* out) {
  const std::string where = ModelPrefix(o.model);
  if (o.inputs.empty()) return Status(StatusCode::kInvalidArgument, where + "no inputs");
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
  if (pool == nullptr || pool->capacity() < 1)
    return Status(StatusCode::kInvalidArgument, where + "needs a request pool");
  out->reset(new Batcher(o, pool));
  return Status::Ok();
}

Batcher::Batcher(const BatcherOptions& o, RequestPool* pool)
    : options_(o), clock_(o.clock ? o.clock : Clock::Steady()), pool_(pool), latency_(o.max_batch_size) {
  // A request is in at most one ring slot at a time, withdrawn ones included
  // (they stay until popped), so rings as large as the pool never overflow.
  const uint32_t capacity = pool->capacity();
  levels_.resize(o.priority_levels);
  for (auto& level : levels_) level.items.assign(capacity, nullptr);
  queued_deadlines_.reserve(static_cast<size_t>(capacity) * 2);
  executing_deadlines_.reserve(static_cast<size_t>(capacity) * 2);
  level_rows_.assign(o.priority_levels, 0);
  level_requests_.assign(o.priority_levels, 0);
  batch_cap_ = o.max_batch_size;
  inflight_start_ns_.assign(o.executors, 0);
  inflight_rows_.assign(o.executors, 0);
  buffers_.resize(o.executors);
  sizes_.assign(o.executors, std::vector<size_t>(o.inputs.size(), 0));
  for (auto& buffer : buffers_) {
    buffer.resize(o.inputs.size());
    for (size_t i = 0; i < o.inputs.size(); ++i) buffer[i].resize(o.inputs[i].row_bytes * o.max_batch_size);
  }
  for (uint32_t b = o.executors; b-- > 0;) free_buffers_.push_back(b);
  gather_.reserve(capacity);
}

Batcher::~Batcher() {
  // Whatever is still in a ring holds the core's reference: give it back.
  for (auto& level : levels_) {
    while (level.size > 0) {
      Request* r = level.front();
      level.pop();
      r->owner.store(nullptr, std::memory_order_release);
      r->state = RequestState::kIdle;
      pool_->Release(r);
    }
  }
}

Status Batcher::Submit(Request* r, uint32_t level, Request** evicted) {
  *evicted = nullptr;
  const auto& o = options_;
  if (r->rows < 1 || r->rows > o.max_batch_size)
    return Status(StatusCode::kInvalidArgument, ModelPrefix(o.model) + "batch of " + std::to_string(r->rows) +
                                                    " rows is outside [1, max_batch_size " +
                                                    std::to_string(o.max_batch_size) + "]");
  if (level >= o.priority_levels)
    return Status(StatusCode::kInvalidArgument, ModelPrefix(o.model) + "priority level " +
                                                    std::to_string(level) + " is outside [0, " +
                                                    std::to_string(o.priority_levels - 1) + "]");
  bool new_earliest = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      ++stats_.rejected_stopped;
      return Status(StatusCode::kUnavailable, ModelPrefix(o.model) + "is stopping, not accepting requests");
    }
    const int64_t now = clock_->NowNs();
    const int64_t deadline = r->deadline_ns;
    if (deadline != 0 && deadline <= now) {
      ++stats_.rejected_deadline;
      return Status(StatusCode::kDeadlineExceeded,
                    ModelPrefix(o.model) + "deadline already passed when the request arrived");
    }
    if (deadline != 0 && o.admission_control) {
      const int64_t done = EstimateCompletionLocked(now, r->rows, level);
      if (done > deadline) {
        ++stats_.rejected_admission;
        char buf[256];
        std::snprintf(buf, sizeof(buf),
                      "would miss its deadline: estimated completion in %.2f ms (%u rows queued "
                      "ahead), deadline in %.2f ms",
                      (done - now) / 1e6, AheadRowsLocked(level), (deadline - now) / 1e6);
        return Status(StatusCode::kDeadlineExceeded, ModelPrefix(o.model) + buf);
      }
    }
    if (!o.level_max_queue.empty() && o.level_max_queue[level] != 0 &&
        level_requests_[level] >= o.level_max_queue[level]) {
      ++stats_.rejected_queue_full;
      return Status(StatusCode::kResourceExhausted,
                    ModelPrefix(o.model) + "queue of priority level " + std::to_string(level + 1) +
                        " is full: " + std::to_string(level_requests_[level]) +
                        " requests queued (max_queue_size " + std::to_string(o.level_max_queue[level]) +
                        " for this level)");
    }
    if (queued_requests_ >= o.max_queue_size) {
      if (!EvictLowerLocked(level, evicted)) {
        ++stats_.rejected_queue_full;
        return Status(StatusCode::kResourceExhausted,
                      ModelPrefix(o.model) + "queue is full: " + std::to_string(queued_requests_) +
                          " requests queued (max_queue_size " + std::to_string(o.max_queue_size) + ")");
      }
    }
    r->owner.store(this, std::memory_order_release);
    r->state = RequestState::kQueued;
    r->level = level;
    r->enqueue_ns = now;
    levels_[level].push(r);
    ++queued_requests_;
    queued_rows_ += r->rows;
    level_rows_[level] += r->rows;
    ++level_requests_[level];
    ++stats_.submitted;
    if (deadline != 0) {
      new_earliest = queued_deadlines_.empty() || deadline < queued_deadlines_.front().deadline_ns;
      PushDeadlineLocked(&queued_deadlines_, r, RequestState::kQueued);
    }
  }
  cv_.notify_one();
  if (new_earliest) reaper_cv_.notify_one();
  return Status::Ok();
}

bool Batcher::LiveLocked(const DeadlineEntry& e, RequestState state) const {
  const Request* r = e.request;
  // The generation is read first: a recycled request (even one now queued in
  // another batcher) is recognised without touching its other fields.
  if (r->generation.load(std::memory_order_acquire) != e.generation) return false;
  if (r->owner.load(std::memory_order_acquire) != this) return false;
  if (r->answered.load(std::memory_order_acquire)) return false;
  return r->state == state;
}

void Batcher::PushDeadlineLocked(std::vector<DeadlineEntry>* heap, Request* r, RequestState state) {
  if (heap->size() >= heap->capacity()) {
    // Compact rather than grow: drop entries of requests that are answered or gone.
    heap->erase(std::remove_if(heap->begin(), heap->end(),
                               [this, state](const DeadlineEntry& e) { return !LiveLocked(e, state); }),
                heap->end());
    std::make_heap(heap->begin(), heap->end(), std::greater<DeadlineEntry>());
  }
  heap->push_back({r->deadline_ns, r, r->generation.load(std::memory_order_relaxed)});
  std::push_heap(heap->begin(), heap->end(), std::greater<DeadlineEntry>());
}

void Batcher::UnqueueLocked(Request* r) {
  --queued_requests_;
  queued_rows_ -= r->rows;
  level_rows_[r->level] -= r->rows;
  --level_requests_[r->level];
}

bool Batcher::Withdraw(Request* r) {
  std::lock_guard<std::mutex> lock(mu_);
  if (r->owner.load(std::memory_order_acquire) != this || r->state != RequestState::kQueued) return false;
  r->state = RequestState::kWithdrawn;  // popped (and released) by the next pass over its ring
  UnqueueLocked(r);
  ++stats_.cancelled;
  return true;
}

void Batcher::PruneHeadsLocked(int64_t now, Batch* batch) {
  for (auto& level : levels_) {
    while (level.size > 0) {
      Request* r = level.front();
      if (r->state == RequestState::kWithdrawn) {
        level.pop();
        r->owner.store(nullptr, std::memory_order_release);
        r->state = RequestState::kIdle;
        pool_->Release(r);
      } else if (r->deadline_ns != 0 && r->deadline_ns <= now) {
        level.pop();
        UnqueueLocked(r);
        ++stats_.expired;
        r->owner.store(nullptr, std::memory_order_release);
        r->state = RequestState::kIdle;
        batch->dropped.push_back(r);
      } else {
        break;
      }
    }
  }
}

int64_t Batcher::EarliestLocked(std::vector<DeadlineEntry>* heap, RequestState state) {
  while (!heap->empty() && !LiveLocked(heap->front(), state)) {
    std::pop_heap(heap->begin(), heap->end(), std::greater<DeadlineEntry>());
    heap->pop_back();
  }
  return heap->empty() ? 0 : heap->front().deadline_ns;
}

int64_t Batcher::ExpireDue(int64_t now, std::vector<Request*>* queued, std::vector<Request*>* executing) {
  std::lock_guard<std::mutex> lock(mu_);
  auto pop = [](std::vector<DeadlineEntry>* heap) {
    Request* r = heap->front().request;
    std::pop_heap(heap->begin(), heap->end(), std::greater<DeadlineEntry>());
    heap->pop_back();
    return r;
  };
  int64_t next_queued, next_executing;
  while ((next_queued = EarliestLocked(&queued_deadlines_, RequestState::kQueued)) != 0 && next_queued <= now) {
    Request* r = pop(&queued_deadlines_);
    r->state = RequestState::kWithdrawn;  // released when its ring slot is popped
    UnqueueLocked(r);
    ++stats_.expired;
    queued->push_back(r);
  }
  while ((next_executing = EarliestLocked(&executing_deadlines_, RequestState::kTaken)) != 0 &&
         next_executing <= now)
    executing->push_back(pop(&executing_deadlines_));
  if (next_queued == 0) return next_executing;
  if (next_executing == 0) return next_queued;
  return std::min(next_queued, next_executing);
}

void Batcher::WaitLocked(std::unique_lock<std::mutex>& lock, int64_t until_ns) {
  if (until_ns == kNoTime || until_ns == 0) {
    cv_.wait(lock);
    return;
  }
  const int64_t wait = until_ns - clock_->NowNs();
  if (wait > 0) cv_.wait_for(lock, std::chrono::nanoseconds(wait));
}

void Batcher::WaitForDeadline(int64_t until_ns) {
  std::unique_lock<std::mutex> lock(mu_);
  if (reaper_stop_) return;
  // Fix (batcher_test WaitForDeadlineSeesADeadlineIndexedBeforeItWaits): a deadline
  // indexed after the reaper's ExpireDue computed until_ns notified nobody (the reaper
  // was not waiting yet); never sleep past the earliest deadline indexed now.
  const int64_t queued = EarliestLocked(&queued_deadlines_, RequestState::kQueued);
  const int64_t executing = EarliestLocked(&executing_deadlines_, RequestState::kTaken);
  for (const int64_t d : {queued, executing})
    if (d != 0 && (until_ns == 0 || d < until_ns)) until_ns = d;
  if (until_ns == 0) {
    reaper_cv_.wait(lock);
    return;
  }
  const int64_t wait = until_ns - clock_->NowNs();
  if (wait > 0) reaper_cv_.wait_for(lock, std::chrono::nanoseconds(wait));
}

uint32_t Batcher::TargetRows() const {
  uint32_t target = options_.max_batch_size;
  if (!options_.preferred_batch_sizes.empty())
    target = *std::max_element(options_.preferred_batch_sizes.begin(), options_.preferred_batch_sizes.end());
  return std::min(target, batch_cap_);
}

uint32_t Batcher::AheadRowsLocked(uint32_t level) const {
  uint32_t ahead = 0;
  for (uint32_t l = 0; l <= level && l < level_rows_.size(); ++l) ahead += level_rows_[l];
  return ahead;
}

int64_t Batcher::EstimateCompletionLocked(int64_t now, uint32_t rows, uint32_t level) const {
  const uint32_t cap = std::max<uint32_t>(1, batch_cap_);
  const int64_t full_ns = latency_.EstimateNs(cap);
  if (full_ns == 0) return 0;  // nothing measured yet: no basis to refuse
  // Work ahead: everything queued at this level or above, then this request,
  // in batches of `cap` rows; plus what is left of the batches executing now.
  const uint64_t total = static_cast<uint64_t>(AheadRowsLocked(level)) + rows;
  const uint64_t full = total / cap, rest = total % cap;
  int64_t work =
      static_cast<int64_t>(full) * full_ns + (rest ? latency_.EstimateNs(static_cast<uint32_t>(rest)) : 0);
  for (size_t b = 0; b < inflight_start_ns_.size(); ++b) {
    if (inflight_start_ns_[b] == 0) continue;
    work += std::max<int64_t>(0, inflight_start_ns_[b] + latency_.EstimateNs(inflight_rows_[b]) - now);
  }
  return now + work / static_cast<int64_t>(options_.executors) + options_.slack_margin_ns;
}

int64_t Batcher::EstimateCompletionNs(uint32_t rows, uint32_t level) const {
  std::lock_guard<std::mutex> lock(mu_);
  return EstimateCompletionLocked(clock_->NowNs(), rows, std::min(level, options_.priority_levels - 1));
}

bool Batcher::EvictLowerLocked(uint32_t level, Request** evicted) {
  for (uint32_t l = options_.priority_levels; l-- > level + 1;) {
    Ring& ring = levels_[l];
    while (ring.size > 0) {
      Request* r = ring.back();
      ring.pop_back();
      if (r->state == RequestState::kWithdrawn) {
        r->owner.store(nullptr, std::memory_order_release);
        r->state = RequestState::kIdle;
        pool_->Release(r);
        continue;
      }
      UnqueueLocked(r);
      ++stats_.evicted;
      r->owner.store(nullptr, std::memory_order_release);
      r->state = RequestState::kIdle;
      *evicted = r;
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
  const int64_t give_up = timeout_ns < 0 ? kNoTime : clock_->NowNs() + timeout_ns;

  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    const int64_t now = clock_->NowNs();
    const uint32_t target = TargetRows();
    PruneHeadsLocked(now, batch);
    if (queued_requests_ == 0) {
      if (!batch->dropped.empty()) return Status::Ok();
      if (stopping_) {
        batch->stopped = true;
        return Status::Ok();
      }
      if (now >= give_up) return Status::Ok();
      WaitLocked(lock, give_up);
      continue;
    }

    int64_t oldest_ns = kNoTime;
    for (const auto& level : levels_)
      if (level.size > 0) oldest_ns = std::min(oldest_ns, level.front()->enqueue_ns);
    // The earliest deadline of anything queued here, not just of the heads.
    const int64_t earliest = EarliestLocked(&queued_deadlines_, RequestState::kQueued);
    const uint32_t batch_rows = std::min(queued_rows_, batch_cap_);
    int64_t slack_close = kNoTime;  // when the earliest deadline can no longer wait
    if (earliest != 0) slack_close = earliest - latency_.EstimateNs(batch_rows) - o.slack_margin_ns;
    const int64_t window_close =
        o.max_queue_delay_ns == 0 || oldest_ns == kNoTime ? now : oldest_ns + o.max_queue_delay_ns;
    const bool close = stopping_ || queued_rows_ >= target || now >= window_close || now >= slack_close;

    if (!close || free_buffers_.empty()) {
      if (!batch->dropped.empty()) return Status::Ok();  // report expiries without waiting
      if (now >= give_up) return Status::Ok();
      int64_t wake = std::min({window_close, slack_close, give_up});
      if (earliest != 0) wake = std::min(wake, earliest);
      if (free_buffers_.empty()) wake = give_up;  // Complete() notifies
      WaitLocked(lock, wake);
      continue;
    }

    // Gather: highest level first, FIFO within a level; stop at the first request that does not fit.
    gather_.clear();
    uint32_t rows = 0;
    bool full = false;
    for (auto& level : levels_) {
      while (level.size > 0 && !full) {
        Request* r = level.front();
        if (r->state == RequestState::kWithdrawn) {
          level.pop();
          r->owner.store(nullptr, std::memory_order_release);
          r->state = RequestState::kIdle;
          pool_->Release(r);
          continue;
        }
        if (r->deadline_ns != 0 && r->deadline_ns <= now) {
          level.pop();
          UnqueueLocked(r);
          ++stats_.expired;
          r->owner.store(nullptr, std::memory_order_release);
          r->state = RequestState::kIdle;
          batch->dropped.push_back(r);
          continue;
        }
        if (rows > 0 && rows + r->rows > batch_cap_) {
          full = true;
          break;
        }
        level.pop();
        r->state = RequestState::kTaken;
        UnqueueLocked(r);
        if (r->deadline_ns != 0) PushDeadlineLocked(&executing_deadlines_, r, RequestState::kTaken);
        batch->items.push_back({r, rows, r->rows});
        rows += r->rows;
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

    // Copy into the batch buffer without the lock: taken requests and the buffer are ours.
    lock.unlock();
    for (size_t i = 0; i < o.inputs.size(); ++i) {
      const size_t row_bytes = o.inputs[i].row_bytes;
      std::vector<uint8_t>& dst = buffers_[buffer][i];
      if (row_bytes == 0) {  // variable-size rows: concatenated
        size_t total = 0;
        for (const auto& item : batch->items) total += item.request->inputs[i].size();
        if (dst.size() < total) dst.resize(total);
        size_t at = 0;
        for (const auto& item : batch->items) {
          const auto& src = item.request->inputs[i];
          if (!src.empty()) std::memcpy(dst.data() + at, src.data(), src.size());
          at += src.size();
        }
        sizes_[buffer][i] = total;
        continue;
      }
      for (const auto& item : batch->items) {
        const Request* r = item.request;
        const auto& src = (i < r->transformed.size() && !r->transformed[i].empty()) ? r->transformed[i]
                                                                                     : r->inputs[i];
        std::memcpy(dst.data() + static_cast<size_t>(item.offset) * row_bytes, src.data(),
                    static_cast<size_t>(item.rows) * row_bytes);
      }
      sizes_[buffer][i] = static_cast<size_t>(rows) * row_bytes;
    }
    return Status::Ok();
  }
}

uint8_t* Batcher::BufferData(uint32_t buffer, size_t input) { return buffers_[buffer][input].data(); }

size_t Batcher::BufferSize(uint32_t buffer, size_t input) const { return sizes_[buffer][input]; }

void Batcher::Complete(const Batch& batch, int64_t exec_ns) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    free_buffers_.push_back(batch.buffer);
    inflight_start_ns_[batch.buffer] = 0;
    inflight_rows_[batch.buffer] = 0;
    for (const auto& item : batch.items) {
      item.request->owner.store(nullptr, std::memory_order_release);
      item.request->state = RequestState::kIdle;
    }
  }
  if (exec_ns >= 0) latency_.Record(batch.rows, exec_ns);
  if (options_.slo_latency_ns > 0) RefreshCap();
  cv_.notify_all();
}

void Batcher::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  reaper_cv_.notify_all();
}

void Batcher::StopReaper() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    reaper_stop_ = true;
  }
  reaper_cv_.notify_all();
}

bool Batcher::ReaperStopped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reaper_stop_;
}

bool Batcher::stopping() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stopping_;
}

BatcherStats Batcher::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  BatcherStats s = stats_;
  s.queued_requests = queued_requests_;
  s.queued_rows = queued_rows_;
  s.executing = static_cast<uint32_t>(options_.executors - free_buffers_.size());
  return s;
}

}  // namespace steadyserve
