// CompletionQueue: answered requests on their way to an asyncio event loop.
//
// The core (any thread) pushes answered requests; the loop drains them all at
// once. The queue owns an eventfd that becomes readable when it goes from
// empty to non-empty, so one wake-up covers every answer of a batch: the loop
// watches the fd (loop.add_reader) and drains on each wake-up. No Python runs
// on the core's threads.
#pragma once

#include <mutex>
#include <vector>

namespace steadyserve {

struct Request;

class CompletionQueue {
 public:
  CompletionQueue();
  ~CompletionQueue();
  CompletionQueue(const CompletionQueue&) = delete;
  CompletionQueue& operator=(const CompletionQueue&) = delete;

  // The fd to watch for readability (-1 if eventfd is unavailable: then poll Drain).
  int fd() const { return fd_; }

  void Push(Request* r);
  // Moves every queued request into *out (cleared first) and resets the fd.
  void Drain(std::vector<Request*>* out);

 private:
  int fd_ = -1;
  std::mutex mu_;
  std::vector<Request*> items_;
};

}  // namespace steadyserve
