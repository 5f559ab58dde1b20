#include "minipuzzle/model_folder_files.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/errors.h"

namespace minipuzzle {
namespace fs = std::filesystem;

namespace {

std::string read_whole_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw InputError(p.string() + ": cannot be read");
  std::ostringstream s;
  s << f.rdbuf();
  if (f.bad()) throw InputError(p.string() + ": cannot be read");
  return s.str();
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r") - b + 1);
}

}  // namespace

const std::vector<std::string>& model_folder_file_names() {
  static const std::vector<std::string> names = {
      "tokenizer.json",   "tokenizer_config.json",  "special_tokens_map.json", "added_tokens.json",
      "vocab.json",       "merges.txt",             "tokenizer.model",         "generation_config.json",
      "chat_template.jinja", "chat_template.json"};
  return names;
}

std::vector<fs::path> check_model_folder_files(const fs::path& source) {
  std::vector<fs::path> present;
  for (const auto& name : model_folder_file_names()) {
    const fs::path p = source / name;
    std::error_code ec;
    if (!fs::exists(p, ec)) continue;
    if (!fs::is_regular_file(p, ec)) throw InputError(p.string() + ": not a regular file");
    const std::string text = read_whole_file(p);
    if (ends_with(name, ".json")) {
      try {
        const nlohmann::json parsed = nlohmann::json::parse(text);
        (void)parsed;
      } catch (const nlohmann::json::exception& e) {
        throw InputError(fmt::format("{}: not valid JSON ({}); fix or remove it, nothing was written", p.string(),
                                     e.what()));
      }
    }
    present.push_back(p);
  }
  return present;
}

std::vector<std::string> copy_model_folder_files(const fs::path& source, const fs::path& dest) {
  const std::vector<fs::path> files = check_model_folder_files(source);
  std::vector<std::string> copied;
  for (const auto& p : files) {
    AtomicFile out(dest / p.filename());
    out.write(read_whole_file(p));
    out.commit();
    copied.push_back(p.filename().string());
  }
  return copied;
}

std::vector<std::string> source_license_lines(const fs::path& source) {
  std::error_code ec;
  const fs::path readme = source / "README.md";
  if (!fs::is_regular_file(readme, ec)) return {};
  std::istringstream in(read_whole_file(readme));
  std::string line;
  if (!std::getline(in, line) || trim(line) != "---") return {};
  std::vector<std::string> found[3];
  const char* keys[3] = {"license", "license_name", "license_link"};
  while (std::getline(in, line)) {
    if (trim(line) == "---") break;
    for (int k = 0; k < 3; ++k) {
      const std::string key = std::string(keys[k]) + ":";
      if (line.rfind(key, 0) == 0 && !trim(line.substr(key.size())).empty())
        found[k] = {std::string(keys[k]) + ": " + trim(line.substr(key.size()))};
    }
  }
  std::vector<std::string> out;
  for (auto& f : found) out.insert(out.end(), f.begin(), f.end());
  return out;
}

std::string source_model_name(const fs::path& source) {
  std::error_code ec;
  const fs::path cfg = source / "config.json";
  if (fs::is_regular_file(cfg, ec)) {
    try {
      const auto j = nlohmann::json::parse(read_whole_file(cfg));
      if (j.contains("_name_or_path") && j["_name_or_path"].is_string()) {
        const std::string id = j["_name_or_path"];
        // org/name, not a local path
        if (!id.empty() && id.find('/') != std::string::npos && id.find('/') == id.rfind('/') && id[0] != '/' &&
            id[0] != '.' && id[0] != '~')
          return id;
      }
    } catch (const nlohmann::json::exception&) {
      // the checkpoint loader reports a broken config.json; the card just falls back
    }
  }
  fs::path p = fs::weakly_canonical(source, ec);
  if (ec || p.filename().empty()) p = source;
  return p.filename().string();
}

void write_model_card(const fs::path& dest, const ModelCard& card) {
  // YAML scalars quoted as JSON strings (valid YAML) so names with ':' or '#' survive.
  auto q = [](const std::string& s) { return nlohmann::json(s).dump(); };
  std::string text = "---\n";
  text += "base_model: " + q(card.base_model) + "\n";
  text += "library_name: transformers\n";
  for (const auto& l : card.license_lines) text += l + "\n";
  text += "pipeline_tag: text-generation\n";
  text += "tags:\n";
  for (const auto& t : card.tags) text += "- " + q(t) + "\n";
  text += "---\n\n# " + card.title + "\n\n" + card.body;
  if (!text.empty() && text.back() != '\n') text += "\n";
  AtomicFile out(dest / "README.md");
  out.write(text);
  out.commit();
}

}  // namespace minipuzzle
