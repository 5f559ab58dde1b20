// config.json (src/model_config.cpp): the input is DIR/config.json, read by
// ModelConfig::load as every command does. An accepted config must survive
// what `inspect` and the writers do with it: parameter counts, the memory
// model, and a to_json_text() round trip that reads back equal.
#include "fuzz_common.h"
#include "minipuzzle/memory_model.h"
#include "minipuzzle/model_config.h"

namespace minipuzzle::fuzz {

void model_config(const uint8_t* data, std::size_t size) {
  const auto dir = scratch_dir() / "config";
  std::filesystem::create_directories(dir);
  write_bytes(dir / "config.json", data, size);
  const ModelConfig c = ModelConfig::load(dir);

  const ParamCounts p = count_parameters(c);
  if (p.total <= 0) finding("accepted config has " + std::to_string(p.total) + " parameters");
  Deployment d;
  d.context = 1'000'000;
  (void)memory_breakdown(c, d);
  for (int64_t i = 0; i < c.num_layers(); ++i) (void)layer_params(c, c.layer_type(i));

  const std::string text = c.to_json_text();
  ModelConfig back;
  try {
    back = ModelConfig::from_json_text(text, "round trip");
  } catch (const std::exception& e) {
    finding(std::string("accepted config does not read back after to_json_text(): ") + e.what());
  }
  if (!(back == c)) finding("config changed in a to_json_text() round trip");
}

}  // namespace minipuzzle::fuzz

MINIPUZZLE_FUZZ_TARGET(minipuzzle::fuzz::model_config)
