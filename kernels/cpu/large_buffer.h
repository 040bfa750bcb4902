// LargeBuffer: a large, long-lived buffer (weights, the paged KV cache) on transparent huge pages
// where Linux offers them. A decode step streams every weight once: on 4 KB pages that is a
// page-table walk for every 4 KB (the second-level TLB covers a few MB), on 2 MB pages one per
// 2 MB. From 2 MB up a buffer is an anonymous mapping aligned to 2 MB with madvise(MADV_HUGEPAGE),
// which THP's "madvise" mode (Debian's default) needs; smaller ones come from aligned_alloc
// (64-byte aligned). The memory is untouched until first written, and zero where mapped. A mapped
// buffer may hold up to one huge page more than it asked for once its last page is touched.
// TPSERVE_HUGE_PAGES=0 asks for no huge pages (for A/B measurements; under THP mode "always" the
// kernel may still use them).
#pragma once

#include <cstddef>

namespace tpserve::kernels {

class LargeBuffer {
 public:
  LargeBuffer() = default;
  explicit LargeBuffer(size_t bytes);  // data() is nullptr (and bytes() 0) when out of memory
  ~LargeBuffer();
  LargeBuffer(LargeBuffer&& other) noexcept;
  LargeBuffer& operator=(LargeBuffer&& other) noexcept;
  LargeBuffer(const LargeBuffer&) = delete;
  LargeBuffer& operator=(const LargeBuffer&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

  // Whether buffers of 2 MB and more ask for huge pages (not whether the kernel grants them).
  static bool HugePagesRequested();

 private:
  void Release();
  void* data_ = nullptr;
  size_t bytes_ = 0;
  bool mapped_ = false;  // mmap'ed (munmap) or aligned_alloc'ed (free)
};

}  // namespace tpserve::kernels
