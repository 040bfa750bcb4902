#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

namespace tpserve {
namespace fs = std::filesystem;
using kernels::DType;
using nlohmann::json;

namespace {

// Element sizes of every dtype the safetensors format defines.
int SpecDTypeSize(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

// Header size sanity bound (the format caps it at 100 MB).
constexpr uint64_t kMaxHeader = 100ull << 20;

Status PreadAll(int fd, void* dst, uint64_t bytes, uint64_t offset, const std::string& file) {
  char* p = static_cast<char*>(dst);
  while (bytes > 0) {
    ssize_t n = ::pread(fd, p, bytes, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return TPS_ERROR("{}: read failed at offset {}: {}", file, offset, std::strerror(errno));
    }
    if (n == 0) return TPS_ERROR("{}: unexpected end of file at offset {} (truncated?)", file, offset);
    p += n;
    bytes -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return Status();
}

}  // namespace

bool SafetensorsDType(const std::string& name, DType* out) {
  if (name == "F32") {
    *out = DType::kF32;
  } else if (name == "F16") {
    *out = DType::kF16;
  } else if (name == "BF16") {
    *out = DType::kBF16;
  } else {
    return false;
  }
  return true;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t TensorInfo::cols() const {
  int64_t n = 1;
  for (size_t i = 1; i < shape.size(); ++i) n *= shape[i];
  return n;
}

Checkpoint::Checkpoint(Checkpoint&& o) noexcept
    : files_(std::move(o.files_)), fds_(std::move(o.fds_)), tensors_(std::move(o.tensors_)) {
  o.fds_.clear();
}
Checkpoint& Checkpoint::operator=(Checkpoint&& o) noexcept {
  if (this != &o) {
    for (int fd : fds_) ::close(fd);
    files_ = std::move(o.files_);
    fds_ = std::move(o.fds_);
    tensors_ = std::move(o.tensors_);
    o.fds_.clear();
  }
  return *this;
}
Checkpoint::~Checkpoint() {
  for (int fd : fds_) ::close(fd);
}

Result<Checkpoint> Checkpoint::Open(const std::string& path) {
  Checkpoint ckpt;
  if (!fs::exists(path)) {
    return TPS_ERROR("model path '{}' does not exist; pass --model-path with a Hugging Face model directory",
                     path);
  }
  if (!fs::is_directory(path)) {
    TPS_RETURN_IF_ERROR(ckpt.AddFile(path, nullptr));
    return ckpt;
  }
  const fs::path dir(path);
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(index)) {
    std::ifstream in(index);
    json j;
    try {
      in >> j;
    } catch (const json::exception& e) {
      return TPS_ERROR("{}: not valid JSON: {}", index.string(), e.what());
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object()) {
      return TPS_ERROR("{}: missing the 'weight_map' object (tensor name -> shard file)", index.string());
    }
    std::map<std::string, std::vector<std::string>> by_file;
    for (const auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string())
        return TPS_ERROR("{}: weight_map['{}'] must be a file name", index.string(), name);
      by_file[file.get<std::string>()].push_back(name);
    }
    for (const auto& [file, names] : by_file) {
      TPS_RETURN_IF_ERROR(ckpt.AddFile((dir / file).string(), &names));
    }
    return ckpt;
  }
  const fs::path single = dir / "model.safetensors";
  if (!fs::exists(single)) {
    return TPS_ERROR(
        "{}: no model.safetensors or model.safetensors.index.json found (only safetensors checkpoints "
        "are supported; convert .bin/.pth weights with transformers' save_pretrained)",
        path);
  }
  TPS_RETURN_IF_ERROR(ckpt.AddFile(single.string(), nullptr));
  return ckpt;
}

Status Checkpoint::AddFile(const std::string& path, const std::vector<std::string>* expected) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return TPS_ERROR("cannot open checkpoint file '{}': {}", path, std::strerror(errno));
  const int file_index = static_cast<int>(files_.size());
  files_.push_back(path);
  fds_.push_back(fd);

  struct stat st;
  if (::fstat(fd, &st) != 0) return TPS_ERROR("{}: stat failed: {}", path, std::strerror(errno));
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    return TPS_ERROR("{}: file is {} bytes, too short for a safetensors header (truncated?)", path,
                     file_size);
  }
  uint64_t header_len = 0;
  unsigned char len_bytes[8];
  TPS_RETURN_IF_ERROR(PreadAll(fd, len_bytes, 8, 0, path));
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];  // little-endian u64
  if (header_len > file_size - 8) {
    return TPS_ERROR(
        "{}: header length {} runs past the end of the file ({} bytes): truncated or not a safetensors "
        "file",
        path, header_len, file_size);
  }
  if (header_len > kMaxHeader) return TPS_ERROR("{}: header length {} exceeds 100 MB", path, header_len);
  std::string header(header_len, '\0');
  TPS_RETURN_IF_ERROR(PreadAll(fd, header.data(), header_len, 8, path));
  json j;
  try {
    j = json::parse(header);
  } catch (const json::exception& e) {
    return TPS_ERROR("{}: the header is not valid JSON: {}", path, e.what());
  }
  if (!j.is_object()) return TPS_ERROR("{}: the header must be a JSON object", path);

  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = file_size - data_start;
  for (const auto& [name, entry] : j.items()) {
    if (name == "__metadata__") continue;
    TensorInfo t;
    t.name = name;
    t.file = file_index;
    try {
      t.dtype = entry.at("dtype").get<std::string>();
      t.shape = entry.at("shape").get<std::vector<int64_t>>();
      auto offs = entry.at("data_offsets").get<std::vector<uint64_t>>();
      if (offs.size() != 2 || offs[1] < offs[0]) {
        return TPS_ERROR("{}: tensor '{}' has malformed data_offsets", path, name);
      }
      t.offset = data_start + offs[0];
      t.nbytes = offs[1] - offs[0];
      if (offs[1] > data_size) {
        return TPS_ERROR(
            "{}: tensor '{}' data [{}, {}) extends past the end of the data section ({} bytes): the file "
            "is truncated",
            path, name, offs[0], offs[1], data_size);
      }
    } catch (const json::exception& e) {
      return TPS_ERROR("{}: tensor '{}' has a malformed header entry: {}", path, name, e.what());
    }
    const int esize = SpecDTypeSize(t.dtype);
    if (esize == 0) return TPS_ERROR("{}: tensor '{}' has unknown dtype '{}'", path, name, t.dtype);
    for (int64_t d : t.shape) {
      if (d < 0) return TPS_ERROR("{}: tensor '{}' has a negative dimension", path, name);
    }
    if (static_cast<uint64_t>(t.numel()) * esize != t.nbytes) {
      return TPS_ERROR("{}: tensor '{}' ({} {}) needs {} bytes but data_offsets span {}", path, name, t.dtype,
                       fmt::join(t.shape, "x"), static_cast<uint64_t>(t.numel()) * esize, t.nbytes);
    }
    if (tensors_.count(name)) {
      return TPS_ERROR("{}: tensor '{}' also appears in {}", path, name, files_[tensors_[name].file]);
    }
    tensors_.emplace(name, std::move(t));
  }
  if (expected != nullptr) {
    for (const auto& name : *expected) {
      auto it = tensors_.find(name);
      if (it == tensors_.end() || it->second.file != file_index) {
        return TPS_ERROR(
            "model.safetensors.index.json maps tensor '{}' to '{}', but that file does not contain it", name,
            path);
      }
    }
  }
  return Status();
}

const TensorInfo* Checkpoint::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

Status Checkpoint::ReadSlice(const TensorInfo& t, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                             DType dst_type, void* dst, uint64_t* bytes_read) const {
  DType src_type;
  if (!SafetensorsDType(t.dtype, &src_type)) {
    return TPS_ERROR("{}: tensor '{}' has dtype {}, but tpserve loads F32, F16 and BF16 weights",
                     files_[t.file], t.name, t.dtype);
  }
  const int64_t rows = t.rows(), cols = t.cols();
  if (r0 < 0 || r1 > rows || r0 > r1 || c0 < 0 || c1 > cols || c0 > c1) {
    return TPS_ERROR("{}: slice rows [{}, {}) cols [{}, {}) is outside tensor '{}' ({}x{})", files_[t.file],
                     r0, r1, c0, c1, t.name, rows, cols);
  }
  const size_t esrc = kernels::DTypeSize(src_type), edst = kernels::DTypeSize(dst_type);
  const int64_t w = c1 - c0;
  char* out = static_cast<char*>(dst);
  if (w == cols && src_type == dst_type) {  // contiguous rows: one read straight into place
    const uint64_t n = static_cast<uint64_t>(r1 - r0) * cols * esrc;
    TPS_RETURN_IF_ERROR(
        PreadAll(fds_[t.file], out, n, t.offset + static_cast<uint64_t>(r0) * cols * esrc, files_[t.file])
            .WithContext("tensor '" + t.name + "'"));
    *bytes_read += n;
    return Status();
  }
  // Strided (row-parallel) or converting: read row by row through a staging buffer.
  std::vector<char> row(static_cast<size_t>(w) * esrc);
  for (int64_t r = r0; r < r1; ++r) {
    const uint64_t off = t.offset + (static_cast<uint64_t>(r) * cols + c0) * esrc;
    TPS_RETURN_IF_ERROR(PreadAll(fds_[t.file], row.data(), row.size(), off, files_[t.file])
                            .WithContext("tensor '" + t.name + "'"));
    kernels::ConvertDType(row.data(), src_type, out + static_cast<size_t>(r - r0) * w * edst, dst_type,
                          static_cast<size_t>(w));
    *bytes_read += row.size();
  }
  return Status();
}

// ---------------------------------------------------------------------------------------------
SafetensorsWriter::SafetensorsWriter(SafetensorsWriter&& o) noexcept
    : path_(std::move(o.path_)), file_(o.file_) {
  o.file_ = nullptr;
}
SafetensorsWriter::~SafetensorsWriter() {
  if (file_ != nullptr) std::fclose(static_cast<FILE*>(file_));
}

Result<SafetensorsWriter> SafetensorsWriter::Create(const std::string& path,
                                                    const std::vector<Entry>& entries) {
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const Entry& e : entries) {
    uint64_t n = kernels::DTypeSize(e.dtype);
    for (int64_t d : e.shape) n *= static_cast<uint64_t>(d);
    const char* dt = e.dtype == DType::kF32 ? "F32" : e.dtype == DType::kF16 ? "F16" : "BF16";
    header[e.name] = {{"dtype", dt}, {"shape", e.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');  // keep the data section 8-byte aligned
  SafetensorsWriter w;
  w.path_ = path;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return TPS_ERROR("cannot create '{}': {}", path, std::strerror(errno));
  w.file_ = f;
  unsigned char len[8];
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  if (std::fwrite(len, 1, 8, f) != 8 || std::fwrite(text.data(), 1, text.size(), f) != text.size()) {
    return TPS_ERROR("writing the header of '{}' failed", path);
  }
  return w;
}

Status SafetensorsWriter::Append(const void* data, size_t bytes) {
  if (std::fwrite(data, 1, bytes, static_cast<FILE*>(file_)) != bytes) {
    return TPS_ERROR("writing '{}' failed: {}", path_, std::strerror(errno));
  }
  return Status();
}

Status SafetensorsWriter::Close() {
  FILE* f = static_cast<FILE*>(file_);
  file_ = nullptr;
  if (f != nullptr && std::fclose(f) != 0) return TPS_ERROR("closing '{}' failed", path_);
  return Status();
}

}  // namespace tpserve
