#pragma once
// The core library is built with hidden visibility: only what is marked SYMPRUNE_API (the
// public API in these headers) is exported from libsymprune.

#if defined(_WIN32)
#define SYMPRUNE_API
#else
#define SYMPRUNE_API __attribute__((visibility("default")))
#endif
