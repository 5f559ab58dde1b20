#include "minipuzzle/indexed_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/errors.h"

namespace minipuzzle {
namespace fs = std::filesystem;

namespace {

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr std::size_t kHeaderSize = 9 + 8 + 1 + 8 + 8;

bool valid_dtype_code(uint8_t code) { return code >= 1 && code <= 8; }

bool is_float(TokenDType t) { return t == TokenDType::F32 || t == TokenDType::F64; }

// Little-endian field decoding by copying: the .idx arrays start at odd
// offsets (34 + ...), so casting the buffer would be misaligned access.
template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <typename T>
void widen(const uint8_t* src, int64_t count, int64_t* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = static_cast<int64_t>(load<T>(src + i * sizeof(T)));
}

template <typename T>
void narrow_append(const std::vector<int64_t>& tokens, std::vector<uint8_t>& buf) {
  std::size_t at = buf.size();
  buf.resize(at + tokens.size() * sizeof(T));
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    T v = static_cast<T>(tokens[i]);
    std::memcpy(buf.data() + at + i * sizeof(T), &v, sizeof(T));
  }
}

template <typename T>
void put(std::string& s, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  s.append(b, sizeof(T));
}

std::pair<int64_t, int64_t> dtype_range(TokenDType t) {
  switch (t) {
    case TokenDType::U8: return {0, 255};
    case TokenDType::I8: return {-128, 127};
    case TokenDType::I16: return {-32768, 32767};
    case TokenDType::U16: return {0, 65535};
    case TokenDType::I32: return {std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()};
    default: return {std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()};
  }
}

}  // namespace

std::size_t token_dtype_size(TokenDType t) {
  switch (t) {
    case TokenDType::U8:
    case TokenDType::I8: return 1;
    case TokenDType::I16:
    case TokenDType::U16: return 2;
    case TokenDType::I32:
    case TokenDType::F32: return 4;
    case TokenDType::I64:
    case TokenDType::F64: return 8;
  }
  throw std::invalid_argument("token_dtype_size: unknown dtype code " + std::to_string(int(t)));
}

const char* token_dtype_name(TokenDType t) {
  switch (t) {
    case TokenDType::U8: return "uint8";
    case TokenDType::I8: return "int8";
    case TokenDType::I16: return "int16";
    case TokenDType::I32: return "int32";
    case TokenDType::I64: return "int64";
    case TokenDType::F64: return "float64";
    case TokenDType::F32: return "float32";
    case TokenDType::U16: return "uint16";
  }
  return "unknown";
}

TokenDType token_dtype_from_name(const std::string& name) {
  for (TokenDType t : {TokenDType::U8, TokenDType::I8, TokenDType::I16, TokenDType::I32, TokenDType::I64,
                       TokenDType::U16})
    if (name == token_dtype_name(t)) return t;
  throw InputError("unknown token dtype '" + name + "' (expected uint8, int8, int16, uint16, int32 or int64)");
}

// ---------------------------------------------------------------- reader

std::shared_ptr<IndexedDataset> IndexedDataset::open(const std::string& prefix) {
  const std::string idx_path = prefix + ".idx", bin_path = prefix + ".bin";
  std::shared_ptr<IndexedDataset> ds(new IndexedDataset());
  ds->prefix_ = prefix;

  std::error_code ec;
  if (!fs::exists(idx_path, ec)) throw InputError(idx_path + ": file not found (dataset prefix " + prefix + ")");
  if (!fs::exists(bin_path, ec)) throw InputError(bin_path + ": file not found (dataset prefix " + prefix + ")");
  const std::string idx = read_file(idx_path);
  const auto* p = reinterpret_cast<const uint8_t*>(idx.data());
  auto bad = [&](const std::string& what) { return InputError(idx_path + ": " + what); };

  if (idx.size() < kHeaderSize || std::memcmp(p, kMagic, 9) != 0) {
    if (idx.size() >= 9 && std::memcmp(p, kMagic, 9) == 0)
      throw bad("truncated header (" + std::to_string(idx.size()) + " bytes, need " +
                std::to_string(kHeaderSize) + ")");
    throw bad("bad magic, not a Megatron MMIDIDX index");
  }
  const uint64_t version = load<uint64_t>(p + 9);
  if (version != 1) throw bad("unsupported version " + std::to_string(version) + " (expected 1)");
  const uint8_t code = p[17];
  if (!valid_dtype_code(code)) throw bad("unknown dtype code " + std::to_string(code) + " (expected 1..8)");
  ds->dtype_ = static_cast<TokenDType>(code);
  const uint64_t S = load<uint64_t>(p + 18), D = load<uint64_t>(p + 26);

  // Bound the counts by the file size before any allocation, so a corrupt
  // header cannot ask for terabytes.
  const uint64_t body = idx.size() - kHeaderSize;
  if (S > body / 12 || D > body / 8 || S * 12 + D * 8 > body)
    throw bad("truncated or corrupt: header says " + std::to_string(S) + " sequences and " + std::to_string(D) +
              " document-index entries, needing " + std::to_string(kHeaderSize) + " + " + std::to_string(S) +
              "*12 + " + std::to_string(D) + "*8 bytes, file has " + std::to_string(idx.size()));
  const uint64_t trailing = body - S * 12 - D * 8;
  // Multimodal Megatron files carry one int8 mode per sequence after the
  // document index; anything else means the counts disagree with the arrays.
  if (trailing != 0 && trailing != S)
    throw bad(std::to_string(trailing) + " unexpected trailing bytes after the arrays (header counts disagree "
              "with the file size)");

  const uint8_t* lengths_at = p + kHeaderSize;
  const uint8_t* pointers_at = lengths_at + S * 4;
  const uint8_t* docs_at = pointers_at + S * 8;
  ds->lengths_.resize(S);
  ds->pointers_.resize(S);
  ds->doc_idx_.resize(D);
  if (S) std::memcpy(ds->lengths_.data(), lengths_at, S * 4);
  if (S) std::memcpy(ds->pointers_.data(), pointers_at, S * 8);
  if (D) std::memcpy(ds->doc_idx_.data(), docs_at, D * 8);

  const int64_t item = static_cast<int64_t>(token_dtype_size(ds->dtype_));
  ds->flat_starts_.resize(S);
  int64_t expect_ptr = 0;
  uint64_t flat = 0;
  for (uint64_t i = 0; i < S; ++i) {
    const int32_t len = ds->lengths_[i];
    if (len < 0) throw bad("sequence " + std::to_string(i) + " has negative length " + std::to_string(len));
    if (ds->pointers_[i] != expect_ptr)
      throw bad("sequence " + std::to_string(i) + " pointer " + std::to_string(ds->pointers_[i]) + ", expected " +
                std::to_string(expect_ptr) + " (pointers must follow lengths * " + std::to_string(item) +
                " bytes)");
    ds->flat_starts_[i] = flat;
    flat += static_cast<uint64_t>(len);
    expect_ptr += static_cast<int64_t>(len) * item;
    // Each step adds < 2^34, so checking here keeps the sum from overflowing.
    if (expect_ptr > (int64_t(1) << 62)) throw bad("sequence lengths add up to more than 2^62 bytes");
  }
  ds->total_tokens_ = flat;

  if (D == 0) throw bad("document index is empty (needs at least the leading 0)");
  if (ds->doc_idx_.front() != 0)
    throw bad("document index starts at " + std::to_string(ds->doc_idx_.front()) + ", expected 0");
  for (uint64_t i = 1; i < D; ++i)
    if (ds->doc_idx_[i] < ds->doc_idx_[i - 1])
      throw bad("document index decreases at entry " + std::to_string(i) + " (" +
                std::to_string(ds->doc_idx_[i - 1]) + " -> " + std::to_string(ds->doc_idx_[i]) + ")");
  if (ds->doc_idx_.back() != static_cast<int64_t>(S))
    throw bad("document index ends at " + std::to_string(ds->doc_idx_.back()) + ", expected the sequence count " +
              std::to_string(S));

  int fd = ::open(bin_path.c_str(), O_RDONLY);
  if (fd < 0) throw InputError(bin_path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw InputError(bin_path + ": cannot stat: " + std::strerror(errno));
  }
  ds->bin_size_ = static_cast<std::size_t>(st.st_size);
  // A .bin longer than the index needs is accepted, as Megatron does; shorter
  // means the pair does not belong together or the copy was cut.
  if (static_cast<uint64_t>(expect_ptr) > ds->bin_size_) {
    ::close(fd);
    throw InputError(bin_path + ": shorter than " + idx_path + " says: " + std::to_string(ds->bin_size_) +
                     " bytes, needs " + std::to_string(expect_ptr));
  }
  if (ds->bin_size_ > 0) {
    void* m = ::mmap(nullptr, ds->bin_size_, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      throw InputError(bin_path + ": cannot mmap: " + std::strerror(err));
    }
    ds->bin_mapping_ = m;
    ds->bin_ = static_cast<const uint8_t*>(m);
  }
  ::close(fd);  // the mapping stays valid without the descriptor
  return ds;
}

IndexedDataset::~IndexedDataset() {
  if (bin_mapping_) ::munmap(bin_mapping_, bin_size_);
}

void IndexedDataset::read(std::size_t seq, int64_t offset, int64_t count, int64_t* out) const {
  if (seq >= lengths_.size())
    throw std::out_of_range("IndexedDataset::read: sequence " + std::to_string(seq) + " of " +
                            std::to_string(lengths_.size()));
  if (offset < 0 || count < 0 || offset + count > lengths_[seq])
    throw std::out_of_range("IndexedDataset::read: tokens [" + std::to_string(offset) + ", " +
                            std::to_string(offset + count) + ") of sequence " + std::to_string(seq) +
                            " with length " + std::to_string(lengths_[seq]));
  if (is_float(dtype_))
    throw InputError(prefix_ + ".idx: dtype " + token_dtype_name(dtype_) +
                     " holds floats, not token ids; rebuild the dataset with an integer dtype");
  if (count == 0) return;
  const std::size_t item = token_dtype_size(dtype_);
  const uint8_t* src = bin_ + pointers_[seq] + offset * static_cast<int64_t>(item);
  switch (dtype_) {
    case TokenDType::U8: widen<uint8_t>(src, count, out); break;
    case TokenDType::I8: widen<int8_t>(src, count, out); break;
    case TokenDType::I16: widen<int16_t>(src, count, out); break;
    case TokenDType::U16: widen<uint16_t>(src, count, out); break;
    case TokenDType::I32: widen<int32_t>(src, count, out); break;
    case TokenDType::I64: widen<int64_t>(src, count, out); break;
    default: break;  // floats rejected above
  }
}

std::vector<int64_t> IndexedDataset::read(std::size_t seq) const {
  std::vector<int64_t> out(static_cast<std::size_t>(length(seq)));
  read(seq, 0, length(seq), out.data());
  return out;
}

void IndexedDataset::read_flat(uint64_t start, int64_t count, int64_t* out) const {
  if (count < 0 || start + static_cast<uint64_t>(count) > total_tokens_)
    throw std::out_of_range("IndexedDataset::read_flat: tokens [" + std::to_string(start) + ", +" +
                            std::to_string(count) + ") of " + std::to_string(total_tokens_));
  if (count == 0) return;
  // Last sequence whose flat start is <= start; empty sequences share a start
  // with their successor and are skipped by the loop below.
  std::size_t seq = static_cast<std::size_t>(
      std::upper_bound(flat_starts_.begin(), flat_starts_.end(), start) - flat_starts_.begin() - 1);
  int64_t offset = static_cast<int64_t>(start - flat_starts_[seq]);
  while (count > 0) {
    const int64_t take = std::min<int64_t>(count, lengths_[seq] - offset);
    read(seq, offset, take, out);
    out += take;
    count -= take;
    ++seq;
    offset = 0;
  }
}

// ---------------------------------------------------------------- builder

struct IndexedDatasetBuilder::Impl {
  std::string prefix;
  TokenDType dtype;
  AtomicFile bin;
  std::vector<int32_t> lengths;
  std::vector<uint8_t> buf;
  bool finished = false;
  Impl(std::string p, TokenDType t) : prefix(std::move(p)), dtype(t), bin(prefix + ".bin") {}
};

IndexedDatasetBuilder::IndexedDatasetBuilder(std::string prefix, TokenDType dtype) {
  if (!valid_dtype_code(static_cast<uint8_t>(dtype)))
    throw std::invalid_argument("IndexedDatasetBuilder: unknown dtype code " + std::to_string(int(dtype)));
  if (is_float(dtype))
    throw InputError(prefix + ": cannot build a token dataset with float dtype " + token_dtype_name(dtype));
  impl_ = std::make_unique<Impl>(std::move(prefix), dtype);
}

IndexedDatasetBuilder::~IndexedDatasetBuilder() = default;

void IndexedDatasetBuilder::add_document(const std::vector<int64_t>& tokens) {
  Impl& m = *impl_;
  if (m.finished) throw std::logic_error("IndexedDatasetBuilder: add_document after finish");
  if (tokens.size() > static_cast<std::size_t>(std::numeric_limits<int32_t>::max()))
    throw InputError(m.prefix + ".bin: document " + std::to_string(m.lengths.size()) + " has " +
                     std::to_string(tokens.size()) + " tokens, more than the format's int32 length allows");
  const auto [lo, hi] = dtype_range(m.dtype);
  for (std::size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < lo || tokens[i] > hi)
      throw InputError(m.prefix + ".bin: token " + std::to_string(tokens[i]) + " (document " +
                       std::to_string(m.lengths.size()) + ", position " + std::to_string(i) +
                       ") does not fit dtype " + token_dtype_name(m.dtype));
  m.buf.clear();
  switch (m.dtype) {
    case TokenDType::U8: narrow_append<uint8_t>(tokens, m.buf); break;
    case TokenDType::I8: narrow_append<int8_t>(tokens, m.buf); break;
    case TokenDType::I16: narrow_append<int16_t>(tokens, m.buf); break;
    case TokenDType::U16: narrow_append<uint16_t>(tokens, m.buf); break;
    case TokenDType::I32: narrow_append<int32_t>(tokens, m.buf); break;
    case TokenDType::I64: narrow_append<int64_t>(tokens, m.buf); break;
    default: break;
  }
  m.bin.write(m.buf.data(), m.buf.size());
  m.lengths.push_back(static_cast<int32_t>(tokens.size()));
}

void IndexedDatasetBuilder::finish() {
  Impl& m = *impl_;
  if (m.finished) throw std::logic_error("IndexedDatasetBuilder: finish called twice");
  m.finished = true;
  // .bin first, .idx last: a reader that finds a new .idx also finds its .bin.
  // An old .idx (a dataset being overwritten) goes once the new .bin is safely
  // written and before it replaces the old one, so an interruption between the
  // two renames leaves a .bin without .idx, never a .bin with another's .idx.
  m.bin.flush();
  std::error_code ec;
  std::filesystem::remove(m.prefix + ".idx", ec);
  if (ec) throw std::runtime_error("cannot replace " + m.prefix + ".idx: " + ec.message());
  m.bin.commit();
  const uint64_t S = m.lengths.size();
  const int64_t item = static_cast<int64_t>(token_dtype_size(m.dtype));
  std::string idx;
  idx.reserve(kHeaderSize + S * 20 + 16);
  idx.append(kMagic, 9);
  put<uint64_t>(idx, 1);
  put<uint8_t>(idx, static_cast<uint8_t>(m.dtype));
  put<uint64_t>(idx, S);
  put<uint64_t>(idx, S + 1);  // one document per sequence: [0, 1, ..., S]
  for (int32_t len : m.lengths) put<int32_t>(idx, len);
  int64_t ptr = 0;
  for (int32_t len : m.lengths) {
    put<int64_t>(idx, ptr);
    ptr += static_cast<int64_t>(len) * item;
  }
  for (uint64_t i = 0; i <= S; ++i) put<int64_t>(idx, static_cast<int64_t>(i));
  write_file_atomic(m.prefix + ".idx", idx);
}

}  // namespace minipuzzle
