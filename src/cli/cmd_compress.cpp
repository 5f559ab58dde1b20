// minipuzzle compress JOB.yaml [--set key=value ...] [--dry-run]
// The whole chain from one job file: score -> search (+ rank on data) ->
// prune and short-distill the top candidates -> pick -> long distill ->
// export -> compare -> report. Rerunning resumes at the first stage whose
// outputs are missing (see compress/compress_stages.h).
#include <fmt/format.h>

#include <cstdlib>
#include <iostream>

#include "cli_common.h"
#include "commands.h"
#include "compress/compress_job.h"
#include "compress/compress_preflight.h"
#include "compress/compress_stages.h"
#include "minipuzzle/errors.h"

namespace minipuzzle::cli {

int cmd_compress(const Args& args) {
  std::string keys;
  for (const auto& [k, what] : compress_job_keys()) keys += fmt::format("  {:<36} {}\n", k, what);
  const std::string usage =
      "minipuzzle compress JOB.yaml [--set key=value ...] [--dry-run]\n\n"
      "Job keys (YAML, nested by the dots; each also settable with --set):\n" + keys;
  po::options_description opts("options");
  opts.add_options()
      ("job", po::value<std::string>(), "job file (YAML); examples/ holds some")
      ("set", po::value<std::vector<std::string>>()->composing(), "override one key, e.g. --set search.budget=20GiB (repeatable)")
      ("dry-run", po::bool_switch(), "print the plan (stages, candidates' memory, tokens, estimated time) and exit");
  po::positional_options_description pos;
  pos.add("job", 1);
  po::variables_map vm;
  if (!parse_args(usage, args, opts, pos, vm)) return 0;
  require(vm, "job", usage);
  const bool dry_run = vm["dry-run"].as<bool>();
  const std::vector<std::string> sets = vm.count("set") ? vm["set"].as<std::vector<std::string>>() : std::vector<std::string>{};
  if (const char* ws = std::getenv("WORLD_SIZE"); ws && std::string(ws) != "1")
    throw InputError("compress runs as one process, not under torchrun or SLURM (WORLD_SIZE is set): it starts "
                     "the distillation ranks itself, one per GPU, with distill.processes: N in the job");

  const CompressJob job = load_compress_job(vm["job"].as<std::string>(), sets, dry_run);
  if (dry_run) return print_dry_run(job);
  prepare_job_directory(job);
  return run_compress(job);
}

}  // namespace minipuzzle::cli
