#include "steadyserve/clock.h"

namespace steadyserve {
namespace {

class SteadyClock : public Clock {
 public:
  int64_t NowNs() const override { return SteadyNowNs(); }
};

}  // namespace

const Clock* Clock::Steady() {
  static const SteadyClock clock;
  return &clock;
}

}  // namespace steadyserve
