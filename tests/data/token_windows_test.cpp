#include "minipuzzle/token_windows.h"

#include "minipuzzle/errors.h"
#include "test_util.h"

namespace minipuzzle {
namespace {

using testing::expect_input_error;

TEST(SequentialWindows, StartAtMultiplesOfSeqLenWhileSeqLenPlusOneTokensFit) {
  // 10 tokens, windows of 3+1: starts 0, 3, 6 (6..9 is the last full window).
  EXPECT_EQ(sequential_windows(10, 3), (std::vector<uint64_t>{0, 3, 6}));
  EXPECT_EQ(sequential_windows(9, 3), (std::vector<uint64_t>{0, 3}));
}

TEST(SequentialWindows, ExactlyOneWindowNeedsSeqLenPlusOneTokens) {
  EXPECT_EQ(sequential_windows(5, 4), (std::vector<uint64_t>{0}));
  EXPECT_TRUE(sequential_windows(4, 4).empty());
  EXPECT_TRUE(sequential_windows(0, 4).empty());
}

TEST(SequentialWindows, MaxWindowsCapsTheCount) {
  EXPECT_EQ(sequential_windows(100, 3, 2), (std::vector<uint64_t>{0, 3}));
  EXPECT_EQ(sequential_windows(10, 3, 50).size(), 3u);
}

TEST(SequentialWindows, RejectsNonPositiveSeqLen) {
  expect_input_error([] { sequential_windows(10, 0); }, {"sequence length", "positive"});
}

TEST(RandomWindows, SameSeedGivesSameStarts) {
  EXPECT_EQ(random_windows(1000, 16, 64, 42), random_windows(1000, 16, 64, 42));
}

TEST(RandomWindows, DifferentSeedGivesDifferentStarts) {
  EXPECT_NE(random_windows(1000, 16, 64, 42), random_windows(1000, 16, 64, 43));
}

TEST(RandomWindows, StartsStayInRangeAndReachBothEnds) {
  // 7 tokens, seq_len 4: starts 0..2 only; 3000 draws hit all of them.
  const auto starts = random_windows(7, 4, 3000, 1);
  std::vector<int> hits(3, 0);
  for (uint64_t s : starts) {
    ASSERT_LE(s, 2u);
    ++hits[s];
  }
  for (int h : hits) EXPECT_GT(h, 800);
}

TEST(RandomWindows, SingleWindowStreamAlwaysStartsAtZero) {
  EXPECT_EQ(random_windows(5, 4, 3, 9), (std::vector<uint64_t>{0, 0, 0}));
}

TEST(RandomWindows, KnownValuesForSeedZeroArePinned) {
  // splitmix64(seed 0) first output is 0xE220A8397B1DCDAF; the stream must not
  // change across platforms or releases (resumed runs depend on it).
  const uint64_t first = 0xE220A8397B1DCDAFull;
  const uint64_t big = (uint64_t(1) << 62) + 1;
  EXPECT_EQ(random_windows(big + 1, 1, 1, 0)[0], first % big);
}

TEST(RandomWindows, ErrorWhenStreamShorterThanOneWindow) {
  expect_input_error([] { random_windows(4, 4, 1, 0); }, {"4 tokens", "shorter than one window of 5"});
}

}  // namespace
}  // namespace minipuzzle
