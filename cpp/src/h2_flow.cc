#include "steadyserve/h2_flow.h"

namespace steadyserve {
namespace h2 {

ErrorCode FlowWindow::Consume(uint64_t n) {
  if (n == 0) return ErrorCode::kNoError;  // an empty DATA frame costs nothing, even on a negative window
  if (window_ < 0 || n > static_cast<uint64_t>(window_)) return ErrorCode::kFlowControlError;
  window_ -= static_cast<int64_t>(n);
  return ErrorCode::kNoError;
}

ErrorCode FlowWindow::Credit(uint32_t increment) {
  if (increment == 0) return ErrorCode::kProtocolError;
  const int64_t next = window_ + static_cast<int64_t>(increment);
  if (next > static_cast<int64_t>(kMaxWindowSize)) return ErrorCode::kFlowControlError;
  window_ = next;
  return ErrorCode::kNoError;
}

ErrorCode FlowWindow::ApplyInitialChange(uint32_t old_initial, uint32_t new_initial) {
  const int64_t next = window_ + static_cast<int64_t>(new_initial) - static_cast<int64_t>(old_initial);
  if (next > static_cast<int64_t>(kMaxWindowSize)) return ErrorCode::kFlowControlError;
  window_ = next;
  return ErrorCode::kNoError;
}

}  // namespace h2
}  // namespace steadyserve
