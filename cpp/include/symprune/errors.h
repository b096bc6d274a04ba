#pragma once
// The exceptions of the symprune core. Nothing here depends on torch, so that the safetensors
// parser can be built, fuzzed and sanitised on its own.
//
//   ValueError   bad input: an argument, a recipe, a tensor's shape, dtype or values (NaN/Inf),
//                missing or mismatched statistics. Python: ValueError.
//   FormatError  a malformed file (safetensors header, index, statistics or job file); a
//                ValueError. Python: ValueError.
//   IoError      a failed system call (missing file, permission, full disk). Python: OSError.
//
// Failures of torch itself (a GPU out of memory, a CUDA error) keep torch's own type
// (c10::Error and its subclasses), so that Python sees e.g. torch.OutOfMemoryError. Messages
// name what was wrong (the argument, the file, the tensor) and carry no backtrace.

#include "symprune/export.h"

#include <stdexcept>

namespace symprune {

class SYMPRUNE_API ValueError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

class SYMPRUNE_API FormatError : public ValueError {
 public:
  using ValueError::ValueError;
};

class SYMPRUNE_API IoError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace symprune
