#include "minipuzzle/training_memory_plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>

#include "minipuzzle/errors.h"

namespace minipuzzle {

const char* shard_level_name(ShardLevel level) {
  switch (level) {
    case ShardLevel::None: return "none";
    case ShardLevel::Optimizer: return "optimizer";
    case ShardLevel::Gradients: return "gradients";
    case ShardLevel::Parameters: return "parameters";
  }
  return "?";
}

ShardLevel parse_shard_level(const std::string& text, const std::string& what) {
  std::string s;
  for (char ch : text) s.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(ch))));
  for (ShardLevel l : kShardLevels)
    if (s == shard_level_name(l)) return l;
  throw InputError(what + ": unknown shard level '" + text + "'; expected none, optimizer, gradients or parameters");
}

void TrainingJob::validate() const {
  if (dtype != Precision::Bf16 && dtype != Precision::Fp32)
    throw InputError(fmt::format("training dtype {}: the trainer computes in fp32 or bf16", precision_name(dtype)));
  if (seq_len <= 0) throw InputError("--seq-len must be positive");
  if (micro_batch <= 0) throw InputError("--micro-batch must be positive");
  if (kd_chunk_tokens < 0) throw InputError("--chunk-tokens must be >= 0");
  if (bucket_bytes < 1) throw InputError("bucket bytes must be positive");
  if (cache_top_k < 0) throw InputError("teacher cache k must be >= 0");
  if (!teacher && cache_top_k == 0) throw InputError("give --teacher, --teacher-cache or both");
  if (cache_top_k > student.vocab_size)
    throw InputError(fmt::format("teacher cache k = {} exceeds the student's vocabulary {}", cache_top_k,
                                 student.vocab_size));
  if (teacher && teacher->vocab_size != student.vocab_size)
    throw InputError(fmt::format("teacher vocab {} != student vocab {}: distillation needs the same tokenizer",
                                 teacher->vocab_size, student.vocab_size));
}

double RankBytes::peak() const {
  return persistent() + std::max({step_peak, buckets + bucket_scratch, optimizer_scratch});
}

namespace {

// Layer i's parameter tensors in named_parameters order. `frozen`: also the
// MoE router's e_score_correction_bias, a parameter that is never trained
// (no gradient, not in the optimizer) but is part of a sharded unit.
void append_layer_numels(const ModelConfig& c, int64_t i, std::vector<int64_t>& out, bool frozen) {
  const int64_t D = c.hidden_size;
  {
    out.push_back(D);  // the block's norm
    switch (c.layer_type(i)) {
      case LayerType::Mamba: {
        // The mixer's own parameters (A_log, D, dt_bias) come before its
        // submodules' in LibTorch's named_parameters.
        const int64_t H = c.mamba_num_heads, C = c.mamba_conv_dim();
        for (int k = 0; k < 3; ++k) out.push_back(H);
        out.push_back(c.mamba_in_proj_dim() * D);
        out.push_back(C * c.conv_kernel);
        if (c.use_conv_bias) out.push_back(C);
        out.push_back(c.mamba_d_inner());           // gated norm
        out.push_back(D * c.mamba_d_inner());       // out_proj
        break;
      }
      case LayerType::Attention:
        out.push_back(c.attention_q_dim() * D);
        out.push_back(c.attention_kv_dim() * D);
        out.push_back(c.attention_kv_dim() * D);
        out.push_back(D * c.attention_q_dim());
        break;
      case LayerType::Mlp:
        out.push_back(c.intermediate_size * D);
        out.push_back(D * c.intermediate_size);
        break;
      case LayerType::Moe: {
        // moe_mixer.cpp's registration order: gate (weight, bias), every
        // expert's up and down, the shared expert, the latent projections.
        const int64_t E = c.n_routed_experts, F = c.moe_intermediate_size, Din = c.moe_expert_input_dim();
        out.push_back(E * D);
        if (frozen) out.push_back(E);
        for (int64_t e = 0; e < E; ++e) {
          out.push_back(F * Din);
          out.push_back(Din * F);
        }
        out.push_back(c.moe_shared_expert_intermediate_size * D);
        out.push_back(D * c.moe_shared_expert_intermediate_size);
        if (c.moe_latent_size > 0) {
          out.push_back(c.moe_latent_size * D);
          out.push_back(D * c.moe_latent_size);
        }
        break;
      }
    }
  }
}

}  // namespace

std::vector<int64_t> parameter_numels_in_order(const ModelConfig& c) {
  const int64_t D = c.hidden_size;
  std::vector<int64_t> out;
  out.push_back(c.vocab_size * D);  // backbone.embeddings
  for (int64_t i = 0; i < c.num_layers(); ++i) append_layer_numels(c, i, out, /*frozen=*/false);
  out.push_back(D);  // norm_f
  if (!c.tie_word_embeddings) out.push_back(c.vocab_size * D);  // lm_head
  return out;
}

std::vector<int64_t> parameter_unit_numels(const ModelConfig& c) {
  const int64_t D = c.hidden_size;
  std::vector<int64_t> out = {c.vocab_size * D};
  for (int64_t i = 0; i < c.num_layers(); ++i) {
    std::vector<int64_t> layer;
    append_layer_numels(c, i, layer, /*frozen=*/true);
    int64_t sum = 0;
    for (int64_t n : layer) sum += n;
    out.push_back(sum);
  }
  out.push_back(D + (c.tie_word_embeddings ? 0 : c.vocab_size * D));
  return out;
}

std::vector<double> gradient_bucket_bytes(const ModelConfig& c, int64_t bucket_bytes) {
  // gradient_buckets.cpp's make_buckets: consecutive tensors while the
  // bucket stays within `bucket_bytes`; a tensor larger than that gets a
  // bucket of its own. All gradients travel in fp32.
  std::vector<double> out;
  double fill = 0;
  for (int64_t numel : parameter_numels_in_order(c)) {
    const double size = 4.0 * static_cast<double>(numel);
    if (out.empty() || (fill > 0 && fill + size > static_cast<double>(bucket_bytes))) {
      out.push_back(0);
      fill = 0;
    }
    out.back() += size;
    fill += size;
  }
  return out;
}

namespace {

// The most elements of two neighbouring units (sharded_parameters.cpp
// gathers a unit while the one before it runs, in forward and in backward,
// and reduces two units' gradients at most at once).
int64_t largest_unit_pair(const ModelConfig& c) {
  const auto u = parameter_unit_numels(c);
  int64_t most = u.front();
  for (std::size_t i = 1; i < u.size(); ++i) most = std::max(most, u[i - 1] + u[i]);
  return most;
}

// sharded_parameters.cpp's reduce_unit: the most fp32 elements of two
// buckets in flight together. Backward reduces the head, the blocks from the
// last to the first, then the embedding; each unit is cut in flat order into
// buckets of bucket_bytes / 4 elements, the last one shorter.
int64_t largest_reduce_bucket_pair(const ModelConfig& c, int64_t bucket_bytes) {
  const int64_t bucket = std::max<int64_t>(1, bucket_bytes / 4);
  const auto u = parameter_unit_numels(c);
  std::vector<int64_t> sizes;
  for (auto it = u.rbegin(); it != u.rend(); ++it)
    for (int64_t a = 0; a < *it; a += bucket) sizes.push_back(std::min(bucket, *it - a));
  int64_t most = sizes.front();
  for (std::size_t i = 1; i < sizes.size(); ++i) most = std::max(most, sizes[i - 1] + sizes[i]);
  return most;
}

int64_t largest_tensor(const ModelConfig& c) {
  const auto n = parameter_numels_in_order(c);
  return *std::max_element(n.begin(), n.end());
}

ActivationBreakdown activation_breakdown(const TrainingJob& job, const ActivationSetting& s) {
  ActivationBreakdown a;
  const ModelConfig& c = job.student;
  const bool ckpt = job.activation_checkpointing;
  const double input = block_input_bytes(c, s);
  for (LayerType t : {LayerType::Mamba, LayerType::Attention, LayerType::Mlp, LayerType::Moe}) {
    if (c.count(t) == 0) continue;
    BlockActivations b;
    b.type = t;
    b.count = c.count(t);
    b.saved = block_saved_bytes(c, t, s);
    b.checkpointed = input;
    b.forward_transient = block_forward_transient_bytes(c, t, s);
    b.backward_scratch = block_backward_scratch_bytes(c, t, s);
    a.blocks.push_back(b);
    a.kept += static_cast<double>(b.count) * (ckpt ? b.checkpointed : b.saved);
    // activation_checkpointing.cpp: backward runs one block again with grad,
    // so its full saved set exists once more while that block's backward runs.
    if (ckpt) a.recompute = std::max(a.recompute, b.saved);
    a.transient = std::max({a.transient, b.forward_transient, b.backward_scratch});
  }
  auto of = [&](LayerType t) -> const BlockActivations& {
    for (const auto& b : a.blocks)
      if (b.type == t) return b;
    return a.blocks.front();  // not reached: every layer's type is listed
  };
  // Without checkpointing a block's forward adds its saved tensors to its
  // predecessors' and its transient on top; its backward starts with every
  // block up to it still saved. With it, a block keeps only its input, but
  // runs its whole forward (without grad) and later its recompute (with).
  double before = 0;  // kept by the blocks before this one
  for (int64_t i = 0; i < c.num_layers(); ++i) {
    const BlockActivations& b = of(c.layer_type(i));
    if (ckpt) {
      a.forward_peak = std::max(a.forward_peak, before + input + b.saved + b.forward_transient);
      a.backward_peak =
          std::max(a.backward_peak, before + input + b.saved + std::max(b.forward_transient, b.backward_scratch));
      before += input;
    } else {
      a.forward_peak = std::max(a.forward_peak, before + b.saved + b.forward_transient);
      a.backward_peak = std::max(a.backward_peak, before + b.saved + b.backward_scratch);
      before += b.saved;
    }
  }
  a.final_norm = final_norm_saved_bytes(c, s);
  a.tokens = static_cast<double>(job.micro_batch * (job.seq_len + 1)) * 8;
  if (job.teacher && job.cache_top_k == 0) {
    const ModelConfig& t = *job.teacher;
    a.teacher_hidden = static_cast<double>(s.tokens()) * static_cast<double>(t.hidden_size * s.element_bytes);
    // Without grad a block's intermediates are freed as it goes: its saved
    // set and transient bound its working set from above.
    for (LayerType type : {LayerType::Mamba, LayerType::Attention, LayerType::Mlp, LayerType::Moe})
      if (t.count(type) > 0)
        a.teacher_forward = std::max(a.teacher_forward, block_input_bytes(t, s) + block_saved_bytes(t, type, s) +
                                                            block_forward_transient_bytes(t, type, s));
  }
  return a;
}

}  // namespace

TrainingMemoryPlan plan_training_memory(const TrainingJob& job, int world_size, ShardLevel shard) {
  job.validate();
  if (world_size < 1) throw InputError(fmt::format("world size must be at least 1, got {}", world_size));
  TrainingMemoryPlan plan;
  plan.world_size = world_size;
  plan.shard = shard;
  plan.student_params = count_parameters(job.student);
  if (job.teacher) plan.teacher_params = count_parameters(*job.teacher);

  const double e = precision_bits(job.dtype) / 8;
  const double master_bytes = e < 4 ? 4 : 0;
  const double S = static_cast<double>(plan.student_params.total);
  const double T = job.teacher ? static_cast<double>(plan.teacher_params->total) : 0;
  const double N = static_cast<double>(world_size);
  const bool many = world_size > 1;
  const double by_optimizer = shard >= ShardLevel::Optimizer ? N : 1;
  const double by_gradients = shard >= ShardLevel::Gradients ? N : 1;
  const double by_parameters = shard >= ShardLevel::Parameters ? N : 1;

  RankBytes& b = plan.bytes;
  b.teacher_weights = e * T / by_parameters;
  b.student_weights = e * S / by_parameters;
  b.gradients = e * S / by_gradients;
  b.master = master_bytes * S / by_optimizer;
  b.moments = 8 * S / by_optimizer;
  if (shard == ShardLevel::Parameters) {
    // The teacher runs first (its neighbouring units), then the student
    // with the teacher's head still held for the loss (or the evaluation).
    const double student_pair = e * static_cast<double>(largest_unit_pair(job.student));
    b.gathered_blocks = student_pair;
    if (job.teacher)
      b.gathered_blocks = std::max(e * static_cast<double>(largest_unit_pair(*job.teacher)),
                                   e * static_cast<double>(parameter_unit_numels(*job.teacher).back()) + student_pair);
  }

  const auto buckets = gradient_bucket_bytes(job.student, job.bucket_bytes);
  plan.largest_bucket = *std::max_element(buckets.begin(), buckets.end());
  if (shard == ShardLevel::Parameters) {
    // Each unit's gradient reduces in fp32 buckets of at most --bucket-size,
    // two in flight (also on one rank, where the reduce is a copy); each
    // gradient is converted straight into its bucket: no fp32 scratch.
    b.buckets = 4 * static_cast<double>(largest_reduce_bucket_pair(job.student, job.bucket_bytes));
  } else if (many) {
    if (shard >= ShardLevel::Optimizer) {
      b.buckets = 2 * plan.largest_bucket;  // one reduce-scattering while the next fills
    } else if (job.overlap_all_reduce) {
      b.buckets = 4 * S;  // every bucket's fp32 flat buffer until the sums are written back
    } else {
      b.buckets = plan.largest_bucket;  // one at a time
    }
    // gradient_buckets.cpp's flatten: in bf16 each gradient is copied to fp32
    // and the copies concatenated, so a bucket exists twice for a moment.
    if (e < 4) b.bucket_scratch = plan.largest_bucket;
  }
  if (job.ops == TrainingOps::Reference) {
    // adamw_update_reference: the gradient in fp32 (clipped: a new tensor)
    // and the update's denominator, one tensor at a time.
    b.optimizer_scratch = 2 * 4 * static_cast<double>(largest_tensor(job.student));
  }

  ActivationSetting s;
  s.sequences = job.micro_batch;
  s.seq_len = job.seq_len;
  s.element_bytes = static_cast<int64_t>(e);
  s.ops = job.ops;
  // At `parameters` every block is recomputed in backward (it is gathered
  // again there anyway): checkpointed whatever the job says.
  TrainingJob walked = job;
  if (shard == ShardLevel::Parameters) walked.activation_checkpointing = true;
  plan.activations = activation_breakdown(walked, s);
  plan.kd = kd_loss_bytes(job.student, s, job.kd_chunk_tokens, job.cache_top_k);
  b.activations = plan.activations.total();
  b.kd_loss = plan.kd.total();
  if (job.cache_top_k > 0)
    b.teacher_cache_batch =
        static_cast<double>(s.tokens()) * (static_cast<double>(job.cache_top_k) * (4 + 8) + 4);

  // The phases of a micro-batch: the teacher's forward; the student's
  // forward, with the teacher's output waiting; the loss, with every block's
  // saved tensors and the teacher's output still live; the student's
  // backward, which starts from the blocks' saved tensors, the final norm's
  // and what the loss held (the teacher's output and the loss's chunk are
  // gone), then walks down the blocks.
  const ActivationBreakdown& a = plan.activations;
  const double teacher_phase = a.teacher_hidden + a.teacher_forward;
  const double forward_phase = a.teacher_hidden + a.forward_peak;
  const double loss_phase = a.kept + a.final_norm + a.teacher_hidden + plan.kd.total();
  const double backward_phase = std::max(a.kept + a.final_norm + plan.kd.held, a.backward_peak);
  b.step_peak =
      a.tokens + b.teacher_cache_batch + std::max({teacher_phase, forward_phase, loss_phase, backward_phase});
  return plan;
}

std::optional<int> smallest_world_size(const TrainingJob& job, ShardLevel shard, double device_bytes,
                                       int max_world_size) {
  for (int n = 1; n <= max_world_size; ++n) {
    if (plan_training_memory(job, n, shard).fits(device_bytes)) return n;
    // At `none` every rank holds everything: from two ranks on (buckets
    // included) the plan does not change.
    if (shard == ShardLevel::None && n >= 2) break;
  }
  return std::nullopt;
}

std::optional<ShardLevel> smallest_shard_level(const TrainingJob& job, int world_size, double device_bytes) {
  for (ShardLevel l : kShardLevels)
    if (plan_training_memory(job, world_size, l).fits(device_bytes)) return l;
  return std::nullopt;
}

}  // namespace minipuzzle
