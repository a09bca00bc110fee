// A flow-control window of HTTP/2 (RFC 9113 section 5.2 and 6.9): one per
// connection and one per stream, on each side (what we may send, what the peer
// may send us).
//
// The window is signed: a SETTINGS_INITIAL_WINDOW_SIZE that shrinks while
// data is in flight can leave a stream's send window below zero, and it then
// has to be credited back above zero before more DATA goes out. It may never
// exceed 2^31-1; an update that would take it there is a FLOW_CONTROL_ERROR
// (a connection error on the connection window, a stream error on a stream's;
// from a SETTINGS change, a connection error either way).
#pragma once

#include <cstdint>

#include "steadyserve/h2_frame.h"

namespace steadyserve {
namespace h2 {

class FlowWindow {
 public:
  explicit FlowWindow(int64_t initial = kDefaultInitialWindowSize) : window_(initial) {}

  int64_t available() const { return window_; }
  // What can be spent now: max(available, 0).
  uint64_t sendable() const { return window_ > 0 ? static_cast<uint64_t>(window_) : 0; }

  // Spends n bytes: DATA sent, or DATA received (its full frame length,
  // padding included). More than the window: kFlowControlError, and the
  // window is unchanged. Otherwise kNoError.
  ErrorCode Consume(uint64_t n);
  // A WINDOW_UPDATE increment. 0: kProtocolError; past 2^31-1:
  // kFlowControlError (window unchanged). Otherwise kNoError.
  ErrorCode Credit(uint32_t increment);
  // A change of SETTINGS_INITIAL_WINDOW_SIZE from old_initial to new_initial
  // applied to an open stream's window (it may go negative). Past 2^31-1:
  // kFlowControlError (window unchanged). Otherwise kNoError.
  ErrorCode ApplyInitialChange(uint32_t old_initial, uint32_t new_initial);

 private:
  int64_t window_;
};

}  // namespace h2
}  // namespace steadyserve
