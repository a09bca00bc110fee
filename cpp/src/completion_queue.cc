#include "steadyserve/completion_queue.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>

namespace steadyserve {

CompletionQueue::CompletionQueue() { fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

CompletionQueue::~CompletionQueue() {
  if (fd_ >= 0) close(fd_);
}

void CompletionQueue::Push(Request* r) {
  bool was_empty;
  {
    std::lock_guard<std::mutex> lock(mu_);
    was_empty = items_.empty();
    items_.push_back(r);
  }
  if (was_empty && fd_ >= 0) {
    const uint64_t one = 1;
    // A full counter (never, at 2^64 - 2) or EAGAIN only means the fd is readable already.
    [[maybe_unused]] ssize_t n = write(fd_, &one, sizeof(one));
  }
}

void CompletionQueue::Drain(std::vector<Request*>* out) {
  out->clear();
  if (fd_ >= 0) {
    uint64_t value;
    [[maybe_unused]] ssize_t n = read(fd_, &value, sizeof(value));
  }
  std::lock_guard<std::mutex> lock(mu_);
  out->swap(items_);
}

}  // namespace steadyserve
