// Structured pruning: plans (scores -> kept units, --set parsing, validation)
// and weight slicing, checked against exact equivalents on the parent.
//
// The slicing oracle: a pruned model computes exactly what the parent
// computes with the pruned units masked out, up to two rescalings that come
// from RMS statistics over fewer channels:
// - hidden channels: zero the embedding columns and every output
//   projection's rows of the dropped channels (the residual stream keeps
//   zeros there); every RMSNorm then averages over D_old instead of D_new
//   channels, so scale the block norms and norm_f by sqrt(D_new / D_old);
// - Mamba heads / head channels: zero the z rows of in_proj of the dropped
//   channels (silu(0) = 0 gates them off); the gated norm averages per group
//   over n_old instead of n_new channels, so scale its weight by
//   sqrt(n_new / n_old);
// - FFN neurons: zero their up_proj rows (relu(0)^2 = 0); attention heads:
//   zero their o_proj columns; layers: run_layers with skip.
// Both rescalings are exact only when eps is negligible, so those tests use
// layer_norm_epsilon = kEps0 (1e-30).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fmt/format.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <functional>
#include <numeric>
#include <random>

#include "../model/tiny_config.h"
#include "minipuzzle/atomic_file.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/checkpoint_reader.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/prune_model.h"
#include "minipuzzle/prune_plan.h"

namespace minipuzzle {
namespace {

using testing::tiny_config;
using testing::tiny_moe_config;

// Weights of O(1) effect (like the oracle's nemotron_tiny.randomize_): every
// layer moves the logits, so a wrong slice cannot hide below the tolerance.
void randomize(HybridLM& m, uint64_t seed) {
  torch::NoGradGuard ng;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& p : m->named_parameters()) {
    const std::string& n = p.key();
    auto ends = [&](const std::string& s) { return n.size() >= s.size() && n.compare(n.size() - s.size(), s.size(), s) == 0; };
    torch::Tensor t = torch::empty(p.value().sizes(), torch::kFloat32);
    if (ends("A_log") || ends(".D")) t.uniform_(-1.0, 2.0, gen);
    else if (ends("dt_bias")) t.uniform_(-6.0, 1.5, gen);
    else if (ends("conv1d.bias")) t.uniform_(-0.5, 0.5, gen);
    else if (ends("e_score_correction_bias")) t.uniform_(-0.1, 0.1, gen);
    else if (ends("conv1d.weight")) t.normal_(0.0, 0.5, gen);
    else if (ends("norm.weight") || ends("norm_f.weight")) t.uniform_(0.5, 1.5, gen);
    else if (ends("embeddings.weight")) t.normal_(0.0, 1.0, gen);
    else t.normal_(0.0, 1.0 / std::sqrt(static_cast<double>(t.size(1))), gen);
    p.value().copy_(t);
  }
}

HybridLM make_model(ModelConfig c, uint64_t seed, double eps = 1e-5) {
  c.layer_norm_epsilon = eps;
  HybridLM m(c);
  randomize(m, seed);
  return m;
}

HybridLM clone(HybridLM& m) {
  HybridLM c(m->config());
  torch::NoGradGuard ng;
  auto src = m->named_parameters();
  for (auto& p : c->named_parameters()) p.value().copy_(src[p.key()]);
  return c;
}

torch::Tensor tokens(int64_t vocab, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randint(0, vocab, {2, 13}, gen, torch::kInt64);  // 13: not a multiple of chunk 8
}

torch::Tensor logits(HybridLM& m, const torch::Tensor& t) {
  torch::NoGradGuard ng;
  return m->forward(t);
}

std::vector<int64_t> complement(const std::vector<int64_t>& kept, int64_t n) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i)
    if (!std::binary_search(kept.begin(), kept.end(), i)) out.push_back(i);
  return out;
}

torch::Tensor idx(const std::vector<int64_t>& v) { return torch::tensor(at::ArrayRef<int64_t>(v), torch::kInt64); }

// The parent with the plan's pruned units masked (see the file comment).
torch::Tensor masked_logits(HybridLM& parent, const PrunePlan& plan, const torch::Tensor& t) {
  const ModelConfig& c = parent->config();
  HybridLM m = clone(parent);
  torch::NoGradGuard ng;
  auto P = m->named_parameters();
  auto W = [&](int64_t layer, const std::string& name) { return P[fmt::format("backbone.layers.{}.{}", layer, name)]; };
  const auto drop_h = idx(complement(plan.hidden, c.hidden_size));
  const double sh = std::sqrt(static_cast<double>(plan.hidden.size()) / static_cast<double>(c.hidden_size));
  P["backbone.embeddings.weight"].index_fill_(1, drop_h, 0.0);
  P["backbone.norm_f.weight"].mul_(sh);
  std::vector<bool> skip(static_cast<size_t>(c.num_layers()), true);
  for (int64_t i : plan.kept_layers) skip[static_cast<size_t>(i)] = false;
  for (int64_t i = 0; i < c.num_layers(); ++i) {
    W(i, "norm.weight").mul_(sh);
    switch (c.layer_type(i)) {
      case LayerType::Mlp:
        W(i, "mixer.down_proj.weight").index_fill_(0, drop_h, 0.0);
        if (!skip[i]) W(i, "mixer.up_proj.weight").index_fill_(0, idx(complement(plan.ffn[i], c.intermediate_size)), 0.0);
        break;
      case LayerType::Attention: {
        W(i, "mixer.o_proj.weight").index_fill_(0, drop_h, 0.0);
        if (skip[i]) break;
        std::vector<int64_t> cols;
        for (int64_t h : complement(plan.attention_heads[i], c.num_attention_heads))
          for (int64_t d = 0; d < c.head_dim; ++d) cols.push_back(h * c.head_dim + d);
        if (!cols.empty()) W(i, "mixer.o_proj.weight").index_fill_(1, idx(cols), 0.0);
        break;
      }
      case LayerType::Mamba: {
        W(i, "mixer.out_proj.weight").index_fill_(0, drop_h, 0.0);
        if (skip[i]) break;
        std::vector<int64_t> kept;
        for (int64_t h : plan.mamba_heads[i])
          for (int64_t p : plan.mamba_head_channels[i]) kept.push_back(h * c.mamba_head_dim + p);
        std::sort(kept.begin(), kept.end());
        auto dropped = complement(kept, c.mamba_d_inner());
        if (!dropped.empty()) W(i, "mixer.in_proj.weight").index_fill_(0, idx(dropped), 0.0);  // z rows
        W(i, "mixer.norm.weight").mul_(std::sqrt(static_cast<double>(kept.size()) / static_cast<double>(c.mamba_d_inner())));
        break;
      }
      case LayerType::Moe: {
        // Experts write the hidden channels directly, or through fc2.
        if (c.moe_latent_size > 0) W(i, "mixer.fc2_latent_proj.weight").index_fill_(0, drop_h, 0.0);
        else
          for (int64_t e = 0; e < c.n_routed_experts; ++e)
            W(i, fmt::format("mixer.experts.{}.down_proj.weight", e)).index_fill_(0, drop_h, 0.0);
        W(i, "mixer.shared_experts.down_proj.weight").index_fill_(0, drop_h, 0.0);
        if (skip[i]) break;
        // A dropped expert is one the router never chooses: a correction
        // bias of -1e30 (every router group keeps at least two experts, so
        // the group scores are those of the kept experts).
        const auto dropped = complement(plan.moe_experts[i], c.n_routed_experts);
        if (!dropped.empty()) W(i, "mixer.gate.e_score_correction_bias").index_fill_(0, idx(dropped), -1e30);
        const auto f = complement(plan.moe_expert_neurons[i], c.moe_intermediate_size);
        if (!f.empty())
          for (int64_t e = 0; e < c.n_routed_experts; ++e)
            W(i, fmt::format("mixer.experts.{}.up_proj.weight", e)).index_fill_(0, idx(f), 0.0);
        const auto fs = complement(plan.moe_shared_neurons[i], c.moe_shared_expert_intermediate_size);
        if (!fs.empty()) W(i, "mixer.shared_experts.up_proj.weight").index_fill_(0, idx(fs), 0.0);
        break;
      }
    }
  }
  return m->lm_head(m->final_norm(m->run_layers(m->embed(t), 0, c.num_layers(), skip)));
}

// `k` of `n` units at random, the same count from each of `groups` groups.
std::vector<int64_t> random_units(std::mt19937& rng, int64_t n, int64_t k, int64_t groups = 1) {
  std::vector<int64_t> out;
  const int64_t per = n / groups, keep = k / groups;
  for (int64_t g = 0; g < groups; ++g) {
    std::vector<int64_t> v(static_cast<size_t>(per));
    std::iota(v.begin(), v.end(), g * per);
    std::shuffle(v.begin(), v.end(), rng);
    out.insert(out.end(), v.begin(), v.begin() + keep);
  }
  std::sort(out.begin(), out.end());
  return out;
}

struct Narrow {
  int64_t hidden = 0, ffn = 0, attn_heads = 0, mamba_heads = 0, mamba_dim = 0;  // 0: keep all
  int64_t experts = 0, expert_ffn = 0, shared_ffn = 0;
  std::vector<int64_t> drop_layers;
};

// A random valid plan: every kept layer draws its own units.
PrunePlan random_plan(const ModelConfig& c, const Narrow& w, uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  PrunePlan p = PrunePlan::identity(c);
  ModelConfig& t = p.target;
  if (w.hidden) t.hidden_size = w.hidden;
  if (w.ffn) t.intermediate_size = w.ffn;
  if (w.attn_heads) t.num_attention_heads = w.attn_heads;
  if (w.mamba_heads) t.mamba_num_heads = w.mamba_heads;
  if (w.mamba_dim) t.mamba_head_dim = w.mamba_dim;
  if (w.experts) t.n_routed_experts = w.experts;
  if (w.expert_ffn) t.moe_intermediate_size = w.expert_ffn;
  if (w.shared_ffn) t.moe_shared_expert_intermediate_size = w.shared_ffn;
  p.kept_layers.clear();
  t.pattern.clear();
  for (int64_t i = 0; i < c.num_layers(); ++i) {
    if (std::count(w.drop_layers.begin(), w.drop_layers.end(), i)) {
      p.ffn[i].clear();
      p.attention_heads[i].clear();
      p.mamba_heads[i].clear();
      p.mamba_head_channels[i].clear();
      p.moe_experts[i].clear();
      p.moe_expert_neurons[i].clear();
      p.moe_shared_neurons[i].clear();
      continue;
    }
    p.kept_layers.push_back(i);
    t.pattern.push_back(c.pattern[i]);
    switch (c.layer_type(i)) {
      case LayerType::Mlp: p.ffn[i] = random_units(rng, c.intermediate_size, t.intermediate_size); break;
      case LayerType::Attention:
        p.attention_heads[i] = random_units(rng, c.num_attention_heads, t.num_attention_heads, c.num_key_value_heads);
        break;
      case LayerType::Mamba:
        p.mamba_heads[i] = random_units(rng, c.mamba_num_heads, t.mamba_num_heads, c.n_groups);
        p.mamba_head_channels[i] = random_units(rng, c.mamba_head_dim, t.mamba_head_dim);
        break;
      case LayerType::Moe:
        p.moe_experts[i] = random_units(rng, c.n_routed_experts, t.n_routed_experts, c.n_group);
        p.moe_expert_neurons[i] = random_units(rng, c.moe_intermediate_size, t.moe_intermediate_size);
        p.moe_shared_neurons[i] = random_units(rng, c.moe_shared_expert_intermediate_size,
                                               t.moe_shared_expert_intermediate_size);
        break;
    }
  }
  p.hidden = random_units(rng, c.hidden_size, t.hidden_size);
  p.validate(c);
  return p;
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

// Pruned logits == masked parent's (1e-5), and pruning changed the output
// (so the comparison is not vacuous).
void expect_prune_matches_mask(HybridLM& parent, const PrunePlan& plan, uint64_t seed) {
  HybridLM child = prune_model(parent, plan);
  EXPECT_EQ(child->config().to_json(), plan.target.to_json());
  const auto t = tokens(parent->config().vocab_size, seed);
  const auto got = logits(child, t);
  const auto want = masked_logits(parent, plan, t);
  const double scale = std::max(1.0, want.abs().max().item<double>());
  EXPECT_LT(max_diff(got, want), 1e-5 * scale) << plan.summary(parent->config()) << " (logits up to " << scale << ")";
  EXPECT_GT(max_diff(got, logits(parent, t)), 1e-2) << "pruning did not change the logits: " << plan.summary(parent->config());
}

// "eps ~ 0" of the tests that rescale norms: far below any mean square here,
// even of a Mamba group left with a single channel.
constexpr double kEps0 = 1e-30;

struct Arch {
  std::string pattern;
  int64_t groups;
};
const Arch kArchs[] = {{"M*-M-", 1}, {"M*-M-", 2}, {"*MM-*-M", 4}};

// ---------------------------------------------------------------------------
// slicing
// ---------------------------------------------------------------------------

TEST(PruneModel, KeepEverythingReproducesParentBitwise) {
  for (const auto& a : kArchs) {
    HybridLM parent = make_model(tiny_config(a.pattern, a.groups), 1);
    HybridLM child = prune_model(parent, PrunePlan::identity(parent->config()));
    const auto t = tokens(97, 2);
    EXPECT_TRUE(torch::equal(logits(child, t), logits(parent, t))) << a.pattern << " groups " << a.groups;
    auto pp = parent->named_parameters();
    for (const auto& p : child->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), pp[p.key()])) << p.key();
  }
}

TEST(PruneModel, FfnNeuronsEqualZeroedUpRows) {
  for (uint64_t seed = 0; seed < 3; ++seed)
    for (const auto& a : kArchs) {
      HybridLM parent = make_model(tiny_config(a.pattern, a.groups), 10 + seed);
      Narrow w;
      w.ffn = 48 - 8 * static_cast<int64_t>(seed + 1);
      expect_prune_matches_mask(parent, random_plan(parent->config(), w, seed), seed);
    }
}

TEST(PruneModel, AttentionHeadsEqualZeroedOprojColumns) {
  // tiny_config: 4 query heads on 2 kv heads -> keep 1 or 2 per kv head; also
  // 6 heads on 2 kv heads.
  for (uint64_t seed = 0; seed < 3; ++seed) {
    HybridLM parent = make_model(tiny_config("*M-*", 2), 20 + seed);
    Narrow w;
    w.attn_heads = 2;
    expect_prune_matches_mask(parent, random_plan(parent->config(), w, seed), seed);
  }
  auto c = tiny_config("-**M", 2);
  c.num_attention_heads = 6;
  HybridLM parent = make_model(c, 23);
  for (int64_t heads : {2, 4}) {
    Narrow w;
    w.attn_heads = heads;
    expect_prune_matches_mask(parent, random_plan(c, w, static_cast<uint64_t>(heads)), 5);
  }
}

TEST(PruneModel, DroppedLayersEqualRunLayersWithSkip) {
  HybridLM parent = make_model(tiny_config("M*-M-*", 2), 30);
  const std::vector<std::vector<int64_t>> drops = {{0}, {1}, {2, 3}, {0, 4, 5}, {1, 2, 3, 4, 5}};
  for (const auto& d : drops) {
    Narrow w;
    w.drop_layers = d;
    const PrunePlan plan = random_plan(parent->config(), w, 1);
    HybridLM child = prune_model(parent, plan);
    std::vector<bool> skip(6, false);
    for (int64_t i : d) skip[i] = true;
    const auto t = tokens(97, 3);
    torch::NoGradGuard ng;
    const auto want = parent->lm_head(parent->final_norm(parent->run_layers(parent->embed(t), 0, 6, skip)));
    EXPECT_TRUE(torch::equal(logits(child, t), want)) << "dropped " << d.size() << " layers";
    EXPECT_GT(max_diff(want, logits(parent, t)), 1e-2);
  }
}

TEST(PruneModel, MambaHeadsEqualGatedOffChannelsWithRescaledNorm) {
  for (uint64_t seed = 0; seed < 3; ++seed)
    for (const auto& a : kArchs) {
      auto c = tiny_config(a.pattern, a.groups);
      c.mamba_num_heads = 8;  // 8 heads: 8, 4 or 2 per group
      HybridLM parent = make_model(c, 40 + seed, /*eps=*/kEps0);
      for (int64_t heads : {a.groups, int64_t{4}}) {
        if (heads % a.groups) continue;
        Narrow w;
        w.mamba_heads = heads;
        expect_prune_matches_mask(parent, random_plan(parent->config(), w, seed * 7 + heads), seed);
      }
    }
}

TEST(PruneModel, MambaHeadChannelsEqualGatedOffChannelsWithRescaledNorm) {
  for (uint64_t seed = 0; seed < 3; ++seed)
    for (const auto& a : kArchs) {
      HybridLM parent = make_model(tiny_config(a.pattern, a.groups), 50 + seed, kEps0);
      for (int64_t dim : {1, 5}) {
        Narrow w;
        w.mamba_dim = dim;
        expect_prune_matches_mask(parent, random_plan(parent->config(), w, seed * 3 + dim), seed);
      }
    }
}

TEST(PruneModel, HiddenChannelsEqualZeroedChannelsWithRescaledNorms) {
  for (uint64_t seed = 0; seed < 3; ++seed)
    for (const auto& a : kArchs) {
      HybridLM parent = make_model(tiny_config(a.pattern, a.groups), 60 + seed, kEps0);
      Narrow w;
      w.hidden = 32 - 7 * static_cast<int64_t>(seed + 1);
      expect_prune_matches_mask(parent, random_plan(parent->config(), w, seed), seed);
    }
}

TEST(PruneModel, AllAxesTogether) {
  for (uint64_t seed = 0; seed < 3; ++seed)
    for (const auto& a : kArchs) {
      auto c = tiny_config(a.pattern, a.groups);
      c.mamba_num_heads = 8;
      HybridLM parent = make_model(c, 70 + seed, kEps0);
      Narrow w;
      w.hidden = 20;
      w.ffn = 30;
      w.attn_heads = 2;
      w.mamba_heads = 4;
      w.mamba_dim = 6;
      w.drop_layers = {static_cast<int64_t>(seed)};
      expect_prune_matches_mask(parent, random_plan(parent->config(), w, seed + 100), seed);
    }
}

// `minipuzzle prune` streams the parent's files through prune_recipes; its
// output must be byte for byte what loading the parent in fp32, prune_model
// and save_model write (the definition), for every axis and output dtype.
TEST(PruneModel, StreamedFromTheFilesEqualsPruneModelThenSaveByteForByte) {
  const auto dir = std::filesystem::temp_directory_path() / ("mp_prune_stream_" + std::to_string(::getpid()));
  remove_tree(dir);
  std::filesystem::create_directories(dir);
  auto read = [](const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  for (const auto& a : kArchs) {
    auto c = tiny_config(a.pattern, a.groups);
    c.mamba_num_heads = 8;
    HybridLM parent = make_model(c, 90);
    const std::string arch = a.pattern + "-g" + std::to_string(a.groups);
    const auto src = dir / ("src-" + arch);
    for (auto file_dtype : {torch::kFloat32, torch::kBFloat16}) {
      remove_tree(src);
      save_model(parent, src, file_dtype);
      Narrow w;
      w.hidden = 20;
      w.ffn = 30;
      w.attn_heads = 2;
      w.mamba_heads = 4;
      w.mamba_dim = 6;
      w.drop_layers = {1};
      const PrunePlan plan = random_plan(parent->config(), w, 7);
      const ModelConfig pc = ModelConfig::load(src);
      for (auto dtype : {torch::kBFloat16, torch::kFloat32, torch::kFloat8_e4m3fn}) {
        const std::string tag = arch + "-" + c10::toString(file_dtype) + "-" + c10::toString(dtype);
        auto loaded = load_model(src, torch::kFloat32);
        auto child = prune_model(loaded, plan);
        save_model(child, dir / ("old-" + tag), dtype);
        rewrite_checkpoint(CheckpointReader::open(src), pc, plan.target, prune_recipes(pc, plan), dtype,
                           dir / ("new-" + tag));
        for (const auto& e : std::filesystem::directory_iterator(dir / ("old-" + tag))) {
          const auto name = e.path().filename();
          EXPECT_TRUE(read(e.path()) == read(dir / ("new-" + tag) / name)) << tag << " " << name;
        }
      }
    }
  }
  remove_tree(dir);
}

// 12 routed experts in 3 router groups (4 each, 2 groups per token, 2
// experts per token), so every group can lose experts and keep two.
ModelConfig moe_prune_config(int64_t latent = 0) {
  ModelConfig c = tiny_moe_config("M*EM-E", latent);
  c.n_routed_experts = 12;
  c.validate("moe prune config");
  return c;
}

TEST(PruneModel, MoeExpertsAndWidthsEqualTheMaskedParent) {
  for (int64_t latent : {int64_t{0}, int64_t{16}})
    for (uint64_t seed = 0; seed < 3; ++seed) {
      HybridLM parent = make_model(moe_prune_config(latent), 110 + seed, kEps0);
      SCOPED_TRACE("latent " + std::to_string(latent) + " seed " + std::to_string(seed));
      Narrow experts;
      experts.experts = seed == 0 ? 9 : 6;
      expect_prune_matches_mask(parent, random_plan(parent->config(), experts, seed), seed);
      Narrow widths;
      widths.expert_ffn = 4 + 2 * static_cast<int64_t>(seed);
      widths.shared_ffn = 7;
      expect_prune_matches_mask(parent, random_plan(parent->config(), widths, seed), seed);
      Narrow all;
      all.hidden = 20;
      all.ffn = 30;
      all.experts = 6;
      all.expert_ffn = 5;
      all.shared_ffn = 9;
      all.drop_layers = {static_cast<int64_t>(seed) * 2 + 1};
      expect_prune_matches_mask(parent, random_plan(parent->config(), all, seed + 50), seed);
    }
}

TEST(PruneModel, MoeStreamedFromTheFilesEqualsPruneModelThenSaveByteForByte) {
  const auto dir = std::filesystem::temp_directory_path() / ("mp_prune_moe_stream_" + std::to_string(::getpid()));
  remove_tree(dir);
  std::filesystem::create_directories(dir);
  auto read = [](const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  for (int64_t latent : {int64_t{0}, int64_t{16}}) {
    HybridLM parent = make_model(moe_prune_config(latent), 120);
    const auto src = dir / ("src-" + std::to_string(latent));
    save_model(parent, src, torch::kFloat32);
    Narrow w;
    w.hidden = 20;
    w.experts = 6;
    w.expert_ffn = 7;
    w.shared_ffn = 9;
    w.drop_layers = {1};
    const PrunePlan plan = random_plan(parent->config(), w, 9);
    const ModelConfig pc = ModelConfig::load(src);
    for (auto dtype : {torch::kBFloat16, torch::kFloat32, torch::kFloat8_e4m3fn}) {
      const std::string tag = std::to_string(latent) + "-" + c10::toString(dtype);
      auto loaded = load_model(src, torch::kFloat32);
      auto child = prune_model(loaded, plan);
      save_model(child, dir / ("old-" + tag), dtype);
      rewrite_checkpoint(CheckpointReader::open(src), pc, plan.target, prune_recipes(pc, plan), dtype,
                         dir / ("new-" + tag));
      int64_t files = 0;
      for (const auto& e : std::filesystem::directory_iterator(dir / ("old-" + tag))) {
        const auto name = e.path().filename();
        EXPECT_TRUE(read(e.path()) == read(dir / ("new-" + tag) / name)) << tag << " " << name;
        ++files;
      }
      EXPECT_GE(files, 2) << tag;
      EXPECT_EQ(ModelConfig::load(dir / ("new-" + tag)).n_routed_experts, 6);
    }
  }
  remove_tree(dir);
}

TEST(PrunePlan, MoeFromScoresKeepsTheBestExpertsOfEveryRouterGroup) {
  const ModelConfig c = moe_prune_config();
  ImportanceScores s;
  s.layer["mse"].assign(c.num_layers(), 1.0f);
  s.hidden.assign(c.hidden_size, 1.0f);
  for (auto* v : {&s.moe_experts, &s.moe_expert_neurons, &s.moe_shared_neurons}) v->assign(c.num_layers(), {});
  // Layer 2: expert importance rises with the index except in group 1, where
  // expert 4 is best; layer 5: falls with the index.
  s.moe_experts[2] = {1, 2, 3, 4, 9, 5, 6, 7, 8, 10, 11, 12};
  s.moe_experts[5] = {12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1};
  for (int64_t i : {2, 5}) {
    s.moe_expert_neurons[i].assign(c.moe_intermediate_size, 0.0f);
    s.moe_expert_neurons[i][3] = s.moe_expert_neurons[i][7] = 5.0f;
    s.moe_shared_neurons[i].assign(c.moe_shared_expert_intermediate_size, 1.0f);
  }
  ModelConfig t = c;
  t.n_routed_experts = 6;
  t.moe_intermediate_size = 2;
  const PrunePlan p = plan_from_scores(c, s, t, {}, ExpertRanking::OutputNorm);
  EXPECT_EQ(p.moe_experts[2], (std::vector<int64_t>{2, 3, 4, 7, 10, 11}));
  EXPECT_EQ(p.moe_experts[5], (std::vector<int64_t>{0, 1, 4, 5, 8, 9}));
  EXPECT_EQ(p.moe_expert_neurons[2], (std::vector<int64_t>{3, 7}));
  EXPECT_EQ(p.moe_shared_neurons[5].size(), 14u);
  EXPECT_NE(p.summary(c).find("routed experts 12 -> 6"), std::string::npos) << p.summary(c);
  // Narrowing experts without expert scores is refused.
  ImportanceScores none = s;
  none.moe_experts.assign(c.num_layers(), {});
  EXPECT_THROW(plan_from_scores(c, none, t, {}, ExpertRanking::OutputNorm), InputError);
}

// One hand-made layer where the three rankings disagree: in every router
// group the first expert is chosen often but adds little per token, the
// second is rare and large, the third middling on both, the fourth rare and
// small. Per group (4 experts, keep 2):
//   output_norm  = norm               -> 2nd, 3rd (both layers)
//   frequency    = freq               -> 1st, 3rd (both layers)
//   contribution = freq x norm        -> layer 2: 1st, 3rd (0.45, 0.36 beat
//                                        the 2nd's 0.15); layer 5, where the
//                                        2nd is chosen 4x as often: 1st, 2nd.
TEST(PrunePlan, ExpertRankingChoosesWhichExpertsAreKept) {
  const ModelConfig c = moe_prune_config();
  ImportanceScores s;
  s.layer["mse"].assign(c.num_layers(), 1.0f);
  for (auto* v : {&s.moe_experts, &s.moe_expert_frequency, &s.moe_expert_weight}) v->assign(c.num_layers(), {});
  for (int64_t g = 0; g < 3; ++g) {
    for (float x : {0.5f, 3.0f, 1.2f, 0.1f}) s.moe_experts[2].push_back(x);
    for (float x : {0.9f, 0.05f, 0.3f, 0.05f}) s.moe_expert_frequency[2].push_back(x);
    for (float x : {0.5f, 3.0f, 1.2f, 0.1f}) s.moe_experts[5].push_back(x);
    for (float x : {0.9f, 0.2f, 0.3f, 0.05f}) s.moe_expert_frequency[5].push_back(x);
  }
  ModelConfig t = c;
  t.n_routed_experts = 6;
  auto kept = [&](ExpertRanking r, int64_t layer) { return plan_from_scores(c, s, t, {}, r).moe_experts[layer]; };
  EXPECT_EQ(kept(ExpertRanking::OutputNorm, 2), (std::vector<int64_t>{1, 2, 5, 6, 9, 10}));
  EXPECT_EQ(kept(ExpertRanking::Frequency, 2), (std::vector<int64_t>{0, 2, 4, 6, 8, 10}));
  EXPECT_EQ(kept(ExpertRanking::Contribution, 2), (std::vector<int64_t>{0, 2, 4, 6, 8, 10}));
  EXPECT_EQ(kept(ExpertRanking::OutputNorm, 5), (std::vector<int64_t>{1, 2, 5, 6, 9, 10}));
  EXPECT_EQ(kept(ExpertRanking::Frequency, 5), (std::vector<int64_t>{0, 2, 4, 6, 8, 10}));
  EXPECT_EQ(kept(ExpertRanking::Contribution, 5), (std::vector<int64_t>{0, 1, 4, 5, 8, 9}));
  // The default is the one the MoE experiment chose, and --set takes it too.
  EXPECT_EQ(plan_from_set(c, s, {"n_routed_experts=6"}).moe_experts[2], kept(kDefaultExpertRanking, 2));
  EXPECT_EQ(plan_from_set(c, s, {"n_routed_experts=6"}, ExpertRanking::OutputNorm).moe_experts[5],
            kept(ExpertRanking::OutputNorm, 5));
  // contribution is frequency x output_norm, expert by expert.
  const auto contribution = expert_ranking_scores(s, 2, ExpertRanking::Contribution);
  ASSERT_EQ(contribution.size(), 12u);
  EXPECT_FLOAT_EQ(contribution[1], 0.05f * 3.0f);
  // Rankings that need the frequency refuse scores without it; keeping every
  // expert needs no scores at all.
  ImportanceScores no_freq = s;
  no_freq.moe_expert_frequency.assign(c.num_layers(), {});
  EXPECT_THROW(plan_from_scores(c, no_freq, t, {}, ExpertRanking::Contribution), InputError);
  EXPECT_EQ(plan_from_scores(c, no_freq, t, {}, ExpertRanking::OutputNorm).moe_experts[2],
            kept(ExpertRanking::OutputNorm, 2));
  EXPECT_EQ(plan_from_scores(c, ImportanceScores{}, c, {0, 1, 2, 3, 4, 5}).moe_experts[2].size(), 12u);
  // Names round-trip; anything else is one line.
  for (auto r : {ExpertRanking::OutputNorm, ExpertRanking::Frequency, ExpertRanking::Contribution})
    EXPECT_EQ(parse_expert_ranking(expert_ranking_name(r)), r);
  try {
    parse_expert_ranking("norm");
    ADD_FAILURE() << "accepted 'norm'";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("output_norm, frequency or contribution"), std::string::npos);
  }
}

TEST(PrunePlan, MoeFromSetRefusesExpertCountsTheRouterCannotUse) {
  const ModelConfig c = moe_prune_config();
  ImportanceScores s;
  s.layer["mse"].assign(c.num_layers(), 1.0f);
  auto message = [&](const ModelConfig& parent, std::vector<std::string> sets) {
    try {
      plan_from_set(parent, s, sets);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message(c, {"n_routed_experts=8"}).find("not a multiple of n_group (3)"), std::string::npos);
  EXPECT_NE(message(c, {"n_routed_experts=13"}).find("larger than the parent"), std::string::npos);
  ModelConfig wide = c;  // one router group, 4 experts per token
  wide.n_group = 1;
  wide.topk_group = 1;
  wide.num_experts_per_tok = 4;
  EXPECT_NE(message(wide, {"n_routed_experts=3"}).find("fewer than num_experts_per_tok (4)"), std::string::npos);
  EXPECT_NE(message(tiny_config("M*-"), {"n_routed_experts=3"}).find("no moe layers"), std::string::npos);
  // Whole layers: keep_moe keeps the best E layers.
  s.layer["mse"] = {1, 1, 0.5f, 1, 1, 2};
  const PrunePlan p = plan_from_set(c, s, {"keep_moe=1", "moe_shared_expert_intermediate_size=14"});
  EXPECT_EQ(p.target.pattern, "M*M-E");
  EXPECT_EQ(p.kept_layers, (std::vector<int64_t>{0, 1, 3, 4, 5}));
}

TEST(PruneModel, KeepsDtypeAndSlicesExactly) {
  HybridLM parent = make_model(tiny_config("M*-", 2), 80);
  parent->to(torch::kBFloat16);
  Narrow w;
  w.hidden = 16;
  w.ffn = 24;
  w.mamba_heads = 2;
  const PrunePlan plan = random_plan(parent->config(), w, 4);
  HybridLM child = prune_model(parent, plan);
  EXPECT_EQ(child->dtype(), torch::kBFloat16);
  auto pp = parent->named_parameters(), cp = child->named_parameters();
  for (const auto& p : cp) EXPECT_EQ(p.value().scalar_type(), torch::kBFloat16) << p.key();
  // Spot checks against hand-computed index sets.
  const auto hid = idx(plan.hidden);
  EXPECT_TRUE(torch::equal(cp["backbone.embeddings.weight"], pp["backbone.embeddings.weight"].index_select(1, hid)));
  EXPECT_TRUE(torch::equal(cp["backbone.layers.2.mixer.up_proj.weight"],
                           pp["backbone.layers.2.mixer.up_proj.weight"].index_select(0, idx(plan.ffn[2])).index_select(1, hid)));
  EXPECT_TRUE(torch::equal(cp["backbone.layers.0.mixer.A_log"],
                           pp["backbone.layers.0.mixer.A_log"].index_select(0, idx(plan.mamba_heads[0]))));
  // conv1d: x channels of the kept heads, then all of B and C.
  const auto& c = parent->config();
  std::vector<int64_t> rows;
  for (int64_t h : plan.mamba_heads[0])
    for (int64_t p = 0; p < c.mamba_head_dim; ++p) rows.push_back(h * c.mamba_head_dim + p);
  for (int64_t r = 0; r < 2 * c.n_groups * c.ssm_state_size; ++r) rows.push_back(c.mamba_d_inner() + r);
  EXPECT_TRUE(torch::equal(cp["backbone.layers.0.mixer.conv1d.weight"],
                           pp["backbone.layers.0.mixer.conv1d.weight"].index_select(0, idx(rows))));
}

TEST(PruneModel, RejectsAPlanThatDoesNotFitTheParent) {
  HybridLM parent = make_model(tiny_config("M*-", 2), 81);
  PrunePlan plan = PrunePlan::identity(tiny_config("M*-M", 2));
  EXPECT_THROW(prune_model(parent, plan), InputError);
}

// ---------------------------------------------------------------------------
// plans
// ---------------------------------------------------------------------------

// Hand-made scores for tiny_config("M*-M-", 2): 4 Mamba heads (2 groups),
// head_dim 8, 4 attention heads on 2 kv heads, FFN 48, hidden 32.
ImportanceScores hand_scores(const ModelConfig& c) {
  ImportanceScores s;
  const size_t n = static_cast<size_t>(c.num_layers());
  s.layer["mse"].resize(n);
  s.layer["bi"].resize(n);
  for (size_t i = 0; i < n; ++i) {
    s.layer["mse"][i] = static_cast<float>((i * 7) % 5);  // M*-M-: 0 2 4 1 3
    s.layer["bi"][i] = static_cast<float>(n - i);         // ignored: mse is primary
  }
  s.hidden.resize(static_cast<size_t>(c.hidden_size));
  for (size_t i = 0; i < s.hidden.size(); ++i) s.hidden[i] = static_cast<float>((i * 13) % 32);
  s.ffn.assign(n, {});
  s.attention_heads.assign(n, {});
  s.mamba_channels.assign(n, {});
  s.mamba_heads.assign(n, {});
  s.mamba_head_channels.assign(n, {});
  for (int64_t i = 0; i < c.num_layers(); ++i) {
    switch (c.layer_type(i)) {
      case LayerType::Mlp:
        s.ffn[i].resize(static_cast<size_t>(c.intermediate_size));
        for (size_t j = 0; j < s.ffn[i].size(); ++j) s.ffn[i][j] = static_cast<float>((j * 5 + i) % 48);
        break;
      case LayerType::Attention: s.attention_heads[i] = {1, 3, 2, 2}; break;
      case LayerType::Mamba:
        s.mamba_heads[i] = i == 0 ? std::vector<float>{5, 6, 1, 0} : std::vector<float>{0, 0, 9, 1};
        s.mamba_head_channels[i] = {1, 8, 2, 7, 3, 6, 4, 5};
        s.mamba_channels[i].assign(static_cast<size_t>(c.mamba_d_inner()), 1.0f);
        break;
      case LayerType::Moe: break;  // the MoE tests make their own scores
    }
  }
  return s;
}

TEST(PrunePlan, FromScoresKeepsTheTopUnitsPerGroup) {
  const auto parent = tiny_config("M*-M-", 2);
  const auto s = hand_scores(parent);
  auto target = parent;
  target.hidden_size = 4;
  target.intermediate_size = 3;
  target.num_attention_heads = 2;
  target.mamba_num_heads = 2;
  target.mamba_head_dim = 3;
  const PrunePlan p = plan_from_scores(parent, s, target);
  EXPECT_EQ(p.kept_layers, (std::vector<int64_t>{0, 1, 2, 3, 4}));
  // hidden: (i*13)%32 is a permutation; its top 4 (31, 30, 29, 28) sit at 27, 22, 17, 12
  EXPECT_EQ(p.hidden, (std::vector<int64_t>{12, 17, 22, 27}));
  // attention {1,3 | 2,2}: the best of kv head 0 is head 1; tie in kv head 1 -> lower index 2
  EXPECT_EQ(p.attention_heads[1], (std::vector<int64_t>{1, 2}));
  // Mamba layer 0 {5,6 | 1,0} -> 1, 2; layer 3 {0,0 | 9,1} -> 0 (tie), 2
  EXPECT_EQ(p.mamba_heads[0], (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(p.mamba_heads[3], (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(p.mamba_head_channels[0], (std::vector<int64_t>{1, 3, 5}));  // scores 8, 7, 6
  // ffn layer 2: (j*5+2)%48 -> 47 at j=9, 46 at j=28, 45 at j=47
  EXPECT_EQ(p.ffn[2], (std::vector<int64_t>{9, 28, 47}));
  EXPECT_TRUE(p.ffn[0].empty());
  EXPECT_TRUE(p.attention_heads[0].empty());
}

TEST(PrunePlan, FromScoresPicksTheBestLayersPerType) {
  const auto parent = tiny_config("M*-M-", 2);
  const auto s = hand_scores(parent);  // mse 0 2 4 1 3
  auto target = parent;
  target.pattern = "M*-";  // best Mamba: layer 3 (1 > 0); best MLP: 2 (4 > 3)
  EXPECT_THROW(plan_from_scores(parent, s, target), InputError);  // restricted pattern is *-M
  target.pattern = "*-M";
  EXPECT_EQ(plan_from_scores(parent, s, target).kept_layers, (std::vector<int64_t>{1, 2, 3}));
  // explicit kept layers win over the scores
  target.pattern = "M*-";
  EXPECT_EQ(plan_from_scores(parent, s, target, {0, 1, 2}).kept_layers, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_THROW(plan_from_scores(parent, s, target, {0, 1, 4, 2}), InputError);  // unsorted
  EXPECT_THROW(plan_from_scores(parent, s, target, {0, 1, 3}), InputError);     // pattern M*M
}

TEST(PrunePlan, ScoresAreNeededOnlyForNarrowedAxes) {
  const auto parent = tiny_config("M*-M-", 2);
  const ImportanceScores none;
  auto target = parent;
  EXPECT_NO_THROW(plan_from_scores(parent, none, target));
  EXPECT_NO_THROW(plan_from_set(parent, none, {"drop_layers=1,3"}));
  EXPECT_THROW(plan_from_set(parent, none, {"keep_mamba=1"}), InputError);
  EXPECT_THROW(plan_from_set(parent, none, {"hidden_size=16"}), InputError);
  target.intermediate_size = 40;
  EXPECT_THROW(plan_from_scores(parent, none, target), InputError);
  auto s = hand_scores(parent);
  s.ffn[2].pop_back();  // wrong length
  EXPECT_THROW(plan_from_scores(parent, s, target), InputError);
}

TEST(PrunePlan, FromSetBuildsTheTarget) {
  const auto parent = tiny_config("M*-M-", 2);
  const auto s = hand_scores(parent);  // mse 0 2 4 1 3
  const PrunePlan p = plan_from_set(parent, s,
                                    {"hidden_size=16", "intermediate_size=24", "num_attention_heads=2",
                                     "mamba_num_heads=2", "mamba_head_dim=4", "drop_layers=2", "keep_mamba=1"});
  EXPECT_EQ(p.target.pattern, "*M-");  // layer 2 dropped, Mamba 3 beats 0
  EXPECT_EQ(p.kept_layers, (std::vector<int64_t>{1, 3, 4}));
  EXPECT_EQ(p.target.hidden_size, 16);
  EXPECT_EQ(p.target.intermediate_size, 24);
  EXPECT_EQ(p.target.num_attention_heads, 2);
  EXPECT_EQ(p.target.mamba_num_heads, 2);
  EXPECT_EQ(p.target.mamba_head_dim, 4);
  EXPECT_EQ(p.target.vocab_size, parent.vocab_size);
  EXPECT_EQ(p.mamba_heads[3], (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(p.ffn[4].size(), 24u);
  EXPECT_NO_THROW(p.validate(parent));
  const auto all = plan_from_set(parent, s, {"keep_attention=0", "keep_mlp=1"});
  EXPECT_EQ(all.target.pattern, "M-M");  // MLP 2 (4) beats 4 (3)
  EXPECT_EQ(all.kept_layers, (std::vector<int64_t>{0, 2, 3}));
}

TEST(PrunePlan, FromSetRejectsBadInputWithOneLine) {
  const auto parent = tiny_config("M*-M-", 2);  // hidden 32, ffn 48, heads 4/kv 2, mamba 4x8, groups 2
  const auto s = hand_scores(parent);
  const std::vector<std::vector<std::string>> bad = {
      {},
      {"hidden_size"},               // no '='
      {"=3"},                        // no key
      {"width=3"},                   // unknown key
      {"hidden_size=abc"},           // not a number
      {"hidden_size=-4"},
      {"hidden_size=1.5"},
      {"hidden_size="},
      {"hidden_size=12x"},
      {"hidden_size=33"},            // above the parent
      {"hidden_size=0"},             // nothing left
      {"intermediate_size=49"},
      {"intermediate_size=0"},
      {"num_attention_heads=3"},     // not a multiple of kv heads (2)
      {"num_attention_heads=6"},
      {"num_attention_heads=0"},
      {"mamba_num_heads=3"},         // not a multiple of n_groups (2)
      {"mamba_num_heads=8"},
      {"mamba_head_dim=9"},
      {"mamba_head_dim=0"},
      {"drop_layers=5"},             // no such layer
      {"drop_layers=1,1"},           // twice
      {"drop_layers=1,,2"},
      {"drop_layers="},
      {"drop_layers=0,1,2,3,4"},     // nothing left
      {"keep_mamba=0", "keep_attention=0", "keep_mlp=0"},
      {"keep_mamba=3"},              // only 2 Mamba layers
      {"keep_mamba=2", "drop_layers=0"},
      {"keep_mlp=x"},
      {"hidden_size=8", "hidden_size=16"},  // twice
  };
  for (const auto& sets : bad) {
    std::string joined;
    for (const auto& x : sets) joined += x + " ";
    try {
      plan_from_set(parent, s, sets);
      ADD_FAILURE() << "accepted: " << joined;
    } catch (const InputError& e) {
      const std::string msg = e.what();
      EXPECT_FALSE(msg.empty()) << joined;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << joined << ": " << msg;
    } catch (const std::exception& e) {
      ADD_FAILURE() << joined << ": not an InputError: " << e.what();
    }
  }
  // A width for a layer type the parent does not have.
  EXPECT_THROW(plan_from_set(tiny_config("M-M-", 2), s, {"num_attention_heads=2"}), InputError);
}

TEST(PrunePlan, ValidateCatchesBrokenPlans) {
  const auto parent = tiny_config("M*-M-", 2);
  const PrunePlan ok = PrunePlan::identity(parent);
  EXPECT_NO_THROW(ok.validate(parent));
  auto expect_bad = [&](const std::function<void(PrunePlan&)>& f, const char* what) {
    PrunePlan p = ok;
    f(p);
    EXPECT_THROW(p.validate(parent), InputError) << what;
  };
  expect_bad([](PrunePlan& p) { p.target.vocab_size = 50; }, "vocab changed");
  expect_bad([](PrunePlan& p) { p.target.n_groups = 1; }, "groups changed");
  expect_bad([](PrunePlan& p) { p.target.ssm_state_size = 4; }, "state changed");
  expect_bad([](PrunePlan& p) { p.target.num_key_value_heads = 1; }, "kv heads changed");
  expect_bad([](PrunePlan& p) { std::swap(p.hidden[0], p.hidden[1]); }, "unsorted hidden");
  expect_bad([](PrunePlan& p) { p.hidden[1] = 0; }, "duplicate hidden");
  expect_bad([](PrunePlan& p) { p.hidden.pop_back(); }, "hidden size != target");
  expect_bad([](PrunePlan& p) { p.ffn[2].back() = 48; }, "ffn out of range");
  expect_bad([](PrunePlan& p) { p.ffn[0] = {1}; }, "ffn list on a Mamba layer");
  expect_bad([](PrunePlan& p) {
    p.target.num_attention_heads = 2;
    p.attention_heads[1] = {0, 1};  // both from kv head 0
  }, "uneven attention groups");
  expect_bad([](PrunePlan& p) {
    p.target.mamba_num_heads = 2;
    p.mamba_heads[0] = {2, 3};
    p.mamba_heads[3] = {0, 2};
  }, "uneven mamba groups");
  expect_bad([](PrunePlan& p) { p.kept_layers = {0, 1, 2, 3}; }, "pattern mismatch");
  expect_bad([](PrunePlan& p) {
    p.kept_layers = {0, 2, 1, 3, 4};
  }, "unsorted layers");
  expect_bad([](PrunePlan& p) { p.target.hidden_size = 40; p.hidden.resize(40); std::iota(p.hidden.begin(), p.hidden.end(), 0); }, "hidden larger");
}

}  // namespace
}  // namespace minipuzzle
