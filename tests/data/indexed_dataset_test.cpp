#include "minipuzzle/indexed_dataset.h"

#include <sys/resource.h>

#include <csignal>
#include <limits>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/errors.h"
#include "test_util.h"

namespace minipuzzle {
namespace {

using testing::append;
using testing::expect_input_error;
using testing::fresh_dir;
using testing::write_bytes;

std::string build(const std::filesystem::path& dir, TokenDType dtype, const std::vector<std::vector<int64_t>>& docs) {
  const std::string prefix = (dir / "ds").string();
  IndexedDatasetBuilder b(prefix, dtype);
  for (const auto& d : docs) b.add_document(d);
  b.finish();
  return prefix;
}

// A valid two-sequence uint16 index whose fields each test may spoil.
struct IdxSpec {
  std::string magic = std::string("MMIDIDX\0\0", 9);
  uint64_t version = 1;
  uint8_t code = 8;
  std::vector<int32_t> lengths{3, 2};
  std::vector<int64_t> pointers{0, 6};
  std::vector<int64_t> docs{0, 1, 2};
  int64_t seq_count = -1, doc_count = -1;  // header overrides; -1 = the array sizes
  std::string tail;
  std::size_t bin_bytes = 10;

  std::string idx_bytes() const {
    std::string s = magic;
    append<uint64_t>(s, version);
    append<uint8_t>(s, code);
    append<uint64_t>(s, seq_count < 0 ? lengths.size() : uint64_t(seq_count));
    append<uint64_t>(s, doc_count < 0 ? docs.size() : uint64_t(doc_count));
    for (auto v : lengths) append(s, v);
    for (auto v : pointers) append(s, v);
    for (auto v : docs) append(s, v);
    return s + tail;
  }
  std::string write(const std::filesystem::path& dir) const {
    const std::string prefix = (dir / "bad").string();
    write_bytes(prefix + ".idx", idx_bytes());
    write_bytes(prefix + ".bin", std::string(bin_bytes, '\x07'));
    return prefix;
  }
};

class RoundTrip : public ::testing::TestWithParam<TokenDType> {};

TEST_P(RoundTrip, TokensAtTheDtypeLimitsComeBackUnchanged) {
  const TokenDType t = GetParam();
  int64_t lo = 0, hi = 0;
  switch (t) {
    case TokenDType::U8: hi = 255; break;
    case TokenDType::I8: lo = -128, hi = 127; break;
    case TokenDType::I16: lo = -32768, hi = 32767; break;
    case TokenDType::U16: hi = 65535; break;
    case TokenDType::I32: lo = std::numeric_limits<int32_t>::min(), hi = std::numeric_limits<int32_t>::max(); break;
    default: lo = std::numeric_limits<int64_t>::min(), hi = std::numeric_limits<int64_t>::max(); break;
  }
  const std::vector<std::vector<int64_t>> docs{{lo, hi, 1, 0}, {}, {hi - 1, 7}};
  auto dir = fresh_dir("rt");
  auto ds = IndexedDataset::open(build(dir, t, docs));
  EXPECT_EQ(ds->dtype(), t);
  ASSERT_EQ(ds->num_sequences(), 3u);
  EXPECT_EQ(ds->total_tokens(), 6u);
  for (std::size_t i = 0; i < docs.size(); ++i) EXPECT_EQ(ds->read(i), docs[i]) << "sequence " << i;
  EXPECT_EQ(std::filesystem::file_size(dir / "ds.bin"), 6 * token_dtype_size(t));
}

INSTANTIATE_TEST_SUITE_P(IntegerDtypes, RoundTrip,
                         ::testing::Values(TokenDType::U8, TokenDType::I8, TokenDType::I16, TokenDType::U16,
                                           TokenDType::I32, TokenDType::I64),
                         [](const auto& info) { return std::string(token_dtype_name(info.param)); });

TEST(IndexedDataset, DocumentIndexHasOneEntryPerDocumentPlusTheEnd) {
  auto ds = IndexedDataset::open(build(fresh_dir("doc"), TokenDType::U16, {{1, 2}, {3}, {4, 5, 6}}));
  EXPECT_EQ(ds->num_documents(), 3u);
  EXPECT_EQ(ds->document_index(), (std::vector<int64_t>{0, 1, 2, 3}));
}

TEST(IndexedDataset, IdxBytesMatchMegatronLayout) {
  auto dir = fresh_dir("layout");
  build(dir, TokenDType::I32, {{5, 6, 7}, {8, 9}});
  IdxSpec want;
  want.code = 4;
  want.pointers = {0, 12};
  EXPECT_EQ(read_file(dir / "ds.idx"), want.idx_bytes());
}

TEST(IndexedDataset, ReadWithOffsetReturnsTheSlice) {
  auto ds = IndexedDataset::open(build(fresh_dir("slice"), TokenDType::U16, {{10, 11, 12, 13, 14}}));
  std::vector<int64_t> out(2);
  ds->read(0, 2, 2, out.data());
  EXPECT_EQ(out, (std::vector<int64_t>{12, 13}));
}

TEST(IndexedDataset, ReadFlatCrossesSequenceBoundariesAndSkipsEmptyOnes) {
  auto ds = IndexedDataset::open(build(fresh_dir("flat"), TokenDType::I32, {{0, 1, 2}, {}, {3}, {4, 5}}));
  std::vector<int64_t> out(4);
  ds->read_flat(1, 4, out.data());
  EXPECT_EQ(out, (std::vector<int64_t>{1, 2, 3, 4}));
  std::vector<int64_t> all(6);
  ds->read_flat(0, 6, all.data());
  EXPECT_EQ(all, (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
  ds->read_flat(3, 1, out.data());
  EXPECT_EQ(out[0], 3);
}

TEST(IndexedDataset, ReadsPastTheEndThrowOutOfRange) {
  auto ds = IndexedDataset::open(build(fresh_dir("oor"), TokenDType::U16, {{1, 2, 3}}));
  int64_t buf[8];
  EXPECT_THROW(ds->read(0, 2, 2, buf), std::out_of_range);
  EXPECT_THROW(ds->read(1, 0, 1, buf), std::out_of_range);
  EXPECT_THROW(ds->read_flat(2, 2, buf), std::out_of_range);
}

TEST(IndexedDataset, EmptyDatasetOpensWithNoTokens) {
  auto ds = IndexedDataset::open(build(fresh_dir("empty"), TokenDType::U16, {}));
  EXPECT_EQ(ds->num_sequences(), 0u);
  EXPECT_EQ(ds->num_documents(), 0u);
  EXPECT_EQ(ds->total_tokens(), 0u);
}

TEST(IndexedDatasetBuilder, RejectsTokenAboveTheDtype) {
  auto dir = fresh_dir("fit");
  IndexedDatasetBuilder b((dir / "ds").string(), TokenDType::U16);
  expect_input_error([&] { b.add_document({1, 65536}); }, {"ds.bin", "65536", "does not fit", "uint16"});
}

TEST(IndexedDatasetBuilder, RejectsNegativeTokenForUnsignedDtype) {
  auto dir = fresh_dir("neg");
  IndexedDatasetBuilder b((dir / "ds").string(), TokenDType::U8);
  expect_input_error([&] { b.add_document({-1}); }, {"-1", "does not fit", "uint8"});
}

TEST(IndexedDatasetBuilder, RejectsInt32OverflowForInt32) {
  auto dir = fresh_dir("i32");
  IndexedDatasetBuilder b((dir / "ds").string(), TokenDType::I32);
  expect_input_error([&] { b.add_document({int64_t(1) << 31}); }, {"does not fit", "int32"});
}

TEST(IndexedDatasetBuilder, LeavesNoFilesWhenNotFinished) {
  auto dir = fresh_dir("unfinished");
  {
    IndexedDatasetBuilder b((dir / "ds").string(), TokenDType::U16);
    b.add_document({1, 2});
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir));
}

TEST(IndexedDatasetBuilder, OverwriteThatFailsNeverPairsTheNewBinWithTheOldIdx) {
  auto dir = fresh_dir("overwrite");
  const std::string prefix = build(dir, TokenDType::U16, {{1, 2, 3}});
  {
    // 3000 one-token documents: a 6 KB .bin that fits, a 60 KB .idx that does
    // not (RLIMIT_FSIZE with SIGXFSZ ignored: write() fails as on a full disk).
    IndexedDatasetBuilder b(prefix, TokenDType::U16);
    for (int i = 0; i < 3000; ++i) b.add_document({7});
    struct rlimit old {};
    ::getrlimit(RLIMIT_FSIZE, &old);
    auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = old;
    lim.rlim_cur = 16 << 10;
    ::setrlimit(RLIMIT_FSIZE, &lim);
    EXPECT_THROW(b.finish(), std::runtime_error);
    ::setrlimit(RLIMIT_FSIZE, &old);
    std::signal(SIGXFSZ, old_handler);
  }
  EXPECT_EQ(std::filesystem::file_size(prefix + ".bin"), 6000u);
  EXPECT_FALSE(std::filesystem::exists(prefix + ".idx")) << "the old .idx now describes another .bin";
  expect_input_error([&] { IndexedDataset::open(prefix); }, {".idx"});
}

TEST(IndexedDatasetBuilder, RejectsMissingOutputDirectory) {
  auto dir = fresh_dir("nodir");
  expect_input_error([&] { IndexedDatasetBuilder b((dir / "no" / "ds").string(), TokenDType::U16); },
                     {"does not exist"});
}

// ------------------------------------------------------- validation

TEST(IndexedDatasetValidation, ValidCraftedIndexOpens) {
  auto ds = IndexedDataset::open(IdxSpec{}.write(fresh_dir("ok")));
  EXPECT_EQ(ds->total_tokens(), 5u);
}

TEST(IndexedDatasetValidation, MissingIdxNamesTheFile) {
  auto dir = fresh_dir("noidx");
  expect_input_error([&] { IndexedDataset::open((dir / "x").string()); }, {"x.idx", "not found"});
}

TEST(IndexedDatasetValidation, MissingBinNamesTheFile) {
  auto dir = fresh_dir("nobin");
  std::filesystem::remove(IdxSpec{}.write(dir) + ".bin");
  expect_input_error([&] { IndexedDataset::open((dir / "bad").string()); }, {"bad.bin", "not found"});
}

TEST(IndexedDatasetValidation, RejectsBadMagic) {
  IdxSpec s;
  s.magic = std::string("MMIDIDY\0\0", 9);
  expect_input_error([&] { IndexedDataset::open(s.write(fresh_dir("magic"))); }, {"bad.idx", "bad magic"});
}

TEST(IndexedDatasetValidation, RejectsFileShorterThanTheHeader) {
  auto dir = fresh_dir("short");
  write_bytes(dir / "bad.idx", std::string("MMIDIDX\0\0\1", 10));
  write_bytes(dir / "bad.bin", "");
  expect_input_error([&] { IndexedDataset::open((dir / "bad").string()); }, {"bad.idx", "truncated header"});
}

TEST(IndexedDatasetValidation, RejectsVersionOtherThanOne) {
  IdxSpec s;
  s.version = 2;
  expect_input_error([&] { IndexedDataset::open(s.write(fresh_dir("ver"))); }, {"bad.idx", "version 2"});
}

TEST(IndexedDatasetValidation, RejectsDtypeCodeOutsideOneToEight) {
  for (uint8_t code : {uint8_t(0), uint8_t(9)}) {
    IdxSpec s;
    s.code = code;
    expect_input_error([&] { IndexedDataset::open(s.write(fresh_dir("dtype" + std::to_string(code)))); },
                       {"bad.idx", "dtype code " + std::to_string(code)});
  }
}

TEST(IndexedDatasetValidation, RejectsTruncatedArrays) {
  IdxSpec s;
  s.docs = {0, 1};  // header still claims three entries
  s.doc_count = 3;
  expect_input_error([&] { IndexedDataset::open(s.write(fresh_dir("trunc"))); }, {"bad.idx", "truncated"});
}

TEST(IndexedDatasetValidation, RejectsCountsBiggerThanTheFileWithoutAllocating) {
  IdxSpec s;
  s.seq_count = int64_t(1) << 60;
  expect_input_error([&] { IndexedDataset::open(s.write(fresh_dir("huge"))); },
                     {"bad.idx", "truncated or corrupt", std::to_string(uint64_t(1) << 60)});
}

TEST(IndexedDatasetValidation, RejectsUnexpectedTrailingBytes) {
  IdxSpec s;
  s.tail = "abc";
  expect_input_error([&] { IndexedDataset::open(s.write(fresh_dir("tail"))); }, {"bad.idx", "trailing"});
}

TEST(IndexedDatasetValidation, AcceptsMegatronMultimodalModes) {
  IdxSpec s;
  s.tail = std::string(2, '\0');  // one int8 mode per sequence
  EXPECT_EQ(IndexedDataset::open(s.write(fresh_dir("modes")))->read(1), (std::vector<int64_t>{0x0707, 0x0707}));
}

TEST(IndexedDatasetValidation, RejectsNegativeLength) {
  IdxSpec s;
  s.lengths = {-3, 2};
  expect_input_error([&] { IndexedDataset::open(s.write(fresh_dir("neglen"))); },
                     {"bad.idx", "sequence 0", "negative length"});
}

TEST(IndexedDatasetValidation, RejectsPointerThatDoesNotFollowTheLengths) {
  IdxSpec s;
  s.pointers = {0, 8};
  expect_input_error([&] { IndexedDataset::open(s.write(fresh_dir("ptr"))); },
                     {"bad.idx", "sequence 1 pointer 8", "expected 6"});
}

TEST(IndexedDatasetValidation, RejectsBinShorterThanTheIndexSays) {
  IdxSpec s;
  s.bin_bytes = 9;
  expect_input_error([&] { IndexedDataset::open(s.write(fresh_dir("shortbin"))); },
                     {"bad.bin", "shorter than", "9 bytes", "needs 10"});
}

TEST(IndexedDatasetValidation, AcceptsBinLongerThanNeeded) {
  IdxSpec s;
  s.bin_bytes = 64;
  EXPECT_EQ(IndexedDataset::open(s.write(fresh_dir("longbin")))->total_tokens(), 5u);
}

TEST(IndexedDatasetValidation, RejectsEmptyDocumentIndex) {
  IdxSpec s;
  s.lengths = {};
  s.pointers = {};
  s.docs = {};  // Megatron always writes at least the leading 0
  s.bin_bytes = 0;
  expect_input_error([&] { IndexedDataset::open(s.write(fresh_dir("nodocs"))); },
                     {"bad.idx", "document index is empty"});
}

TEST(IndexedDatasetValidation, RejectsDocumentIndexNotStartingAtZero) {
  IdxSpec s;
  s.docs = {1, 2, 2};
  expect_input_error([&] { IndexedDataset::open(s.write(fresh_dir("docstart"))); },
                     {"bad.idx", "starts at 1"});
}

TEST(IndexedDatasetValidation, RejectsDecreasingDocumentIndex) {
  IdxSpec s;
  s.docs = {0, 2, 1, 2};
  expect_input_error([&] { IndexedDataset::open(s.write(fresh_dir("docdec"))); },
                     {"bad.idx", "decreases at entry 2"});
}

TEST(IndexedDatasetValidation, RejectsDocumentIndexNotEndingAtSequenceCount) {
  IdxSpec s;
  s.docs = {0, 1};
  expect_input_error([&] { IndexedDataset::open(s.write(fresh_dir("docend"))); },
                     {"bad.idx", "ends at 1", "sequence count 2"});
}

TEST(IndexedDatasetValidation, FloatDtypeOpensButRefusesTokenReads) {
  IdxSpec s;
  s.code = 7;  // float32 in Megatron's numbering
  s.pointers = {0, 12};
  s.bin_bytes = 20;
  auto ds = IndexedDataset::open(s.write(fresh_dir("float")));
  EXPECT_EQ(ds->dtype(), TokenDType::F32);
  expect_input_error([&] { ds->read(0); }, {"bad.idx", "float32", "not token ids"});
}

}  // namespace
}  // namespace minipuzzle
