// Validating safetensors reader. The rules are those of the reference Rust
// implementation (huggingface/safetensors, tensor.rs), plus two it documents
// but does not enforce: the header must start with '{' and must not repeat a
// key (a repeated tensor name would silently shadow the first).
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>

#include "minipuzzle/errors.h"
#include "minipuzzle/model_config.h"  // kMaxJsonNesting
#include "minipuzzle/safetensors.h"

namespace minipuzzle {

namespace detail {

// nlohmann keeps the last of repeated keys without a word; a callback that
// tracks the keys of every open object turns that into an error.
nlohmann::json parse_json_strict(std::string_view text, const std::string& source,
                                 const std::string& what) {
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  auto callback = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if ((event == E::object_start || event == E::array_start) && depth >= kMaxJsonNesting)
      throw InputError(fmt::format("{}: {} is nested deeper than {} levels", source, what, kMaxJsonNesting));
    if (event == E::object_start) {
      open_objects.emplace_back();
    } else if (event == E::object_end) {
      open_objects.pop_back();
    } else if (event == E::key && !open_objects.empty() && duplicate.empty()) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!open_objects.back().insert(key).second) duplicate = key;
    }
    return true;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text.begin(), text.end(), callback);
  } catch (const nlohmann::json::exception& e) {  // parse_error, and out_of_range for numbers past double
    throw InputError(fmt::format("{}: {} is not valid JSON ({})", source, what, e.what()));
  }
  if (!duplicate.empty())
    throw InputError(fmt::format("{}: {} has duplicate key \"{}\"", source, what, duplicate));
  return j;
}

}  // namespace detail

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference's MAX_HEADER_SIZE

[[noreturn]] void fail(const std::string& source, const std::string& rule) {
  throw InputError(source + ": " + rule);
}

// Returns the offset of the first byte that breaks UTF-8, or npos.
std::size_t first_invalid_utf8(const uint8_t* s, std::size_t n) {
  std::size_t i = 0;
  while (i < n) {
    uint8_t c = s[i];
    std::size_t len;
    uint32_t cp;
    if (c < 0x80) { ++i; continue; }
    if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
    else return i;
    if (i + len > n) return i;
    for (std::size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    // Overlong forms, UTF-16 surrogates and code points past U+10FFFF.
    static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return i;
    i += len;
  }
  return std::string_view::npos;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ","));
}

uint64_t as_size(const nlohmann::json& v, bool& ok) {
  ok = v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0);
  return ok ? v.get<uint64_t>() : 0;
}

TensorInfo parse_entry(const std::string& source, const std::string& name,
                       const nlohmann::json& entry) {
  auto where = fmt::format("tensor \"{}\"", name);
  if (!entry.is_object()) fail(source, where + " is not an object");
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!entry.contains(field)) fail(source, fmt::format("{} has no \"{}\"", where, field));
  // Unknown extra fields are ignored, as the reference does (serde default).
  TensorInfo t;
  t.name = name;

  const auto& dtype = entry["dtype"];
  if (!dtype.is_string()) fail(source, where + " dtype is not a string");
  auto parsed = dtype_from_name(dtype.get<std::string>());
  if (!parsed) fail(source, fmt::format("{} has unknown dtype \"{}\"", where, dtype.get<std::string>()));
  t.dtype = *parsed;

  const auto& shape = entry["shape"];
  if (!shape.is_array()) fail(source, where + " shape is not an array");
  for (const auto& d : shape) {
    bool ok;
    uint64_t dim = as_size(d, ok);
    if (!ok || dim > uint64_t(std::numeric_limits<int64_t>::max()))
      fail(source, fmt::format("{} shape {} is not an array of non-negative integers", where,
                               shape.dump()));
    t.shape.push_back(int64_t(dim));
  }

  const auto& offsets = entry["data_offsets"];
  bool ok_begin = false, ok_end = false;
  if (offsets.is_array() && offsets.size() == 2) {
    t.begin = as_size(offsets[0], ok_begin);
    t.end = as_size(offsets[1], ok_end);
  }
  if (!ok_begin || !ok_end)
    fail(source, fmt::format("{} data_offsets {} is not [begin, end] of non-negative integers",
                             where, offsets.dump()));
  if (t.begin > t.end)
    fail(source, fmt::format("{} data_offsets [{}, {}] has begin > end", where, t.begin, t.end));

  uint64_t numel = 1;
  for (int64_t d : t.shape)
    if (__builtin_mul_overflow(numel, uint64_t(d), &numel))
      fail(source, fmt::format("{} shape {} overflows the element count", where, shape_text(t.shape)));
  uint64_t nbytes;
  if (__builtin_mul_overflow(numel, uint64_t(dtype_size(t.dtype)), &nbytes))
    fail(source, fmt::format("{} shape {} overflows the byte size", where, shape_text(t.shape)));
  if (nbytes != t.nbytes())
    fail(source, fmt::format("{} data_offsets [{}, {}] but {} {} needs {} bytes", where, t.begin,
                             t.end, dtype_name(t.dtype), shape_text(t.shape), nbytes));
  return t;
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  const std::string source = path.string();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(source, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(source, "not a regular file");
  }
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->size_ = std::size_t(st.st_size);
  if (file->size_ > 0) {
    // MAP_PRIVATE + PROT_READ: tensors are views of the page cache, and a
    // writer replacing the file (by rename) cannot change what we see.
    void* m = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    if (m == MAP_FAILED) {
      ::close(fd);
      fail(source, std::string("cannot mmap: ") + std::strerror(err));
    }
    file->mapping_ = m;
    file->base_ = static_cast<const uint8_t*>(m);
    file->fd_ = fd;
  } else {
    ::close(fd);
  }
  file->parse(source);
  return file;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::from_memory(const uint8_t* bytes,
                                                              std::size_t size,
                                                              const std::string& source) {
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = source;
  file->base_ = bytes;
  file->size_ = size;
  file->parse(source);
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_) ::munmap(mapping_, size_);
  if (fd_ >= 0) ::close(fd_);
}

void SafetensorsFile::check_intact() const {
  if (fd_ < 0) return;  // in memory, or an empty file: nothing mapped
  struct stat st {};
  if (::fstat(fd_, &st) != 0)
    throw InputError(fmt::format("{}: cannot stat while reading it: {}", path_.string(), std::strerror(errno)));
  if (static_cast<uint64_t>(st.st_size) < size_)
    throw InputError(fmt::format("{}: the file shrank from {} to {} bytes while it was being read (truncated or "
                                 "rewritten in place?)",
                                 path_.string(), size_, static_cast<uint64_t>(st.st_size)));
}

void SafetensorsFile::release_pages(const TensorInfo& t) const { release_pages(t, 0, t.nbytes()); }

void SafetensorsFile::release_pages(const TensorInfo& t, uint64_t from, uint64_t to) const {
  to = std::min<uint64_t>(to, t.nbytes());
  if (!mapping_ || from >= to) return;
  // Only whole pages inside the range: a page shared with a neighbour stays.
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(buffer_ + t.begin + from),
                  end = reinterpret_cast<uintptr_t>(buffer_ + t.begin + to);
  const uintptr_t first = (begin + page - 1) / page * page, last = end / page * page;
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

void SafetensorsFile::parse(const std::string& source) {
  if (size_ < 8)
    fail(source, fmt::format("file is {} bytes, shorter than the 8-byte header length", size_));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base_[i];  // little endian on any host
  if (n > kMaxHeaderBytes)
    fail(source, fmt::format("header length {} exceeds the limit of {} bytes", n, kMaxHeaderBytes));
  if (n > size_ - 8)
    fail(source, fmt::format("header length {} runs past the end of the {}-byte file", n, size_));
  const uint8_t* header = base_ + 8;
  if (auto bad = first_invalid_utf8(header, n); bad != std::string_view::npos)
    fail(source, fmt::format("header is not valid UTF-8 (byte {} of the header)", bad));
  if (n == 0 || header[0] != '{') fail(source, "header does not start with '{'");

  auto j = detail::parse_json_strict(
      std::string_view(reinterpret_cast<const char*>(header), n), source, "header");
  if (!j.is_object()) fail(source, "header is not a JSON object");

  for (const auto& [key, value] : j.items()) {
    if (key == "__metadata__") {
      if (value.is_null()) continue;  // the reference reads null as "no metadata"
      if (!value.is_object()) fail(source, "__metadata__ is not an object of strings");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string())
          fail(source, fmt::format("__metadata__ value of \"{}\" is not a string", mk));
        metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    tensors_.push_back(parse_entry(source, key, value));
  }

  std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  const uint64_t buffer_size = size_ - 8 - n;
  uint64_t covered = 0;
  for (std::size_t i = 0; i < tensors_.size(); ++i) {
    const auto& t = tensors_[i];
    if (i == 0 && t.begin != 0)
      fail(source, fmt::format("first tensor \"{}\" begins at byte {}, not 0", t.name, t.begin));
    if (i > 0 && t.begin > covered)
      fail(source, fmt::format("gap of {} bytes between tensors \"{}\" (ends at {}) and \"{}\"",
                               t.begin - covered, tensors_[i - 1].name, covered, t.name));
    if (i > 0 && t.begin < covered)
      fail(source, fmt::format("tensors \"{}\" and \"{}\" overlap (begin {} < previous end {})",
                               tensors_[i - 1].name, t.name, t.begin, covered));
    covered = t.end;
  }
  if (covered != buffer_size)
    fail(source, fmt::format("tensors cover {} bytes but the data buffer holds {} bytes", covered,
                             buffer_size));

  buffer_ = base_ + 8 + n;
  for (std::size_t i = 0; i < tensors_.size(); ++i) by_name_[tensors_[i].name] = i;
}

}  // namespace minipuzzle
