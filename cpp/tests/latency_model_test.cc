#include "steadyserve/latency_model.h"

#include "check.h"

using steadyserve::LatencyModel;

TEST(EmptyModelEstimatesZero) {
  LatencyModel m(8);
  CHECK_EQ(m.EstimateNs(1), 0);
  CHECK_EQ(m.EstimateNs(8), 0);
}

TEST(QuantileIgnoresOneOutlier) {
  LatencyModel m(4, /*window=*/10, /*quantile=*/0.9);
  for (int i = 0; i < 9; ++i) m.Record(2, 1000);
  m.Record(2, 1000000);  // one stall in ten: the p90 stays at the typical value
  CHECK_EQ(m.EstimateNs(2), 1000);
  m.Record(2, 1000000);  // two in ten: now it is the p90
  CHECK_EQ(m.EstimateNs(2), 1000000);
}

TEST(WindowForgetsOldSamples) {
  LatencyModel m(2, /*window=*/4, /*quantile=*/1.0);
  for (int i = 0; i < 4; ++i) m.Record(1, 5000);
  for (int i = 0; i < 4; ++i) m.Record(1, 100);
  CHECK_EQ(m.EstimateNs(1), 100);
  CHECK_EQ(m.SampleCount(1), 4u);
}

TEST(InterpolatesAndExtrapolates) {
  LatencyModel m(64, 8, 1.0);
  m.Record(8, 800);
  m.Record(16, 1600);
  CHECK_EQ(m.EstimateNs(12), 1200);    // linear between measured neighbours
  CHECK_EQ(m.EstimateNs(4), 800);      // below the smallest measured: not cheaper than it
  CHECK_EQ(m.EstimateNs(32), 3200);    // above the largest: proportional to rows
  CHECK_EQ(m.EstimateNs(1000), 6400);  // clamped to max_batch_size
}

TEST(IgnoresOutOfRangeRecords) {
  LatencyModel m(4);
  m.Record(0, 10);
  m.Record(5, 10);
  m.Record(1, -3);
  CHECK_EQ(m.EstimateNs(1), 0);
}

TEST_MAIN()
