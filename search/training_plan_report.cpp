#include "minipuzzle/training_plan_report.h"

#include <fmt/format.h>

namespace minipuzzle {
using nlohmann::json;

namespace {

std::string billions(const ParamCounts& p) { return fmt::format("{:.2f}B", static_cast<double>(p.total) / 1e9); }

const char* block_name(LayerType t) {
  switch (t) {
    case LayerType::Mamba: return "mamba";
    case LayerType::Attention: return "attention";
    case LayerType::Mlp: return "mlp";
    case LayerType::Moe: return "moe";
  }
  return "?";
}

std::string world_text(const std::optional<int>& n) { return n ? std::to_string(*n) : "no world size fits"; }

std::string level_text(const std::optional<ShardLevel>& l) {
  return l ? shard_level_name(*l) : "no level fits";
}

std::string ranks(int n) { return fmt::format("{} rank{}", n, n == 1 ? "" : "s"); }

json bytes_json(const RankBytes& b) {
  return {{"teacher_weights", b.teacher_weights},
          {"student_weights", b.student_weights},
          {"gathered_blocks", b.gathered_blocks},
          {"gradients", b.gradients},
          {"master", b.master},
          {"moments", b.moments},
          {"activations", b.activations},
          {"kd_loss", b.kd_loss},
          {"teacher_cache_batch", b.teacher_cache_batch},
          {"buckets", b.buckets},
          {"bucket_scratch", b.bucket_scratch},
          {"optimizer_scratch", b.optimizer_scratch},
          {"step_peak", b.step_peak},
          {"persistent", b.persistent()},
          {"peak", b.peak()}};
}

json activations_json(const ActivationBreakdown& a) {
  json blocks = json::array();
  for (const auto& b : a.blocks)
    blocks.push_back({{"type", block_name(b.type)},
                      {"count", b.count},
                      {"saved", b.saved},
                      {"checkpointed", b.checkpointed},
                      {"forward_transient", b.forward_transient},
                      {"backward_scratch", b.backward_scratch}});
  return {{"blocks", blocks},
          {"kept", a.kept},
          {"recompute", a.recompute},
          {"transient", a.transient},
          {"final_norm", a.final_norm},
          {"teacher_hidden", a.teacher_hidden},
          {"teacher_forward", a.teacher_forward},
          {"tokens", a.tokens},
          {"forward_peak", a.forward_peak},
          {"backward_peak", a.backward_peak},
          {"total", a.total()}};
}

}  // namespace

json training_plan_json(const TrainingJob& job, const TrainingMemoryPlan& plan, const PlanSources& src) {
  json j = {{"world_size", plan.world_size},
            {"shard", shard_level_name(plan.shard)},
            {"dtype", precision_name(job.dtype)},
            {"seq_len", job.seq_len},
            {"micro_batch", job.micro_batch},
            {"activation_checkpointing", job.activation_checkpointing},
            {"ops", training_ops_name(job.ops)},
            {"overlap_all_reduce", job.overlap_all_reduce},
            {"bucket_bytes", job.bucket_bytes},
            {"student", {{"source", src.student}, {"parameters", plan.student_params.total}}},
            {"teacher", nullptr},
            {"teacher_cache", nullptr},
            {"bytes", bytes_json(plan.bytes)},
            {"activations", activations_json(plan.activations)},
            {"kd_loss", {{"held", plan.kd.held}, {"chunk", plan.kd.chunk}, {"chunk_tokens", plan.kd.chunk_tokens}}},
            {"largest_bucket", plan.largest_bucket}};
  if (plan.teacher_params) j["teacher"] = {{"source", src.teacher}, {"parameters", plan.teacher_params->total}};
  if (job.cache_top_k > 0) j["teacher_cache"] = {{"source", src.teacher_cache}, {"k", job.cache_top_k}};
  if (src.device_bytes) {
    const double dev = *src.device_bytes;
    j["device_bytes"] = dev;
    j["fits"] = plan.fits(dev);
    json smallest = json::object();
    for (ShardLevel l : kShardLevels) {
      const auto n = smallest_world_size(job, l, dev);
      smallest[shard_level_name(l)] = n ? json(*n) : json(nullptr);
    }
    j["smallest_world_size"] = smallest;
    const auto level = smallest_shard_level(job, plan.world_size, dev);
    j["smallest_shard_level"] = level ? json(shard_level_name(*level)) : json(nullptr);
  }
  return j;
}

std::string training_plan_text(const TrainingJob& job, const TrainingMemoryPlan& plan, const PlanSources& src) {
  const RankBytes& b = plan.bytes;
  const ActivationBreakdown& a = plan.activations;
  std::string out = "distillation memory plan, per rank, from the configs alone\n";
  if (plan.teacher_params)
    out += fmt::format("  teacher  {} ({} parameters){}\n", src.teacher, billions(*plan.teacher_params),
                       job.cache_top_k > 0 ? ", loaded for evaluation only" : "");
  if (job.cache_top_k > 0) out += fmt::format("  cache    {} (top-{} logits per token)\n", src.teacher_cache, job.cache_top_k);
  out += fmt::format("  student  {} ({} parameters)\n", src.student, billions(plan.student_params));
  out += fmt::format("  job      {} ranks, --shard {}, {}, seq-len {} x micro-batch {}, activation checkpointing {}, "
                     "ops {}\n",
                     plan.world_size, shard_level_name(plan.shard), precision_name(job.dtype),
                     job.seq_len, job.micro_batch, job.activation_checkpointing ? "on" : "off",
                     training_ops_name(job.ops));
  auto row = [&](const std::string& name, double bytes, const std::string& note = "") {
    out += fmt::format("  {:<26}{:>12}{}\n", name, format_bytes(bytes), note.empty() ? "" : "   " + note);
  };
  row("teacher weights", b.teacher_weights);
  row("student weights", b.student_weights);
  row("gathered-block buffers", b.gathered_blocks);
  row("gradients", b.gradients);
  row("fp32 master", b.master, b.master == 0 && plan.shard == ShardLevel::None && job.dtype == Precision::Fp32
                                   ? "(fp32 weights are their own master)"
                                   : "");
  row("moments (2 x fp32)", b.moments);
  row("activations", b.activations, job.activation_checkpointing ? "(checkpointed)" : "(no checkpointing)");
  for (const auto& blk : a.blocks)
    out += fmt::format("    {:>3} x {:<10} saved {} each without checkpointing, {} with; transient {} forward, {} "
                       "backward\n",
                       blk.count, block_name(blk.type), format_bytes(blk.saved), format_bytes(blk.checkpointed),
                       format_bytes(blk.forward_transient), format_bytes(blk.backward_scratch));
  out += fmt::format("    kept {}, recompute {}, transient {}, final norm {}, teacher output {}, teacher block {}, "
                     "tokens {}; peaks: forward {}, backward {}\n",
                     format_bytes(a.kept), format_bytes(a.recompute), format_bytes(a.transient),
                     format_bytes(a.final_norm), format_bytes(a.teacher_hidden), format_bytes(a.teacher_forward),
                     format_bytes(a.tokens), format_bytes(a.forward_peak), format_bytes(a.backward_peak));
  row("KD loss", b.kd_loss,
      fmt::format("(held {}, chunk of {} tokens {})", format_bytes(plan.kd.held), plan.kd.chunk_tokens,
                  format_bytes(plan.kd.chunk)));
  if (b.teacher_cache_batch > 0) row("teacher-cache batch", b.teacher_cache_batch);
  row("communication buckets", b.buckets,
      plan.world_size == 1 ? "(one rank: no collectives)"
      : b.bucket_scratch > 0
          ? fmt::format("(+ {} while a bucket is concatenated; after backward, not with the activations)",
                        format_bytes(b.bucket_scratch))
          : "(after backward, not with the activations)");
  if (b.optimizer_scratch > 0) row("optimizer step scratch", b.optimizer_scratch);
  row("peak", b.peak(),
      fmt::format("= persistent {} + max(step {}, buckets {}, optimizer {})", format_bytes(b.persistent()),
                  format_bytes(b.step_peak), format_bytes(b.buckets + b.bucket_scratch),
                  format_bytes(b.optimizer_scratch)));
  if (src.device_bytes) {
    const double dev = *src.device_bytes;
    const double peak = b.peak();
    out += fmt::format("  device {}: {}\n", format_bytes(dev),
                       peak <= dev ? fmt::format("fits ({} to spare)", format_bytes(dev - peak))
                                   : fmt::format("does NOT fit ({} short)", format_bytes(peak - dev)));
    out += "  smallest world size that fits:";
    for (ShardLevel l : kShardLevels)
      out += fmt::format(" --shard {}: {}{}", shard_level_name(l), world_text(smallest_world_size(job, l, dev)),
                         l == ShardLevel::Parameters ? "" : ";");
    out += fmt::format("\n  smallest shard level that fits at {}: {}\n", ranks(plan.world_size),
                       level_text(smallest_shard_level(job, plan.world_size, dev)));
  }
  return out;
}

std::string plan_refusal(const TrainingJob& job, const TrainingMemoryPlan& plan, double device_bytes,
                         const std::string& device_label) {
  return fmt::format(
      "the job needs {} per rank at {} with --shard {} but {} holds {}; smallest world size that fits at --shard {}: "
      "{}; smallest shard level that fits at {}: {} (see `minipuzzle distill --plan`)",
      format_bytes(plan.bytes.peak()), ranks(plan.world_size), shard_level_name(plan.shard), device_label,
      format_bytes(device_bytes), shard_level_name(plan.shard),
      world_text(smallest_world_size(job, plan.shard, device_bytes)), ranks(plan.world_size),
      level_text(smallest_shard_level(job, plan.world_size, device_bytes)));
}

}  // namespace minipuzzle
