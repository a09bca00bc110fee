#include "steadyserve/feature_transform.h"

#include <cmath>
#include <limits>
#include <vector>

#include "check.h"

using namespace steadyserve;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
const float kNan = std::nanf("");

FeatureTransformOptions TwoFeatures() {
  FeatureTransformOptions o;
  o.model = "m";
  o.input = "x";
  o.n_features = 2;
  o.names = {"age", "income"};
  o.lo = {0.f, -kInf};
  o.hi = {100.f, kInf};
  o.range_policy = {static_cast<uint8_t>(RangePolicy::kReject), static_cast<uint8_t>(RangePolicy::kNone)};
  o.missing_policy = {static_cast<uint8_t>(MissingPolicy::kReject),
                      static_cast<uint8_t>(MissingPolicy::kImpute)};
  o.impute = {0.f, 50.f};
  o.offset = {10.f, 0.f};
  o.scale = {0.5f, 1.f};
  o.bins = 3;
  o.edges = {10.f, 20.f, 0.f,
             100.f};  // feature 0: (-inf,10) [10,20) [20,inf); feature 1: (-inf,0) [0,100) [100,inf)
  o.sub_windows = 2;
  o.sub_window_rows = 4;
  return o;
}

std::unique_ptr<FeatureTransform> Make(const FeatureTransformOptions& o) {
  std::unique_ptr<FeatureTransform> t;
  Status s = FeatureTransform::Create(o, &t);
  if (!s.ok()) std::fprintf(stderr, "%s\n", s.ToString().c_str());
  CHECK(s.ok());
  return t;
}

}  // namespace

TEST(ScalesImputesAndCounts) {
  auto t = Make(TwoFeatures());
  std::vector<float> x = {12.f, kNan, 30.f, 150.f};
  std::vector<float> y(4);
  CHECK(t->Apply(x.data(), y.data(), 2).ok());
  CHECK_EQ(y[0], 1.f);   // (12 - 10) * 0.5
  CHECK_EQ(y[1], 50.f);  // NaN imputed with 50
  CHECK_EQ(y[2], 10.f);  // (30 - 10) * 0.5
  CHECK_EQ(y[3], 150.f);
  DriftSnapshot s = t->Snapshot();
  CHECK_EQ(s.rows, uint64_t{2});
  CHECK_EQ(s.counts[0 * 3 + 1], uint64_t{1});  // 12 in [10, 20)
  CHECK_EQ(s.counts[0 * 3 + 2], uint64_t{1});  // 30 in [20, inf)
  CHECK_EQ(s.counts[1 * 3 + 2], uint64_t{1});  // 150 in [100, inf); the NaN is not binned
  CHECK_EQ(s.missing[1], uint64_t{1});
}

TEST(RejectionNamesRowFeatureValueAndRule) {
  auto t = Make(TwoFeatures());
  std::vector<float> x = {12.f, 1.f, 101.f, 1.f};
  std::vector<float> y(4);
  Status s = t->Apply(x.data(), y.data(), 2);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_CONTAINS(s.message(), "input 'x' row 1, feature 'age' (index 0): value 101 is outside [0, 100]");
  x = {kInf, 1.f};
  s = t->Apply(x.data(), y.data(), 1);
  CHECK_CONTAINS(s.message(), "row 0, feature 'age' (index 0): value inf is not allowed");
  // Rejected requests leave no counts behind.
  CHECK_EQ(t->Snapshot().rows, uint64_t{0});
}

TEST(ClipPolicyClampsAndCountsOutOfRange) {
  auto o = TwoFeatures();
  o.range_policy[0] = static_cast<uint8_t>(RangePolicy::kClip);
  auto t = Make(o);
  std::vector<float> x = {-5.f, 1.f, 500.f, 1.f};
  std::vector<float> y(4);
  CHECK(t->Apply(x.data(), y.data(), 2).ok());
  CHECK_EQ(y[0], -5.f);  // clipped to 0: (0 - 10) * 0.5
  CHECK_EQ(y[2], 45.f);  // clipped to 100: (100 - 10) * 0.5
  CHECK_EQ(t->Snapshot().out_of_range[0], uint64_t{2});
}

TEST(InPlaceTransformWorks) {
  auto t = Make(TwoFeatures());
  std::vector<float> x = {20.f, 3.f};
  CHECK(t->Apply(x.data(), x.data(), 1).ok());
  CHECK_EQ(x[0], 5.f);
  CHECK_EQ(x[1], 3.f);
}

TEST(WindowSlidesBySubWindows) {
  auto t = Make(TwoFeatures());  // 2 sub-windows of 4 rows: the window holds 4..8 rows
  std::vector<float> row = {15.f, 1.f};
  std::vector<float> y(2);
  for (int i = 0; i < 8; ++i) CHECK(t->Apply(row.data(), y.data(), 1).ok());
  // After 8 rows the oldest sub-window was dropped when the 8th row closed the second.
  CHECK_EQ(t->Snapshot().rows, uint64_t{4});
  for (int i = 0; i < 3; ++i) CHECK(t->Apply(row.data(), y.data(), 1).ok());
  CHECK_EQ(t->Snapshot().rows, uint64_t{7});
  t->Reset();
  CHECK_EQ(t->Snapshot().rows, uint64_t{0});
}

TEST(ObserveCountsOutputs) {
  auto t = Make(TwoFeatures());
  std::vector<float> out = {5.f, kNan};
  t->Observe(out.data(), 1);
  DriftSnapshot s = t->Snapshot();
  CHECK_EQ(s.counts[0], uint64_t{1});
  CHECK_EQ(s.missing[1], uint64_t{1});
}

TEST(CreateValidates) {
  std::unique_ptr<FeatureTransform> t;
  auto o = TwoFeatures();
  o.edges = {20.f, 10.f, 0.f, 100.f};
  CHECK_CONTAINS(FeatureTransform::Create(o, &t).message(), "ascending");
  o = TwoFeatures();
  o.lo[0] = 5.f;
  o.hi[0] = 1.f;
  CHECK_CONTAINS(FeatureTransform::Create(o, &t).message(), "is empty");
  o = TwoFeatures();
  o.scale.pop_back();
  CHECK_CONTAINS(FeatureTransform::Create(o, &t).message(), "needs 2 values");
}

TEST_MAIN()
