#include "minipuzzle/architecture_search.h"

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>
#include <fmt/format.h>
#include <limits>
#include <queue>

#include "minipuzzle/errors.h"

namespace minipuzzle {
namespace {

constexpr std::array<LayerType, 4> kTypes = {LayerType::Mamba, LayerType::Attention, LayerType::Mlp, LayerType::Moe};
constexpr int kAxes = 8;  // width axes
constexpr double kMaxGrid = 5e9;  // beyond this an exhaustive sweep takes minutes: ask for narrower axes

struct Widths {
  int64_t ffn, hidden, mamba_heads, mamba_head_dim, attention_heads, moe_experts, moe_expert_ffn, moe_shared_ffn;
};

// What every evaluation shares: layer rankings, prefix sums of kept scores,
// the allowed values of each axis and the mixed-radix numbering of width
// combinations (ffn fastest, then attention heads, head dim, Mamba heads,
// hidden, routed experts, expert FFN, shared-expert FFN).
struct Prepared {
  const ModelConfig* parent = nullptr;
  const SearchImportance* importance = nullptr;
  std::vector<double> s;  // clamped layer scores
  double total = 0;
  std::array<std::vector<int64_t>, 4> order;  // per type, best first
  std::array<std::vector<double>, 4> prefix;  // prefix[t][n]: sum of the best n scores of type t
  std::array<std::vector<int64_t>, 4> counts; // allowed layer counts per type, ascending
  // ffn, attention heads, head dim, Mamba heads, hidden, routed experts, expert FFN, shared FFN
  std::array<std::vector<int64_t>, kAxes> width;
  std::array<int64_t, kAxes> stride{};
  int64_t combos = 1, min_layers = 1;
  std::vector<std::array<double, 4>> factors;  // w(type) per width combination

  int64_t digit(int64_t combo, int k) const { return combo / stride[k] % static_cast<int64_t>(width[k].size()); }
  bool at_max(int64_t combo, int k) const { return digit(combo, k) + 1 == static_cast<int64_t>(width[k].size()); }
  Widths widths(int64_t combo) const {
    auto v = [&](int k) { return width[k][static_cast<size_t>(digit(combo, k))]; };
    return {v(0), v(4), v(3), v(2), v(1), v(5), v(6), v(7)};
  }
};

// The routed experts' share of what an MoE layer computes per token, by
// active weights: k experts against the shared expert. w(moe) weighs the
// kept fractions of experts and expert neurons by it, the shared expert's
// neurons by the rest.
double moe_routed_share(const ModelConfig& c) {
  if (!c.has_moe()) return 1.0;
  const double routed = static_cast<double>(c.num_experts_per_tok) * 2.0 * static_cast<double>(c.moe_expert_input_dim()) *
                        static_cast<double>(c.moe_intermediate_size);
  const double shared = 2.0 * static_cast<double>(c.hidden_size) * static_cast<double>(c.moe_shared_expert_intermediate_size);
  return routed + shared > 0 ? routed / (routed + shared) : 1.0;
}

Prepared prepare(const ModelConfig& parent, const SearchImportance& imp, const CandidateSpace& space) {
  Prepared p;
  p.parent = &parent;
  p.importance = &imp;
  p.s.resize(imp.layer.size());
  for (size_t i = 0; i < p.s.size(); ++i) p.s[i] = std::max(imp.layer[i], 0.0);
  for (double x : p.s) p.total += x;
  if (!(p.total > 0)) {
    std::fill(p.s.begin(), p.s.end(), 1.0);
    p.total = static_cast<double>(p.s.size());
  }
  const IntAxis* layer_axes[4] = {&space.mamba_layers, &space.attention_layers, &space.mlp_layers, &space.moe_layers};
  for (int t = 0; t < 4; ++t) {
    for (int64_t i = 0; i < parent.num_layers(); ++i)
      if (parent.layer_type(i) == kTypes[t]) p.order[t].push_back(i);
    std::stable_sort(p.order[t].begin(), p.order[t].end(),
                     [&](int64_t a, int64_t b) { return p.s[static_cast<size_t>(a)] > p.s[static_cast<size_t>(b)]; });
    p.prefix[t].assign(1, 0.0);
    for (int64_t i : p.order[t]) p.prefix[t].push_back(p.prefix[t].back() + p.s[static_cast<size_t>(i)]);
    p.counts[t] = layer_axes[t]->values();
  }
  p.width = {space.allowed(space.ffn, parent.intermediate_size),
             space.allowed(space.attention_heads, parent.num_attention_heads),
             space.allowed(space.mamba_head_dim, parent.mamba_head_dim),
             space.allowed(space.mamba_heads, parent.mamba_num_heads),
             space.allowed(space.hidden, parent.hidden_size),
             space.allowed(space.moe_experts, parent.n_routed_experts),
             space.allowed(space.moe_expert_ffn, parent.moe_intermediate_size),
             space.allowed(space.moe_shared_ffn, parent.moe_shared_expert_intermediate_size)};
  for (int k = 0; k < kAxes; ++k) {
    p.stride[k] = p.combos;
    p.combos *= static_cast<int64_t>(p.width[k].size());
  }
  p.min_layers = space.min_layers(parent);
  // w(type) of the proxy formula (see the header): kept fractions per axis
  // value first (each sorts a score vector once), then their products.
  struct AxisScores { const std::vector<double>* scores; int64_t parent, groups; };
  const AxisScores axes[kAxes] = {{&imp.ffn, parent.intermediate_size, 1},
                                  {&imp.attention_heads, parent.num_attention_heads, parent.num_key_value_heads},
                                  {&imp.mamba_head_channels, parent.mamba_head_dim, 1},
                                  {&imp.mamba_heads, parent.mamba_num_heads, parent.n_groups},
                                  {&imp.hidden, parent.hidden_size, 1},
                                  {&imp.moe_experts, parent.n_routed_experts, std::max<int64_t>(parent.n_group, 1)},
                                  {&imp.moe_expert_neurons, parent.moe_intermediate_size, 1},
                                  {&imp.moe_shared_neurons, parent.moe_shared_expert_intermediate_size, 1}};
  std::array<std::vector<double>, kAxes> frac;
  for (int k = 0; k < kAxes; ++k)
    frac[k] = kept_fractions(*axes[k].scores, axes[k].parent, p.width[k], axes[k].groups);
  const double routed = moe_routed_share(parent);
  p.factors.reserve(static_cast<size_t>(p.combos));
  for (int64_t c = 0; c < p.combos; ++c) {
    auto f = [&](int k) { return frac[k][static_cast<size_t>(p.digit(c, k))]; };
    const double h = f(4);
    p.factors.push_back({h * f(3) * f(2), h * f(1), h * f(0), h * (routed * f(5) * f(6) + (1 - routed) * f(7))});
  }
  return p;
}

ModelConfig with_widths(const ModelConfig& parent, const Widths& w) {
  ModelConfig c = parent;
  c.intermediate_size = w.ffn;
  c.hidden_size = w.hidden;
  c.mamba_num_heads = w.mamba_heads;
  c.mamba_head_dim = w.mamba_head_dim;
  c.num_attention_heads = w.attention_heads;
  c.n_routed_experts = w.moe_experts;
  c.moe_intermediate_size = w.moe_expert_ffn;
  c.moe_shared_expert_intermediate_size = w.moe_shared_ffn;
  return c;
}

std::vector<int64_t> kept_layers(const Prepared& p, const std::array<int64_t, 4>& n) {
  std::vector<int64_t> kept;
  for (int t = 0; t < 4; ++t) kept.insert(kept.end(), p.order[t].begin(), p.order[t].begin() + n[t]);
  std::sort(kept.begin(), kept.end());
  return kept;
}

// One evaluated candidate: the width combination and the layer counts.
struct Point {
  double score, memory;
  int64_t seq, combo;
  std::array<int64_t, 4> n;
};
// True when a ranks above b: higher proxy, then less memory, then earlier.
bool better(const Point& a, const Point& b) {
  if (a.score != b.score) return a.score > b.score;
  if (a.memory != b.memory) return a.memory < b.memory;
  return a.seq < b.seq;
}


Candidate build(const Prepared& p, const Point& pt, const Deployment& d) {
  const ModelConfig& parent = *p.parent;
  Candidate c;
  c.kept_layers = kept_layers(p, pt.n);
  for (int64_t i = 0, k = 0; i < parent.num_layers(); ++i) {
    if (k < static_cast<int64_t>(c.kept_layers.size()) && c.kept_layers[static_cast<size_t>(k)] == i) ++k;
    else c.dropped_layers.push_back(i);
  }
  const Widths w = p.widths(pt.combo);
  c.config = with_widths(parent, w);
  c.config.pattern.clear();
  for (int64_t i : c.kept_layers) c.config.pattern.push_back(parent.pattern[static_cast<size_t>(i)]);
  c.params = count_parameters(c.config);
  c.memory = memory_breakdown(c.config, d);
  const auto& f = p.factors[static_cast<size_t>(pt.combo)];
  c.width_factor_mamba = f[0];
  c.width_factor_attention = f[1];
  c.width_factor_mlp = f[2];
  c.width_factor_moe = f[3];
  c.proxy_score = pt.score;
  c.layer_importance_kept =
      (p.prefix[0][pt.n[0]] + p.prefix[1][pt.n[1]] + p.prefix[2][pt.n[2]] + p.prefix[3][pt.n[3]]) / p.total;
  return c;
}

std::string explain(const Candidate& c, const ModelConfig& parent, int64_t feasible, double budget) {
  std::string why = fmt::format("rank {} of {} feasible by proxy {:.4f}: keeps {:.1f}% of layer importance", c.rank,
                                feasible, c.proxy_score, 100 * c.layer_importance_kept);
  if (c.width_factor_mamba < 1 || c.width_factor_attention < 1 || c.width_factor_mlp < 1)
    why += fmt::format(", width factors M {:.3f} * {:.3f} - {:.3f}", c.width_factor_mamba, c.width_factor_attention,
                       c.width_factor_mlp);
  if (parent.has_moe() && c.width_factor_moe < 1) why += fmt::format(", MoE width factor {:.3f}", c.width_factor_moe);
  why += "; drops";
  for (LayerType t : kTypes)
    if (t != LayerType::Moe || parent.has_moe())
      why += fmt::format(" {} {}", parent.count(t) - c.config.count(t), static_cast<char>(t));
  auto change = [&](const char* name, int64_t from, int64_t to) {
    if (from != to) why += fmt::format("; {} {}->{}", name, from, to);
  };
  change("FFN", parent.intermediate_size, c.config.intermediate_size);
  change("hidden", parent.hidden_size, c.config.hidden_size);
  change("Mamba heads", parent.mamba_num_heads, c.config.mamba_num_heads);
  change("Mamba head dim", parent.mamba_head_dim, c.config.mamba_head_dim);
  change("attention heads", parent.num_attention_heads, c.config.num_attention_heads);
  change("routed experts", parent.n_routed_experts, c.config.n_routed_experts);
  change("expert FFN", parent.moe_intermediate_size, c.config.moe_intermediate_size);
  change("shared expert FFN", parent.moe_shared_expert_intermediate_size, c.config.moe_shared_expert_intermediate_size);
  if (parent.has_moe()) why += fmt::format("; {} active parameters", c.params.active);
  return why + fmt::format("; {} of {}", format_bytes(c.memory.total), format_bytes(budget));
}

void check_inputs(const ModelConfig& parent, const SearchImportance& imp, const CandidateSpace& space,
                  const SearchOptions& o) {
  imp.validate(parent);
  space.validate(parent);
  o.deployment.validate();
  if (!(o.budget_bytes > 0) || !std::isfinite(o.budget_bytes)) throw InputError("the memory budget must be positive");
  if (o.top_k < 1) throw InputError("top-k must be at least 1, got " + std::to_string(o.top_k));
  if (o.max_active_params < 0 || !std::isfinite(o.max_active_params))
    throw InputError("the active-parameter limit must be positive");
  if (space.grid_size() > kMaxGrid)
    throw InputError(fmt::format("the candidate space has {:.3g} points, more than the {:.0e} an exhaustive search "
                                 "covers; narrow the axes or raise their steps",
                                 space.grid_size(), kMaxGrid));
}

// The sweep both searches share: `Eval` gives the memory, active parameters
// and proxy of a row of candidates (all MLP counts for one width combination
// and (m, a, e)) and the memory / active parameters of a single point for
// the maximal_only neighbour test.
template <class Eval>
SearchResult sweep(const Prepared& p, const CandidateSpace& space, const SearchOptions& o, Eval& eval) {
  SearchResult r;
  r.deployment = o.deployment;
  r.budget_bytes = o.budget_bytes;
  r.max_active_params = o.max_active_params;
  r.min_memory_bytes = std::numeric_limits<double>::infinity();
  r.min_active_params = std::numeric_limits<double>::infinity();
  const bool limit_active = o.max_active_params > 0;
  double min_memory_active_ok = std::numeric_limits<double>::infinity();
  int64_t fitting = 0;
  double largest_fitting = 0;
  auto worse_on_top = [](const Point& a, const Point& b) { return better(a, b); };
  std::priority_queue<Point, std::vector<Point>, decltype(worse_on_top)> heap(worse_on_top);
  const auto& cm = p.counts[0];
  const auto& ca = p.counts[1];
  const auto& cl = p.counts[2];
  const auto& ce = p.counts[3];
  int64_t seq = 0;
  for (int64_t combo = 0; combo < p.combos; ++combo) {
    const bool ffn_max = p.at_max(combo, 0), attn_max = p.at_max(combo, 1),
               mamba_max = p.at_max(combo, 2) && p.at_max(combo, 3),
               moe_max = p.at_max(combo, 5) && p.at_max(combo, 6) && p.at_max(combo, 7);
    for (size_t im = 0; im < cm.size(); ++im) {
      if (cm[im] == 0 && !mamba_max) continue;
      for (size_t ia = 0; ia < ca.size(); ++ia) {
        if (ca[ia] == 0 && !attn_max) continue;
        for (size_t ie = 0; ie < ce.size(); ++ie) {
          if (ce[ie] == 0 && !moe_max) continue;
          eval.row(combo, cm[im], ca[ia], ce[ie]);
          for (size_t il = 0; il < cl.size(); ++il) {
            const int64_t m = cm[im], a = ca[ia], e = ce[ie], l = cl[il];
            if ((l == 0 && !ffn_max) || m + a + e + l < p.min_layers) continue;
            const double mem = eval.mem[static_cast<Eigen::Index>(il)];
            const double active = eval.active[static_cast<Eigen::Index>(il)];
            ++r.evaluated;
            const int64_t this_seq = seq++;
            r.min_memory_bytes = std::min(r.min_memory_bytes, mem);
            r.min_active_params = std::min(r.min_active_params, active);
            if (limit_active && active > o.max_active_params) continue;
            min_memory_active_ok = std::min(min_memory_active_ok, mem);
            if (mem > o.budget_bytes) continue;
            ++fitting;
            largest_fitting = std::max(largest_fitting, mem);
            if (mem < space.min_budget_use * o.budget_bytes) continue;
            if (space.maximal_only) {
              auto fits = [&](int64_t c2, int64_t m2, int64_t a2, int64_t e2, int64_t l2) {
                return eval.memory(c2, m2, a2, e2, l2) <= o.budget_bytes &&
                       (!limit_active || eval.active_params(c2, m2, a2, e2, l2) <= o.max_active_params);
              };
              bool grows = (im + 1 < cm.size() && fits(combo, cm[im + 1], a, e, l)) ||
                           (ia + 1 < ca.size() && fits(combo, m, ca[ia + 1], e, l)) ||
                           (ie + 1 < ce.size() && fits(combo, m, a, ce[ie + 1], l)) ||
                           (il + 1 < cl.size() && fits(combo, m, a, e, cl[il + 1]));
              for (int k = 0; k < kAxes && !grows; ++k)
                if (!p.at_max(combo, k)) grows = fits(combo + p.stride[k], m, a, e, l);
              if (grows) continue;
            }
            ++r.feasible;
            Point pt{eval.score[static_cast<Eigen::Index>(il)], mem, this_seq, combo, {m, a, l, e}};
            if (static_cast<int64_t>(heap.size()) < o.top_k) heap.push(pt);
            else if (better(pt, heap.top())) {
              heap.pop();
              heap.push(pt);
            }
          }
        }
      }
    }
  }
  if (limit_active && !(r.min_active_params <= o.max_active_params))
    throw InputError(fmt::format("no candidate has at most {:.0f} active parameters per token: the smallest active "
                                 "count reachable in the allowed space is {:.0f}; raise --max-active-params or allow "
                                 "more depth/width reduction",
                                 o.max_active_params, r.min_active_params));
  if (fitting == 0)
    throw InputError(fmt::format("no candidate fits the budget of {}{}: the smallest memory reachable in the "
                                 "allowed space is {}; raise the budget, lower the precisions or context, or "
                                 "allow more depth/width reduction",
                                 format_bytes(o.budget_bytes),
                                 limit_active ? fmt::format(" with at most {:.0f} active parameters", o.max_active_params)
                                              : std::string(),
                                 format_bytes(limit_active ? min_memory_active_ok : r.min_memory_bytes)));
  if (r.feasible == 0)
    throw InputError(fmt::format("no candidate uses at least {:.1f}% of the {} budget (the largest that fits "
                                 "uses {}); lower min_budget_use",
                                 100 * space.min_budget_use, format_bytes(o.budget_bytes), format_bytes(largest_fitting)));
  std::vector<Point> top;
  for (; !heap.empty(); heap.pop()) top.push_back(heap.top());
  std::sort(top.begin(), top.end(), better);
  for (size_t i = 0; i < top.size(); ++i) {
    Candidate c = build(p, top[i], o.deployment);
    c.rank = static_cast<int64_t>(i) + 1;
    c.why = explain(c, *p.parent, r.feasible, o.budget_bytes);
    r.candidates.push_back(std::move(c));
  }
  return r;
}

// Active parameters of one MoE layer: every weight but the routed experts a
// token is not sent to.
int64_t moe_layer_active_params(const ModelConfig& c) {
  if (c.n_routed_experts <= 0) return 0;
  return moe_layer_params(c) - moe_routed_expert_params(c) / c.n_routed_experts * (c.n_routed_experts - c.num_experts_per_tok);
}

// Fast evaluation: for fixed widths every layer of a type costs the same
// bytes, so memory = fixed + m*cost_M + a*cost_A + l*cost_L + e*cost_E (and
// active parameters likewise) and the proxy is a sum of prefix sums. Per
// width combination these costs come from the memory model once; a row over
// the MLP counts is one Eigen expression.
struct FastEval {
  const Prepared& p;
  Eigen::Matrix<double, Eigen::Dynamic, 5, Eigen::RowMajor> cost;    // fixed, M, A, L, E per combo
  Eigen::Matrix<double, Eigen::Dynamic, 5, Eigen::RowMajor> params;  // active parameters, same layout
  Eigen::Matrix<double, Eigen::Dynamic, 4, Eigen::RowMajor> factor;  // w(type) per combo
  Eigen::ArrayXd l_counts, l_prefix, mem, active, score;

  FastEval(const Prepared& prep, const Deployment& d) : p(prep) {
    cost.resize(p.combos, 5);
    params.resize(p.combos, 5);
    factor.resize(p.combos, 4);
    const double kvb = precision_bits(d.kv_cache) / 8, sb = precision_bits(d.state) / 8,
                 seqs = static_cast<double>(d.batch);
    for (int64_t c = 0; c < p.combos; ++c) {
      const Widths w = p.widths(c);
      const ModelConfig cfg = with_widths(*p.parent, w);
      // Weight bytes are linear in the layer counts at every precision (an
      // export format converts each layer's projections alike), so one layer
      // of a type costs the bytes it adds to the layerless model.
      ModelConfig layerless = cfg;
      layerless.pattern.clear();
      const double fixed = weight_bytes(layerless, d.weights);
      auto layer_bytes = [&](char type) {
        ModelConfig one = layerless;
        one.pattern = std::string(1, type);
        return weight_bytes(one, d.weights) - fixed;
      };
      const double ssm = static_cast<double>(mamba_ssm_state_values(cfg)) * seqs * sb;
      const double conv = static_cast<double>(mamba_conv_state_values(cfg)) * seqs * sb;
      const double kv = static_cast<double>(kv_values_per_token_per_layer(cfg)) * static_cast<double>(d.context) * seqs * kvb;
      cost(c, 0) = fixed + d.workspace_bytes;
      cost(c, 1) = layer_bytes('M') + ssm + conv;
      cost(c, 2) = layer_bytes('*') + kv;
      cost(c, 3) = layer_bytes('-');
      // Every routed expert is resident: an MoE layer costs all its weights.
      cost(c, 4) = p.parent->has_moe() ? layer_bytes('E') : 0.0;
      const ParamCounts pc = count_parameters(cfg);
      params(c, 0) = static_cast<double>(pc.embeddings + pc.lm_head + pc.final_norm);
      params(c, 1) = static_cast<double>(pc.per_mamba_layer);
      params(c, 2) = static_cast<double>(pc.per_attention_layer);
      params(c, 3) = static_cast<double>(pc.per_mlp_layer);
      params(c, 4) = p.parent->has_moe() ? static_cast<double>(moe_layer_active_params(cfg)) : 0.0;
      for (int t = 0; t < 4; ++t) factor(c, t) = p.factors[static_cast<size_t>(c)][static_cast<size_t>(t)];
    }
    const auto& cl = p.counts[2];
    l_counts.resize(static_cast<Eigen::Index>(cl.size()));
    l_prefix.resize(l_counts.size());
    for (size_t i = 0; i < cl.size(); ++i) {
      l_counts[static_cast<Eigen::Index>(i)] = static_cast<double>(cl[i]);
      l_prefix[static_cast<Eigen::Index>(i)] = p.prefix[2][static_cast<size_t>(cl[i])];
    }
    mem.resize(l_counts.size());
    active.resize(l_counts.size());
    score.resize(l_counts.size());
  }
  void row(int64_t c, int64_t m, int64_t a, int64_t e) {
    const double base = cost(c, 0) + static_cast<double>(m) * cost(c, 1) + static_cast<double>(a) * cost(c, 2) +
                        static_cast<double>(e) * cost(c, 4);
    const double pbase = params(c, 0) + static_cast<double>(m) * params(c, 1) + static_cast<double>(a) * params(c, 2) +
                         static_cast<double>(e) * params(c, 4);
    const double sbase = factor(c, 0) * p.prefix[0][static_cast<size_t>(m)] +
                         factor(c, 1) * p.prefix[1][static_cast<size_t>(a)] +
                         factor(c, 3) * p.prefix[3][static_cast<size_t>(e)];
    mem = base + cost(c, 3) * l_counts;
    active = pbase + params(c, 3) * l_counts;
    score = (sbase + factor(c, 2) * l_prefix) / p.total;
  }
  double memory(int64_t c, int64_t m, int64_t a, int64_t e, int64_t l) const {
    return cost(c, 0) + static_cast<double>(m) * cost(c, 1) + static_cast<double>(a) * cost(c, 2) +
           static_cast<double>(e) * cost(c, 4) + static_cast<double>(l) * cost(c, 3);
  }
  double active_params(int64_t c, int64_t m, int64_t a, int64_t e, int64_t l) const {
    return params(c, 0) + static_cast<double>(m) * params(c, 1) + static_cast<double>(a) * params(c, 2) +
           static_cast<double>(e) * params(c, 4) + static_cast<double>(l) * params(c, 3);
  }
};

// Reference evaluation: every candidate becomes a ModelConfig and goes
// through the full memory model; the proxy is summed over its kept layers.
struct ReferenceEval {
  const Prepared& p;
  Deployment d;
  Eigen::ArrayXd mem, active, score;

  ReferenceEval(const Prepared& prep, const Deployment& dep) : p(prep), d(dep) {
    mem.resize(static_cast<Eigen::Index>(p.counts[2].size()));
    active.resize(mem.size());
    score.resize(mem.size());
  }
  ModelConfig config(int64_t c, int64_t m, int64_t a, int64_t e, int64_t l) const {
    ModelConfig cfg = with_widths(*p.parent, p.widths(c));
    cfg.pattern.clear();
    for (int64_t i : kept_layers(p, {m, a, l, e})) cfg.pattern.push_back(p.parent->pattern[static_cast<size_t>(i)]);
    return cfg;
  }
  double memory(int64_t c, int64_t m, int64_t a, int64_t e, int64_t l) const {
    return memory_breakdown(config(c, m, a, e, l), d).total;
  }
  double active_params(int64_t c, int64_t m, int64_t a, int64_t e, int64_t l) const {
    return static_cast<double>(count_parameters(config(c, m, a, e, l)).active);
  }
  void row(int64_t c, int64_t m, int64_t a, int64_t e) {
    const auto& f = p.factors[static_cast<size_t>(c)];
    for (size_t i = 0; i < p.counts[2].size(); ++i) {
      const int64_t l = p.counts[2][i];
      const std::array<int64_t, 4> n = {m, a, l, e};
      std::array<double, 4> kept{};
      for (int t = 0; t < 4; ++t)
        for (int64_t j = 0; j < n[static_cast<size_t>(t)]; ++j)
          kept[static_cast<size_t>(t)] += p.s[static_cast<size_t>(p.order[t][static_cast<size_t>(j)])];
      mem[static_cast<Eigen::Index>(i)] = memory(c, m, a, e, l);
      active[static_cast<Eigen::Index>(i)] = active_params(c, m, a, e, l);
      // Summed in FastEval's order, so both give the same bits.
      score[static_cast<Eigen::Index>(i)] = (f[0] * kept[0] + f[1] * kept[1] + f[3] * kept[3] + f[2] * kept[2]) / p.total;
    }
  }
};

}  // namespace

SearchResult search_architectures(const ModelConfig& parent, const SearchImportance& importance,
                                  const CandidateSpace& space, const SearchOptions& options) {
  check_inputs(parent, importance, space, options);
  const Prepared p = prepare(parent, importance, space);
  FastEval eval(p, options.deployment);
  return sweep(p, space, options, eval);
}

SearchResult search_architectures_reference(const ModelConfig& parent, const SearchImportance& importance,
                                            const CandidateSpace& space, const SearchOptions& options) {
  check_inputs(parent, importance, space, options);
  const Prepared p = prepare(parent, importance, space);
  ReferenceEval eval(p, options.deployment);
  return sweep(p, space, options, eval);
}

std::vector<int64_t> layer_keep_order(const ModelConfig& parent, const SearchImportance& importance, LayerType type) {
  importance.validate(parent);
  const Prepared p = prepare(parent, importance, CandidateSpace::depth_only(parent));
  for (int t = 0; t < 4; ++t)
    if (kTypes[static_cast<size_t>(t)] == type) return p.order[static_cast<size_t>(t)];
  return {};
}

}  // namespace minipuzzle
