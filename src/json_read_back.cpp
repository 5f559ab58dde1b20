#include "minipuzzle/json_read_back.h"

#include "minipuzzle/errors.h"
#include "minipuzzle/model_config.h"

namespace minipuzzle {

nlohmann::json parse_json_read_back(const std::string& text) {
  try {
    return parse_json_lenient(text, "");
  } catch (const InputError&) {
    return nlohmann::json(nlohmann::json::value_t::discarded);
  }
}

}  // namespace minipuzzle
