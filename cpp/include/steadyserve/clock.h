// Clock: the core's one source of time, injectable so tests can drive batching,
// deadlines and expiry without sleeping.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace steadyserve {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic nanoseconds (the same epoch as Python's time.monotonic_ns() for SteadyClock).
  virtual int64_t NowNs() const = 0;

  // The process-wide steady clock.
  static const Clock* Steady();
};

// A clock that moves only when told to (tests).
class ManualClock : public Clock {
 public:
  explicit ManualClock(int64_t start_ns = 1'000'000'000) : now_(start_ns) {}
  int64_t NowNs() const override { return now_.load(std::memory_order_acquire); }
  void Advance(int64_t ns) { now_.fetch_add(ns, std::memory_order_acq_rel); }

 private:
  std::atomic<int64_t> now_;
};

inline int64_t SteadyNowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace steadyserve
