// Helpers shared by the checkpoint tests (plain and FP8).
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/errors.h"

namespace minipuzzle::testing {

// An empty directory under /tmp, unique to this process and `name`.
inline std::filesystem::path fresh_dir(const std::string& prefix, const std::string& name) {
  auto d = std::filesystem::temp_directory_path() / (prefix + name + "_" + std::to_string(::getpid()));
  remove_tree(d);
  std::filesystem::create_directories(d);
  return d;
}

// load_model(dir) must throw InputError whose message contains `needle`.
inline void expect_load_error(const std::filesystem::path& dir, const std::string& needle) {
  try {
    load_model(dir);
    FAIL() << "expected InputError with " << needle;
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

}  // namespace minipuzzle::testing
