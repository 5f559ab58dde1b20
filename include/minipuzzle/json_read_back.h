#pragma once
// JSON that we wrote and read back (a run's run.json, trainer_state.json,
// metrics lines). The directory may still be damaged or hand-edited, so the
// text gets the same bounds as outside input (parse_json_lenient: nesting
// limit, Python's Infinity/NaN), but a failure yields a discarded value and
// the caller keeps its own message ("unreadable run.json", skip the line).
#include <nlohmann/json.hpp>

#include <string>

namespace minipuzzle {

nlohmann::json parse_json_read_back(const std::string& text);

}  // namespace minipuzzle
