// Safetensors checkpoint reader: a single model.safetensors or a sharded set described by
// model.safetensors.index.json. Only headers are parsed at open; tensor bytes are read with
// pread, slice by slice, so a rank touches only the byte ranges of its own shard.
// Every structural problem (truncated file, header past the end, bad JSON, unknown dtype,
// offsets that disagree with the shape) is an error naming the file and the tensor.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "cpu/dtype.h"

namespace tpserve {

struct TensorInfo {
  std::string name;
  std::string dtype;           // as written in the header: "F32", "BF16", ...
  std::vector<int64_t> shape;  // row-major
  int file = 0;                // index into Checkpoint::files()
  uint64_t offset = 0;         // absolute byte offset of the data in the file
  uint64_t nbytes = 0;

  int64_t numel() const;
  int64_t rows() const { return shape.empty() ? 1 : shape[0]; }
  int64_t cols() const;  // product of the trailing dims (1 for a 1-D tensor)
};

class Checkpoint {
 public:
  // dir holds model.safetensors.index.json (sharded) or model.safetensors; a path to a single
  // .safetensors file also works.
  static Result<Checkpoint> Open(const std::string& path);

  Checkpoint(Checkpoint&&) noexcept;
  Checkpoint& operator=(Checkpoint&&) noexcept;
  ~Checkpoint();

  const TensorInfo* Find(const std::string& name) const;
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::string& file_path(int file) const { return files_[file]; }

  // Reads rows [row_begin, row_end) x columns [col_begin, col_end) of a tensor viewed as
  // (rows, cols) and converts to dst_type into dst (dense, (row_end-row_begin) x (col_end-col_begin)).
  // Adds the bytes read from disk to *bytes_read.
  Status ReadSlice(const TensorInfo& t, int64_t row_begin, int64_t row_end, int64_t col_begin,
                   int64_t col_end, kernels::DType dst_type, void* dst, uint64_t* bytes_read) const;

 private:
  Checkpoint() = default;
  Status AddFile(const std::string& path, const std::vector<std::string>* expected);

  std::vector<std::string> files_;
  std::vector<int> fds_;
  std::map<std::string, TensorInfo> tensors_;
};

// Maps a safetensors dtype string to a storage dtype tpserve computes with (F32/F16/BF16).
bool SafetensorsDType(const std::string& name, kernels::DType* out);

// Writes a single-file safetensors checkpoint, streaming tensors in the order added.
class SafetensorsWriter {
 public:
  struct Entry {
    std::string name;
    kernels::DType dtype;
    std::vector<int64_t> shape;
  };
  // Writes the header for `entries` (data offsets follow their order).
  static Result<SafetensorsWriter> Create(const std::string& path, const std::vector<Entry>& entries);
  // Appends the next tensor's bytes (must come in header order and have the declared size).
  Status Append(const void* data, size_t bytes);
  Status Close();

  SafetensorsWriter(SafetensorsWriter&&) noexcept;
  ~SafetensorsWriter();

 private:
  SafetensorsWriter() = default;
  std::string path_;
  void* file_ = nullptr;  // FILE*
};

}  // namespace tpserve
