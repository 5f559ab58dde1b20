#include "minipuzzle/corpus_builder.h"

#include <sys/stat.h>
#include <unistd.h>

#include "minipuzzle/byte_tokenizer.h"
#include "minipuzzle/errors.h"
#include "test_util.h"

namespace minipuzzle {
namespace {

namespace fs = std::filesystem;
using testing::expect_input_error;
using testing::fresh_dir;
using testing::write_bytes;

// tree/ b.txt, a.py, sub/c.py, sub/z.bin (binary), .git/x.txt (hidden)
fs::path make_tree(const fs::path& dir) {
  const fs::path tree = dir / "tree";
  fs::create_directories(tree / "sub");
  fs::create_directories(tree / ".git");
  write_bytes(tree / "b.txt", "bee");
  write_bytes(tree / "a.py", "print(1)\n");
  write_bytes(tree / "sub" / "c.py", "x = 2\n");
  write_bytes(tree / "sub" / "z.bin", std::string("ab\0cd", 5));
  write_bytes(tree / ".git" / "x.txt", "hidden");
  return tree;
}

std::vector<std::string> names(const std::vector<fs::path>& files, const fs::path& root) {
  std::vector<std::string> out;
  for (const auto& f : files) out.push_back(fs::relative(f, root).generic_string());
  return out;
}

std::vector<std::string> documents(const std::string& prefix) {
  auto ds = IndexedDataset::open(prefix);
  std::vector<std::string> out;
  for (std::size_t i = 0; i < ds->num_sequences(); ++i) out.push_back(ByteTokenizer::decode(ds->read(i)));
  return out;
}

TEST(ByteTokenizer, EncodeWrapsBytesInBosEosAndDecodeRoundTrips) {
  const std::string text("a\xff\x00", 3);
  const auto tokens = ByteTokenizer::encode_document(text);
  EXPECT_EQ(tokens, (std::vector<int64_t>{1, 'a' + 3, 258, 3, 2}));
  EXPECT_EQ(ByteTokenizer::decode(tokens), text);
}

TEST(ByteTokenizer, DecodeDropsSpecialAndOutOfVocabIds) {
  EXPECT_EQ(ByteTokenizer::decode({0, 1, 'h' + 3, 2, 259, 'i' + 3, -5}), "hi");
}

TEST(CorpusFiles, DirectoryWalkIsSortedAndSkipsHiddenEntries) {
  auto dir = fresh_dir("walk");
  auto tree = make_tree(dir);
  EXPECT_EQ(names(list_corpus_files({tree.string()}, {}), tree),
            (std::vector<std::string>{"a.py", "b.txt", "sub/c.py", "sub/z.bin"}));
}

TEST(CorpusFiles, ExtensionFilterAppliesInsideDirectoriesWithOrWithoutDot) {
  auto dir = fresh_dir("ext");
  auto tree = make_tree(dir);
  EXPECT_EQ(names(list_corpus_files({tree.string()}, {"py"}), tree), (std::vector<std::string>{"a.py", "sub/c.py"}));
  EXPECT_EQ(names(list_corpus_files({tree.string()}, {".txt"}), tree), (std::vector<std::string>{"b.txt"}));
}

TEST(CorpusFiles, ExplicitFilesKeepTheirOrderAndBypassTheFilter) {
  auto dir = fresh_dir("explicit");
  auto tree = make_tree(dir);
  EXPECT_EQ(names(list_corpus_files({(tree / "b.txt").string(), (tree / "a.py").string()}, {".py"}), tree),
            (std::vector<std::string>{"b.txt", "a.py"}));
}

TEST(CorpusFiles, InputNamedTwiceIsReadOnce) {
  auto dir = fresh_dir("dup");
  auto tree = make_tree(dir);
  EXPECT_EQ(names(list_corpus_files({(tree / "a.py").string(), tree.string()}, {".py"}), tree),
            (std::vector<std::string>{"a.py", "sub/c.py"}));
}

TEST(CorpusFiles, SplitExtensionsTrimsAndAddsTheDot) {
  EXPECT_EQ(split_extensions(" .py, txt,,md "), (std::vector<std::string>{".py", ".txt", ".md"}));
  EXPECT_TRUE(split_extensions("").empty());
}

TEST(CorpusBuilder, OneDocumentPerTextFileInSortedOrderSkippingBinary) {
  auto dir = fresh_dir("build");
  auto tree = make_tree(dir);
  CorpusOptions o;
  o.inputs = {tree.string()};
  o.out_prefix = (dir / "out").string();
  const CorpusSummary s = build_corpus(o);
  EXPECT_EQ(s.documents, 3u);
  EXPECT_EQ(s.skipped_binary, 1u);
  EXPECT_EQ(s.bytes, 9u + 3u + 6u);
  EXPECT_EQ(s.tokens, s.bytes + 2 * s.documents);
  EXPECT_EQ(documents(o.out_prefix), (std::vector<std::string>{"print(1)\n", "bee", "x = 2\n"}));
  auto ds = IndexedDataset::open(o.out_prefix);
  EXPECT_EQ(ds->dtype(), TokenDType::U16);
  EXPECT_EQ(ds->read(1), ByteTokenizer::encode_document("bee"));
}

TEST(CorpusBuilder, NulAfterTheFirst8KiBIsText) {
  auto dir = fresh_dir("probe");
  std::string late(8192, 'a');
  late.push_back('\0');
  write_bytes(dir / "late.txt", late);
  CorpusOptions o;
  o.inputs = {(dir / "late.txt").string()};
  o.out_prefix = (dir / "out").string();
  EXPECT_EQ(build_corpus(o).documents, 1u);
}

TEST(CorpusBuilder, EmptyAndUnreadableFilesAreSkippedAndCounted) {
  auto dir = fresh_dir("skip");
  const fs::path in = dir / "in";
  fs::create_directories(in);
  write_bytes(in / "empty.txt", "");
  write_bytes(in / "secret.txt", "no");
  write_bytes(in / "ok.txt", "yes");
  ::chmod((in / "secret.txt").c_str(), 0);
  const bool can_hide = ::access((in / "secret.txt").c_str(), R_OK) != 0;  // root reads anything
  CorpusOptions o;
  o.inputs = {in.string()};
  o.out_prefix = (dir / "out").string();
  const CorpusSummary s = build_corpus(o);
  ::chmod((in / "secret.txt").c_str(), 0644);
  EXPECT_EQ(s.skipped_empty, 1u);
  if (can_hide) {
    EXPECT_EQ(s.skipped_unreadable, 1u);
    EXPECT_EQ(documents(o.out_prefix), (std::vector<std::string>{"yes"}));
  }
}

TEST(CorpusBuilder, MaxBytesCutsTheLastDocumentAndStops) {
  auto dir = fresh_dir("max");
  auto tree = make_tree(dir);
  CorpusOptions o;
  o.inputs = {tree.string()};
  o.out_prefix = (dir / "out").string();
  o.max_bytes = 11;  // "print(1)\n" (9) + "be"
  const CorpusSummary s = build_corpus(o);
  EXPECT_TRUE(s.truncated);
  EXPECT_EQ(s.bytes, 11u);
  EXPECT_EQ(documents(o.out_prefix), (std::vector<std::string>{"print(1)\n", "be"}));
}

TEST(CorpusBuilder, Int32DtypeIsHonoured) {
  auto dir = fresh_dir("i32");
  auto tree = make_tree(dir);
  CorpusOptions o;
  o.inputs = {tree.string()};
  o.out_prefix = (dir / "out").string();
  o.dtype = TokenDType::I32;
  build_corpus(o);
  EXPECT_EQ(IndexedDataset::open(o.out_prefix)->dtype(), TokenDType::I32);
}

TEST(CorpusBuilder, RejectsNoInput) {
  CorpusOptions o;
  o.out_prefix = "/tmp/x";
  expect_input_error([&] { build_corpus(o); }, {"no input"});
}

TEST(CorpusBuilder, RejectsMissingInput) {
  auto dir = fresh_dir("missing");
  CorpusOptions o;
  o.inputs = {(dir / "nope").string()};
  o.out_prefix = (dir / "out").string();
  expect_input_error([&] { build_corpus(o); }, {"nope", "not found"});
}

TEST(CorpusBuilder, RejectsInputsWithoutDocumentsAndWritesNothing) {
  auto dir = fresh_dir("nodocs");
  fs::create_directories(dir / "in");
  write_bytes(dir / "in" / "blob.dat", std::string("\0\0", 2));
  CorpusOptions o;
  o.inputs = {(dir / "in").string()};
  o.out_prefix = (dir / "out").string();
  expect_input_error([&] { build_corpus(o); }, {"no documents found", "in", "1 skipped"});
  EXPECT_FALSE(fs::exists(dir / "out.bin"));
  EXPECT_FALSE(fs::exists(dir / "out.idx"));
}

TEST(CorpusBuilder, RejectsMissingOutputDirectory) {
  auto dir = fresh_dir("noout");
  auto tree = make_tree(dir);
  CorpusOptions o;
  o.inputs = {tree.string()};
  o.out_prefix = (dir / "absent" / "out").string();
  expect_input_error([&] { build_corpus(o); }, {"output directory", "absent", "does not exist"});
}

}  // namespace
}  // namespace minipuzzle
