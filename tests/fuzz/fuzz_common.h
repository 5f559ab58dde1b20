// Shared by the libFuzzer targets (one fuzz_<parser>.cpp each) and the
// corpus replay test (corpus_replay_test.cpp, built with the normal suite).
//
// Each entry point feeds one input to one parser of outside input, exactly as
// the commands read it (through a file where the command takes a path), and
// then uses what was parsed. Contract: it returns normally when the input is
// accepted, throws minipuzzle::InputError when it is rejected. Anything else
// (a crash, a sanitizer report, another exception type, a broken invariant
// reported through finding()) is a bug in the parser.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace minipuzzle::fuzz {

using EntryPoint = void (*)(const uint8_t* data, std::size_t size);

void safetensors_header(const uint8_t* data, std::size_t size);   // fuzz_safetensors.cpp
void checkpoint_index(const uint8_t* data, std::size_t size);     // fuzz_checkpoint_index.cpp
void model_config(const uint8_t* data, std::size_t size);         // fuzz_model_config.cpp
void indexed_dataset(const uint8_t* data, std::size_t size);      // fuzz_indexed_dataset.cpp
void candidates(const uint8_t* data, std::size_t size);           // fuzz_candidates.cpp
void importance_scores(const uint8_t* data, std::size_t size);    // fuzz_importance_scores.cpp
void compress_job(const uint8_t* data, std::size_t size);         // fuzz_compress_job.cpp (when built)

struct Target {
  const char* name;  // also the corpus folder: tests/fuzz/corpus/<name>/
  EntryPoint run;
};
// Every target (defined in corpus_replay_test.cpp).
const std::vector<Target>& all_targets();

// A private scratch directory for this process (created on first use,
// removed at exit).
const std::filesystem::path& scratch_dir();
void write_bytes(const std::filesystem::path& path, const uint8_t* data, std::size_t size);
void write_bytes(const std::filesystem::path& path, const std::string& bytes);

// An accepted input broke an invariant the parser promises: prints the
// message and aborts (a finding, never a rejection).
[[noreturn]] void finding(const std::string& what);

// libFuzzer glue: runs `entry`, treats InputError as a correct rejection and
// any other exception as a finding.
int run_one(EntryPoint entry, const uint8_t* data, std::size_t size);

}  // namespace minipuzzle::fuzz

// One per fuzz_<parser>.cpp; only the libFuzzer executables define
// MINIPUZZLE_LIBFUZZER (the replay test links all entry points together).
#ifdef MINIPUZZLE_LIBFUZZER
#define MINIPUZZLE_FUZZ_TARGET(entry)                                                     \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {          \
    return ::minipuzzle::fuzz::run_one(&(entry), data, size);                             \
  }
#else
#define MINIPUZZLE_FUZZ_TARGET(entry)
#endif
