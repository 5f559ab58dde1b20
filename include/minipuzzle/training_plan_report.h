// What `minipuzzle distill --plan` prints (a table or JSON) and the one line
// with which `distill` refuses a job that does not fit: the planner's
// figures (training_memory_plan.h) with the smallest world size per shard
// level and the smallest shard level at the job's world size.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "minipuzzle/training_memory_plan.h"

namespace minipuzzle {

struct PlanSources {
  std::string teacher;  // as given (config.json or checkpoint directory); empty without a teacher
  std::string student;
  std::string teacher_cache;      // empty without a cache
  std::optional<double> device_bytes;  // the device to fit; none: no verdict
  std::string device_label;            // how it was given ("--device-memory 80GB", "cuda:0")
};

nlohmann::json training_plan_json(const TrainingJob& job, const TrainingMemoryPlan& plan, const PlanSources& src);
std::string training_plan_text(const TrainingJob& job, const TrainingMemoryPlan& plan, const PlanSources& src);

// "the job needs X per rank (...) but the device holds Y; smallest world size
// that fits at --shard L: N; smallest shard level that fits at N ranks: L"
// -- one line, for an InputError.
std::string plan_refusal(const TrainingJob& job, const TrainingMemoryPlan& plan, double device_bytes,
                         const std::string& device_label);

}  // namespace minipuzzle
