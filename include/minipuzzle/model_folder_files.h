// The files of a Hub model folder that are not weights: the tokenizer, the
// generation defaults and the chat template. prune, distill (final/) and
// export carry them over from the source (teacher) folder so the result
// loads with AutoTokenizer / pipelines like the source did, and export adds a
// model card (README.md with Hub front matter) holding the lineage.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace minipuzzle {

// The names carried over, when present: tokenizer.json, tokenizer_config.json,
// special_tokens_map.json, added_tokens.json, vocab.json, merges.txt,
// tokenizer.model, generation_config.json, chat_template.jinja,
// chat_template.json.
const std::vector<std::string>& model_folder_file_names();

// The carried files present in `source`, checked: every *.json one must parse
// (InputError naming the file otherwise), every one must be a regular
// readable file. Call before writing anything.
std::vector<std::filesystem::path> check_model_folder_files(const std::filesystem::path& source);

// Checks, then copies the files into `dest` (each written atomically; a file
// already there is replaced). Returns the names copied.
std::vector<std::string> copy_model_folder_files(const std::filesystem::path& source,
                                                 const std::filesystem::path& dest);

// The Hub front matter keys of `source`/README.md that describe the license
// (license, license_name, license_link), in that order, as "key: value"
// lines; empty when there is no README or it names none.
std::vector<std::string> source_license_lines(const std::filesystem::path& source);

struct ModelCard {
  std::string title;       // "# title"
  std::string base_model;  // Hub id or folder name of the source
  std::vector<std::string> tags;
  std::vector<std::string> license_lines;  // from source_license_lines
  std::string body;                         // markdown after the title
};
// Writes dest/README.md (atomically).
void write_model_card(const std::filesystem::path& dest, const ModelCard& card);

// The source's Hub id when its config.json names one ("_name_or_path" of the
// form org/name), else the folder's own name.
std::string source_model_name(const std::filesystem::path& source);

}  // namespace minipuzzle
