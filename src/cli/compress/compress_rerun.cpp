#include "compress_rerun.h"

#include <fmt/format.h>

#include <chrono>
#include <fstream>
#include <iostream>

#include "compress_stages.h"
#include "minipuzzle/atomic_file.h"
#include "minipuzzle/errors.h"

namespace minipuzzle::cli {

namespace fs = std::filesystem;
using nlohmann::json;

JobChange job_change(const CompressJob& job) {
  const CompressPaths p(job.out);
  std::error_code ec;
  if (!fs::exists(p.job_json, ec)) return {};
  const json before = json::parse(read_file(p.job_json), nullptr, false);
  if (before.is_discarded() || !before.is_object())
    throw InputError(p.job_json.string() + ": unreadable; use a new out directory");
  JobChange change;
  const json now = job.to_json();
  // A key added to the job format after this job started (absent from its
  // job.json) changes nothing while it holds its default.
  const json defaults = CompressJob{}.to_json();
  for (const auto& [key, value] : now.items()) {
    const std::optional<CompressStage> stage = first_stage_reading(key);
    if (!stage || (before.contains(key) && before[key] == value)) continue;
    if (!before.contains(key) && defaults.contains(key) && defaults[key] == value) continue;
    change.changed.push_back(fmt::format("{} (was {}, now {})", key, before.contains(key) ? before[key].dump() : "unset",
                                         value.dump()));
    if (!change.first || *stage < *change.first) change.first = stage;
  }
  return change;
}

json recorded_job(const CompressJob& job) {
  json all = job.to_json();
  json stages = json::object();
  for (int i = 0; i < kCompressStages; ++i) stages[compress_stage_name(static_cast<CompressStage>(i))] = json::object();
  for (const auto& [key, value] : all.items())
    if (const auto stage = first_stage_reading(key)) stages[compress_stage_name(*stage)][key] = value;
  all["stages"] = stages;
  return all;
}

namespace {

std::string joined(const std::vector<std::string>& items) {
  std::string s;
  for (const auto& i : items) s += (s.empty() ? "" : ", ") + i;
  return s.empty() ? "none" : s;
}

}  // namespace

void continue_changed_job(const CompressJob& job, const JobChange& change, bool apply) {
  if (!change.first) return;
  const CompressPaths p(job.out);
  const CompressStage first = *change.first;
  std::vector<std::string> kept, to_run, removed;
  for (const Stage& st : plan_stages(job))
    (st.done && st.stage < first ? kept : to_run).push_back(st.name);
  std::error_code ec;
  for (int i = static_cast<int>(first); i < kCompressStages; ++i)
    for (const fs::path& out : p.outputs_of(static_cast<CompressStage>(i)))
      if (fs::exists(fs::symlink_status(out, ec))) removed.push_back(fs::relative(out, p.out, ec).string());

  std::cout << fmt::format("{} was started with other settings: {}\n", job.out, joined(change.changed));
  std::cout << fmt::format("  the first stage they change: {}; it and every stage after it run again\n",
                           compress_stage_name(first));
  std::cout << fmt::format("  kept (finished, settings unchanged): {}\n", joined(kept));
  std::cout << fmt::format("  {}: {}\n", apply ? "will run" : "would run", joined(to_run));
  std::cout << fmt::format("  {} made with the old settings: {}\n", apply ? "removing outputs" : "would remove outputs",
                           joined(removed));
  if (!apply) return;

  // Latest stages first: until job.json is rewritten, a partly cleaned
  // directory still differs from the job and is cleaned again.
  for (int i = kCompressStages - 1; i >= static_cast<int>(first); --i)
    for (const fs::path& out : p.outputs_of(static_cast<CompressStage>(i)))
      if (!remove_tree(out))
        throw InputError(fmt::format("cannot remove {} (made with the old settings); remove it and rerun", out.string()));
  {
    std::ofstream log(p.log, std::ios::app);
    const auto now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch());
    log << json{{"stage", compress_stage_name(first)}, {"status", "settings changed"}, {"changed", change.changed},
                {"rerun", to_run}, {"unix_time", now.count()}}.dump()
        << "\n";
  }
  write_file_atomic(p.job_json, recorded_job(job).dump(2) + "\n");
}

}  // namespace minipuzzle::cli
