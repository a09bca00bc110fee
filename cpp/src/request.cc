#include "steadyserve/request.h"

#include <chrono>

#include "steadyserve/completion_queue.h"

namespace steadyserve {

void Request::Deliver() {
  if (cq != nullptr) {
    cq->Push(this);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(wait_mu);
    delivered = true;
  }
  wait_cv.notify_one();
}

bool Request::Wait(int64_t timeout_ns) {
  std::unique_lock<std::mutex> lock(wait_mu);
  if (timeout_ns < 0) {
    wait_cv.wait(lock, [this] { return delivered; });
    return true;
  }
  return wait_cv.wait_for(lock, std::chrono::nanoseconds(timeout_ns), [this] { return delivered; });
}

RequestPool::RequestPool(uint32_t capacity) : capacity_(capacity) {
  all_.reserve(capacity);
  free_.reserve(capacity);
}

Request* RequestPool::Acquire() {
  Request* r;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!free_.empty()) {
      r = free_.back();
      free_.pop_back();
    } else if (all_.size() < capacity_) {
      all_.push_back(std::make_unique<Request>());
      r = all_.back().get();
      r->index = static_cast<uint32_t>(all_.size() - 1);
    } else {
      return nullptr;
    }
  }
  r->refs.store(2, std::memory_order_relaxed);
  r->answered.store(false, std::memory_order_relaxed);
  r->owner.store(nullptr, std::memory_order_relaxed);
  r->state = RequestState::kIdle;
  r->code = StatusCode::kOk;
  r->message.clear();
  r->response.clear();
  r->n_outputs = 0;
  r->answered_by.clear();
  r->answered_version.clear();
  r->failover = r->default_output = r->probe = false;
  r->failover_reasons.clear();
  r->link = 0;
  r->output_mask = 0;
  r->deadline_ns = 0;
  r->priority = 0;
  r->cq = nullptr;
  r->user_tag = 0;
  r->delivered = false;
  r->wire = false;
  r->id.clear();
  r->request_id.clear();
  r->log_drawn = r->logged = false;
  r->version.clear();
  return r;
}

void RequestPool::Release(Request* r) {
  if (r->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  r->generation.fetch_add(1, std::memory_order_acq_rel);
  std::lock_guard<std::mutex> lock(mu_);
  free_.push_back(r);
}

Request* RequestPool::Find(uint64_t handle) {
  const uint32_t index = static_cast<uint32_t>(handle & 0xffffffffu);
  const uint32_t generation = static_cast<uint32_t>(handle >> 32);
  std::lock_guard<std::mutex> lock(mu_);
  if (index >= all_.size()) return nullptr;
  Request* r = all_[index].get();
  if (r->generation.load(std::memory_order_acquire) != generation) return nullptr;
  return r;
}

uint32_t RequestPool::in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<uint32_t>(all_.size() - free_.size());
}

}  // namespace steadyserve
