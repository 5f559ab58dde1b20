#include "minipuzzle/streamed_model.h"

#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <future>
#include <map>
#include <optional>
#include <set>

#include "minipuzzle/checkpoint.h"
#include "minipuzzle/checkpoint_reader.h"
#include "minipuzzle/checkpoint_rewrite.h"
#include "minipuzzle/device_memory.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/host_to_device.h"

namespace minipuzzle {

namespace {

constexpr const char* kEmbeddings = "backbone.embeddings.weight";
constexpr const char* kLmHead = "lm_head.weight";
constexpr const char* kNormF = "backbone.norm_f.weight";

// "1.73 GiB", "812.4 MiB", "96.0 KiB", "512 B": readable for a 56B model and a test-sized one.
std::string gib(uint64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (b >= (1ULL << 30)) return fmt::format("{:.2f} GiB", b / (1ULL << 30));
  if (b >= (1ULL << 20)) return fmt::format("{:.1f} MiB", b / (1ULL << 20));
  if (b >= (1ULL << 10)) return fmt::format("{:.1f} KiB", b / (1ULL << 10));
  return fmt::format("{} B", bytes);
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Weight bytes of each block at `elem` bytes per value (exact: from the
// model's own tensor table).
std::vector<uint64_t> block_bytes(const ModelConfig& c, int64_t elem) {
  std::vector<uint64_t> out(static_cast<size_t>(c.num_layers()), 0);
  const std::string prefix = "backbone.layers.";
  for (const auto& r : identity_recipes(c)) {
    if (r.name.rfind(prefix, 0) != 0) continue;
    const int64_t layer = std::stoll(r.name.substr(prefix.size()));
    out[static_cast<size_t>(layer)] += static_cast<uint64_t>(numel(r.shape) * elem);
  }
  return out;
}

uint64_t device_total_memory(const torch::Device& device) { return device_total_bytes(device).value_or(0); }

}  // namespace

std::string ResidencyPlan::describe() const {
  if (!streamed)
    return fmt::format("weights resident: {}{}", gib(weight_bytes),
                       cap_bytes ? fmt::format(" (cap {})", gib(cap_bytes)) : std::string());
  return fmt::format(
      "weights streamed: cap {}, model {}; blocks two at a time ({}), LM head {} rows at a time ({}); "
      "{} batches per layer-major group (hidden states {}, working memory {})",
      gib(cap_bytes), gib(weight_bytes), gib(streaming_bytes), head_slice_rows, gib(head_slice_bytes),
      group_batches, gib(activation_bytes_per_batch * static_cast<uint64_t>(group_batches)), gib(working_bytes));
}

ResidencyPlan plan_residency(const ModelConfig& c, torch::ScalarType dtype, const ResidencyOptions& o,
                             const torch::Device& device) {
  if (o.seq_len <= 0) throw InputError("--seq-len must be positive");
  if (o.batch <= 0) throw InputError("--batch must be positive");
  const int64_t elem = static_cast<int64_t>(c10::elementSize(dtype));
  const uint64_t tokens = static_cast<uint64_t>(o.batch * o.seq_len);
  ResidencyPlan p;
  const auto blocks = block_bytes(c, elem);
  const uint64_t head = static_cast<uint64_t>(c.vocab_size * c.hidden_size * elem);
  p.weight_bytes = 2 * head + static_cast<uint64_t>(c.hidden_size * elem);
  uint64_t largest_block = 0;
  for (uint64_t b : blocks) {
    p.weight_bytes += b;
    largest_block = std::max(largest_block, b);
  }
  // One batch through the widest projection (its output, the activations
  // the mixer derives from it, a copy in fp32 for the norms) and its fp32
  // logits with one temporary of their size (softmax, argmax), unless the
  // command says it holds less of them.
  const int64_t widest = std::max({c.mamba_in_proj_dim(), c.intermediate_size, c.attention_q_dim(), c.hidden_size});
  const uint64_t logits = o.logit_bytes ? *o.logit_bytes : tokens * static_cast<uint64_t>(2 * c.vocab_size * 4);
  p.working_bytes = tokens * static_cast<uint64_t>(4 * widest * elem) + logits + o.extra_working_bytes;
  p.activation_bytes_per_batch =
      tokens * static_cast<uint64_t>(c.hidden_size * elem) * static_cast<uint64_t>(std::max<int64_t>(o.states_per_batch, 1));
  uint64_t cap = o.max_device_memory.value_or(device_total_memory(device));
  p.cap_bytes = o.max_device_memory ? cap : 0;
  if (cap == 0 || p.weight_bytes + p.working_bytes <= cap) return p;

  p.streamed = true;
  p.cap_bytes = cap;
  p.largest_unit_bytes = largest_block;
  p.streaming_bytes = 2 * largest_block;
  const uint64_t fixed = p.streaming_bytes + p.working_bytes + static_cast<uint64_t>(c.hidden_size * elem);
  if (cap < fixed + p.activation_bytes_per_batch)
    throw InputError(fmt::format(
        "--max-device-memory {} is too small to stream this model: two blocks in flight ({}), one batch's working "
        "memory ({}) and hidden state ({}) need at least {} (or use a smaller --batch / --seq-len)",
        gib(cap), gib(p.streaming_bytes), gib(p.working_bytes), gib(p.activation_bytes_per_batch),
        gib(fixed + p.activation_bytes_per_batch)));
  const uint64_t room = cap - fixed;
  p.group_batches = static_cast<int64_t>(
      std::min<uint64_t>(std::max<int64_t>(o.batches, 1), room / std::max<uint64_t>(p.activation_bytes_per_batch, 1)));
  // The head goes in slices that fit the two streaming slots and what the
  // group leaves over: each slice at most half of that, never less than a
  // block's worth of rows.
  const uint64_t head_room =
      p.streaming_bytes + (room - static_cast<uint64_t>(p.group_batches) * p.activation_bytes_per_batch);
  const uint64_t row = static_cast<uint64_t>(c.hidden_size * elem);
  // Whole slices of the head's own product (kLmHeadSliceRows), so the bits
  // are the resident model's.
  const uint64_t slices = std::max<uint64_t>(head_room / 2 / row / kLmHeadSliceRows, 1);
  p.head_slice_rows = static_cast<int64_t>(std::min<uint64_t>(slices * kLmHeadSliceRows, c.vocab_size));
  p.head_slice_bytes = static_cast<uint64_t>(p.head_slice_rows) * row;
  p.largest_unit_bytes = std::max(largest_block, p.head_slice_bytes);
  return p;
}

uint64_t parse_max_device_memory(const std::string& text, const ModelConfig& c, torch::ScalarType dtype,
                                 const torch::Device& device) {
  if (!text.empty() && text.back() == '%') {
    const std::string number = text.substr(0, text.size() - 1);
    char* end = nullptr;
    const double pct = std::strtod(number.c_str(), &end);
    if (number.empty() || end != number.c_str() + number.size() || !(pct > 0) || pct > 100)
      throw InputError("--max-device-memory " + text + ": a percentage must be in (0, 100]");
    uint64_t base = 0;
    if (device.is_cuda()) {
      base = device_total_memory(device);
    } else {
      base = plan_residency(c, dtype, {}, device).weight_bytes;  // on the CPU: of the model's weights
    }
    return static_cast<uint64_t>(std::floor(static_cast<double>(base) * pct / 100.0));
  }
  try {
    return parse_byte_size(text);
  } catch (const InputError& e) {
    throw InputError(std::string("--max-device-memory: ") + e.what() + " or a percentage such as 25%");
  }
}

// The streamed half: which parameters each block owns, their placeholders,
// the reader, and the read-ahead of the next unit on a helper thread.
struct ForwardModel::Stream {
  std::shared_ptr<CheckpointReader> reader;
  torch::ScalarType dtype;
  torch::Device device{torch::kCPU};
  // A model cut from its parent's checkpoint: each tensor's recipe, by the
  // model's name (empty: every tensor read as it is stored).
  std::map<std::string, TensorRecipe> recipes;
  int64_t source_hidden = 0;  // the checkpoint's hidden size (the head's and embedding's columns as read)
  // CUDA: a block's host-to-device copy runs on this side stream and the
  // compute stream waits on an event for it, so the copy of block i+1 runs
  // while block i's kernels do (the host queues block i, then copies i+1).
  // Device-generic c10 calls: on the CPU this stays empty and nothing changes.
  std::optional<c10::Stream> copy_stream;
  std::vector<std::vector<std::pair<std::string, torch::Tensor>>> block_params;  // placeholders
  std::vector<uint64_t> bytes;
  uint64_t held = 0, peak = 0;

  using Read = std::vector<torch::Tensor>;
  // Host tensors of a unit, read on a helper thread while the device works.
  std::future<Read> ahead;
  int64_t ahead_unit = -1;

  torch::Tensor head;  // the whole LM head, when the plan lets it stay between calls

  void drop_head() {
    if (!head.defined()) return;
    held -= static_cast<uint64_t>(head.numel()) * head.element_size();
    head = torch::Tensor();
  }

  void hold(uint64_t n) {
    held += n;
    peak = std::max(peak, held);
  }

  const TensorRecipe* recipe(const std::string& name) const {
    auto it = recipes.find(name);
    return it == recipes.end() ? nullptr : &it->second;
  }

  // The model's tensor `name` on the host: as stored, or cut from its source
  // (only the kept rows read, then the kept columns: apply_recipe's order).
  torch::Tensor read_param(const std::string& name) const {
    const TensorRecipe* r = recipe(name);
    if (!r) return reader->read(name, dtype);
    if (r->rows.empty()) return apply_recipe(reader->read(r->source, dtype), *r);
    torch::Tensor kept = reader->read_rows(r->source, torch::tensor(r->rows, torch::kInt64), dtype);
    reader->release(r->source);
    TensorRecipe cols = *r;
    cols.rows.clear();
    return apply_recipe(kept, cols);
  }

  // The model's columns of `rows` read from the checkpoint's tensor
  // `name` (the embedding's token rows, a head slice): recipes never drop
  // vocabulary rows, so only the columns can differ.
  torch::Tensor cut_columns(const std::string& name, const torch::Tensor& rows) const {
    const TensorRecipe* r = recipe(name);
    if (!r) return rows;
    if (!r->rows.empty()) throw std::logic_error("ForwardModel: a recipe drops rows of " + name);
    return apply_recipe(rows, *r);
  }
  std::string source_of(const std::string& name) const {
    const TensorRecipe* r = recipe(name);
    return r ? r->source : name;
  }

  Read read_block(int64_t i) const {
    Read out;
    for (const auto& [name, p] : block_params[static_cast<size_t>(i)]) out.push_back(read_param(name));
    return out;
  }

  void prefetch(int64_t i) {
    if (i >= static_cast<int64_t>(block_params.size()) || ahead_unit == i) return;
    hold(bytes[static_cast<size_t>(i)]);
    ahead_unit = i;
    ahead = std::async(std::launch::async, [this, i] { return read_block(i); });
  }

  void materialise(int64_t i) {
    prefetch(i);
    Read host = ahead.get();  // rethrows a read error (a truncated shard) here
    ahead_unit = -1;
    auto& params = block_params[static_cast<size_t>(i)];
    std::vector<torch::Tensor> on_device(params.size());
    if (copy_stream) {
      const c10::impl::VirtualGuardImpl impl(device.type());
      const c10::Stream compute = impl.getStream(device);
      {
        const c10::StreamGuard on_copy_stream(*copy_stream);
        for (size_t k = 0; k < params.size(); ++k) on_device[k] = to_device_async(host[k], device);
      }
      c10::Event copied(device.type());
      copied.record(*copy_stream);
      compute.wait(copied);
      // Allocated on the copy stream, used and freed on the compute stream:
      // the allocator must not hand the memory out again before the compute
      // stream is done with it.
      for (const auto& t : on_device) impl.recordDataPtrOnStream(t.storage().data_ptr(), compute);
    } else {
      for (size_t k = 0; k < params.size(); ++k) on_device[k] = to_device_async(host[k], device);
    }
    for (size_t k = 0; k < params.size(); ++k) {
      torch::NoGradGuard no_grad;
      // Placeholder -> real storage; the model's modules see it through the
      // same Parameter objects.
      torch::Tensor p = params[k].second;
      p.set_data(on_device[k]);
    }
  }

  void release(int64_t i, HybridLM& model) {
    auto& params = block_params[static_cast<size_t>(i)];
    for (auto& [name, placeholder] : params) {
      torch::Tensor p = placeholder;
      p.set_data(torch::empty_strided(p.sizes(), std::vector<int64_t>(p.dim(), 0), p.options()));
    }
    held -= bytes[static_cast<size_t>(i)];
    (void)model;
  }
};

ForwardModel::ForwardModel(const std::filesystem::path& dir, torch::ScalarType dtype, torch::Device device,
                           ResidencyPlan plan)
    : plan_(plan) {
  if (!plan_.streamed) {
    model_ = load_model(dir, dtype, device);
    plan_.weight_bytes = 0;
    for (const auto& t : model_->parameters()) plan_.weight_bytes += static_cast<uint64_t>(t.numel()) * t.element_size();
    return;
  }
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) throw InputError(dir.string() + ": not a checkpoint directory");
  open_stream(dir, ModelConfig::load(dir), dtype, device, nullptr);
}

ForwardModel::ForwardModel(const std::filesystem::path& dir, const ModelConfig& target,
                           const std::vector<TensorRecipe>& recipes, torch::ScalarType dtype, torch::Device device,
                           ResidencyPlan plan)
    : plan_(plan) {
  if (!plan_.streamed) throw std::logic_error("ForwardModel: a model cut by recipes is streamed");
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) throw InputError(dir.string() + ": not a checkpoint directory");
  open_stream(dir, target, dtype, device, &recipes);
}

void ForwardModel::open_stream(const std::filesystem::path& dir, const ModelConfig& cfg, torch::ScalarType dtype,
                               torch::Device device, const std::vector<TensorRecipe>* recipes) {
  stream_ = std::make_unique<Stream>();
  stream_->reader = std::make_shared<CheckpointReader>(CheckpointReader::open(dir));
  stream_->dtype = dtype;
  stream_->device = device;
  stream_->source_hidden = recipes ? ModelConfig::load(dir).hidden_size : cfg.hidden_size;
  if (device.is_cuda())
    stream_->copy_stream = c10::impl::VirtualGuardImpl(device.type()).getStreamFromGlobalPool(device);
  if (recipes)
    for (const auto& r : *recipes) stream_->recipes.emplace(r.name, r);
  model_ = HybridLM(cfg, torch::TensorOptions().dtype(dtype).device(device), /*placeholders=*/true);
  model_->eval();
  // Everything is checked up front, so a bad checkpoint fails before any work.
  std::set<std::string> used;
  stream_->block_params.resize(static_cast<size_t>(cfg.num_layers()));
  stream_->bytes.assign(static_cast<size_t>(cfg.num_layers()), 0);
  const std::string prefix = "backbone.layers.";
  for (auto& p : model_->named_parameters()) {
    if (recipes) {
      // The recipes come from the parent's own config; its checkpoint was
      // checked when the parent was opened.
      const TensorRecipe* r = stream_->recipe(p.key());
      if (!r || r->shape != p.value().sizes().vec())
        throw std::logic_error("ForwardModel: no recipe of the model's shape for " + p.key());
      if (!stream_->reader->contains(r->source))
        throw InputError(fmt::format("{}: tensor {} is missing", dir.string(), r->source));
    } else {
      stream_->reader->check(p.key(), p.value().sizes().vec());
      used.insert(p.key());
    }
    if (p.key().rfind(prefix, 0) != 0) continue;
    const size_t layer = static_cast<size_t>(std::stoll(p.key().substr(prefix.size())));
    stream_->block_params[layer].emplace_back(p.key(), p.value());
    stream_->bytes[layer] += static_cast<uint64_t>(p.value().numel()) * p.value().element_size();
  }
  if (!recipes) stream_->reader->check_no_extra(used);
  // norm_f is one vector: resident for the whole run.
  torch::NoGradGuard no_grad;
  auto norm_f = model_->named_parameters()[kNormF];
  norm_f.set_data(to_device_async(stream_->read_param(kNormF), device));
  stream_->hold(static_cast<uint64_t>(norm_f.numel()) * norm_f.element_size());
}

ForwardModel::ForwardModel(HybridLM resident) : model_(std::move(resident)) {
  for (const auto& t : model_->parameters()) plan_.weight_bytes += static_cast<uint64_t>(t.numel()) * t.element_size();
}

ForwardModel::~ForwardModel() {
  if (stream_ && stream_->ahead.valid()) stream_->ahead.wait();
}
ForwardModel::ForwardModel(ForwardModel&&) noexcept = default;

uint64_t ForwardModel::bytes_held() const {
  if (!stream_) return plan_.weight_bytes;
  return stream_->held;
}
uint64_t ForwardModel::peak_bytes_held() const {
  if (!stream_) return plan_.weight_bytes;
  return stream_->peak;
}

void ForwardModel::forward_logits(const std::vector<torch::Tensor>& batches, const LogitsSink& sink) {
  torch::NoGradGuard no_grad;
  if (!stream_) {
    for (size_t i = 0; i < batches.size(); ++i) sink(i, model_->forward(batches[i]));
    return;
  }
  const size_t g = static_cast<size_t>(std::max<int64_t>(plan_.group_batches, 1));
  for (size_t first = 0; first < batches.size(); first += g)
    run_group(batches, first, std::min(g, batches.size() - first), &sink, nullptr);
}

void ForwardModel::forward_hidden(const std::vector<torch::Tensor>& batches, const HiddenSink& sink) {
  torch::NoGradGuard no_grad;
  if (!stream_) {
    for (size_t i = 0; i < batches.size(); ++i) sink(i, model_->forward_hidden(batches[i]));
    return;
  }
  const size_t g = static_cast<size_t>(std::max<int64_t>(plan_.group_batches, 1));
  for (size_t first = 0; first < batches.size(); first += g)
    run_group(batches, first, std::min(g, batches.size() - first), nullptr, &sink);
}

void ForwardModel::run_group(const std::vector<torch::Tensor>& batches, size_t first, size_t count,
                             const LogitsSink* logits_sink, const HiddenSink* hidden_sink) {
  std::vector<torch::Tensor> h = embed(batches, first, count);
  for_each_block([&](int64_t i) {
    auto block = model_->layer(i);
    for (auto& x : h) x = block->forward(x, model_->observers());
  });
  std::vector<torch::Tensor> normed(count);
  for (size_t k = 0; k < count; ++k) normed[k] = model_->final_norm(h[k]);
  h.clear();
  for (size_t k = 0; k < count; ++k) {
    if (hidden_sink) (*hidden_sink)(first + k, normed[k]);
    if (logits_sink) (*logits_sink)(first + k, head_logits(normed[k]));
  }
}

std::vector<torch::Tensor> ForwardModel::embed(const std::vector<torch::Tensor>& batches, size_t first,
                                               size_t count) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> h(count);
  if (!stream_) {
    for (size_t k = 0; k < count; ++k) h[k] = model_->embed(batches[first + k]);
    return h;
  }
  Stream& s = *stream_;
  s.drop_head();  // a head held from the last pass gives its room back to the blocks
  if (model_->config().num_layers() > 0) s.prefetch(0);  // block 0 reads while the embedding rows do
  // Only the rows of the tokens in this group (a gather, so the same values
  // as indexing the whole table).
  std::vector<torch::Tensor> flat;
  for (size_t k = 0; k < count; ++k) flat.push_back(batches[first + k].reshape({-1}).to(torch::kCPU));
  auto [rows, inverse, counts] = at::_unique2(torch::cat(flat), /*sorted=*/true, /*return_inverse=*/true);
  const uint64_t row_bytes = static_cast<uint64_t>(s.source_hidden) * c10::elementSize(s.dtype);
  s.hold(static_cast<uint64_t>(rows.numel()) * row_bytes);
  auto table = to_device_async(
      s.cut_columns(kEmbeddings, s.reader->read_rows(s.source_of(kEmbeddings), rows, s.dtype)), s.device);
  inverse = to_device_async(inverse, s.device);
  int64_t offset = 0;
  for (size_t k = 0; k < count; ++k) {
    const auto& b = batches[first + k];
    h[k] = torch::embedding(table, inverse.narrow(0, offset, b.numel()).reshape(b.sizes()));
    offset += b.numel();
  }
  table = torch::Tensor();
  s.held -= static_cast<uint64_t>(rows.numel()) * row_bytes;
  return h;
}

void ForwardModel::for_each_block(const std::function<void(int64_t)>& visit) {
  torch::NoGradGuard no_grad;
  const int64_t layers = model_->config().num_layers();
  if (!stream_) {
    for (int64_t i = 0; i < layers; ++i) visit(i);
    return;
  }
  Stream& s = *stream_;
  s.drop_head();
  for (int64_t i = 0; i < layers; ++i) {
    s.materialise(i);
    s.prefetch(i + 1);
    visit(i);
    s.release(i, model_);
  }
}

torch::Tensor ForwardModel::head_logits(const torch::Tensor& normed) {
  torch::NoGradGuard no_grad;
  if (!stream_) return model_->lm_head(normed);
  std::vector<int64_t> shape = normed.sizes().vec();
  shape.back() = model_->config().vocab_size;
  torch::Tensor logits = torch::empty(shape, normed.options().dtype(torch::kFloat32));
  for_each_head_slice([&](int64_t v0, const torch::Tensor& w) {
    logits.narrow(-1, v0, w.size(0)).copy_(lm_head_logits(normed, w));
  });
  return logits;
}

void ForwardModel::release_head() {
  if (stream_) stream_->drop_head();
}

bool ForwardModel::head_read_per_pass() const {
  return stream_ && std::max<int64_t>(plan_.head_slice_rows / kLmHeadSliceRows, 1) * kLmHeadSliceRows <
                        model_->config().vocab_size;
}

void ForwardModel::for_each_head_slice(const std::function<void(int64_t, const torch::Tensor&)>& visit) {
  for_each_head_slice([&](int64_t v0, const torch::Tensor& w, const torch::Tensor&) { visit(v0, w); });
}

void ForwardModel::for_each_head_slice(
    const std::function<void(int64_t, const torch::Tensor&, const torch::Tensor&)>& visit) {
  torch::NoGradGuard no_grad;
  const int64_t V = model_->config().vocab_size;
  if (!stream_) {
    const auto& w = model_->lm_head_weights->weight;
    for (int64_t r = 0; r < V; r += kLmHeadSliceRows) {
      auto slice = w.narrow(0, r, std::min(kLmHeadSliceRows, V - r));
      visit(r, slice, slice);
    }
    return;
  }
  Stream& s = *stream_;
  // Each kLmHeadSliceRows piece of the checkpoint's rows, cut to the model's
  // columns (the whole head cut and then sliced has the same values).
  auto visit_slices = [&](int64_t v_first, const torch::Tensor& source) {
    for (int64_t r = 0; r < source.size(0); r += kLmHeadSliceRows) {
      auto piece = source.narrow(0, r, std::min(kLmHeadSliceRows, source.size(0) - r));
      visit(v_first + r, s.cut_columns(kLmHead, piece), piece);
    }
  };
  // Pieces start at multiples of kLmHeadSliceRows (lm_head_logits' slices).
  const int64_t rows = std::max<int64_t>(plan_.head_slice_rows / kLmHeadSliceRows, 1) * kLmHeadSliceRows;
  const uint64_t row_bytes = static_cast<uint64_t>(s.source_hidden) * c10::elementSize(s.dtype);
  const std::string source = s.source_of(kLmHead);
  if (rows >= V) {
    // The whole head fits: read once, kept until the next pass starts.
    if (!s.head.defined()) {
      s.hold(static_cast<uint64_t>(V) * row_bytes);
      s.head = to_device_async(s.reader->read(source, s.dtype), s.device);
    }
    visit_slices(0, s.head);
    return;
  }
  auto read_slice = [&](int64_t v0) {
    const int64_t n = std::min(rows, V - v0);
    s.hold(static_cast<uint64_t>(n) * row_bytes);
    return std::async(std::launch::async,
                      [&s, &source, v0, n] { return s.reader->read_rows(source, v0, n, s.dtype); });
  };
  // The next piece reads while this one multiplies.
  auto next = read_slice(0);
  for (int64_t v0 = 0; v0 < V; v0 += rows) {
    torch::Tensor w = to_device_async(next.get(), s.device);
    if (v0 + rows < V) next = read_slice(v0 + rows);
    visit_slices(v0, w);
    s.held -= static_cast<uint64_t>(w.size(0)) * row_bytes;
  }
}

}  // namespace minipuzzle
