// Shared helpers of the data tests: a fresh temp directory per test and
// raw-byte .idx crafting for the validation tests.
#pragma once

#include <gtest/gtest.h>

#include "minipuzzle/atomic_file.h"
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "minipuzzle/errors.h"

namespace minipuzzle::testing {

inline std::filesystem::path fresh_dir(const std::string& name) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  auto dir = std::filesystem::temp_directory_path() /
             ("minipuzzle_data_" + name + "_" + info->test_suite_name() + "_" + info->name() + "_" +
              std::to_string(::getpid()));
  minipuzzle::remove_tree(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

inline void write_bytes(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

template <typename T>
void append(std::string& s, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  s.append(b, sizeof(T));
}

// Expects `fn` to throw InputError whose message contains every needle.
template <typename Fn>
void expect_input_error(Fn fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "expected InputError";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message must be one line: " << msg;
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

}  // namespace minipuzzle::testing
