// A streamed residency plan with a chosen layout, for tests that pick the
// group and the head slice themselves (plan_residency's arithmetic has tests
// of its own).
#pragma once

#include <cstdint>

#include "minipuzzle/streamed_model.h"

namespace minipuzzle::testing {

inline ResidencyPlan streamed_plan(int64_t group_batches, int64_t head_slice_rows) {
  ResidencyPlan p;
  p.streamed = true;
  p.group_batches = group_batches;
  p.head_slice_rows = head_slice_rows;
  return p;
}

}  // namespace minipuzzle::testing
