#include "cpu/large_buffer.h"

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <utility>

#include "cpu/env_switch.h"

namespace tpserve::kernels {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;

size_t RoundUp(size_t n, size_t to) {
  return (n + to - 1) / to * to;
}

}  // namespace

bool LargeBuffer::HugePagesRequested() {
  static const bool on = EnvSwitchOn("TPSERVE_HUGE_PAGES");
  return on;
}

LargeBuffer::LargeBuffer(size_t bytes) : bytes_(bytes) {
  if (!HugePagesRequested() || bytes < kHugePage) {
    data_ = std::aligned_alloc(64, RoundUp(bytes == 0 ? 64 : bytes, 64));
    if (data_ == nullptr) bytes_ = 0;
    return;
  }
  // One huge page more than needed: keep the 2 MB-aligned part, unmap the rest.
  const size_t size = RoundUp(bytes, kHugePage);
  void* raw = mmap(nullptr, size + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) {
    bytes_ = 0;
    return;
  }
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw), end = start + size + kHugePage;
  const uintptr_t aligned = RoundUp(start, kHugePage);
  if (aligned > start) munmap(raw, aligned - start);
  if (end > aligned + size) munmap(reinterpret_cast<void*>(aligned + size), end - (aligned + size));
  data_ = reinterpret_cast<void*>(aligned);
  mapped_ = true;
  madvise(data_, size, MADV_HUGEPAGE);  // advice: where THP is off the pages stay 4 KB
}

LargeBuffer::~LargeBuffer() {
  Release();
}

LargeBuffer::LargeBuffer(LargeBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      mapped_(std::exchange(other.mapped_, false)) {}

LargeBuffer& LargeBuffer::operator=(LargeBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    mapped_ = std::exchange(other.mapped_, false);
  }
  return *this;
}

void LargeBuffer::Release() {
  if (data_ == nullptr) return;
  if (mapped_) {
    munmap(data_, RoundUp(bytes_, kHugePage));
  } else {
    std::free(data_);
  }
  data_ = nullptr;
}

}  // namespace tpserve::kernels
