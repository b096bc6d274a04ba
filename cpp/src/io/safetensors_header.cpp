// Safetensors header: dtypes, strict validation, serialisation. No torch, no I/O.

#include "symprune/safetensors.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <set>

namespace symprune::safetensors {
namespace {

using json = nlohmann::json;

struct DtypeEntry {
  Dtype dtype;
  std::string_view name;
  std::size_t size;
};

constexpr std::array<DtypeEntry, 15> kDtypes{{
    {Dtype::BOOL, "BOOL", 1}, {Dtype::U8, "U8", 1},         {Dtype::I8, "I8", 1},
    {Dtype::F8_E5M2, "F8_E5M2", 1}, {Dtype::F8_E4M3, "F8_E4M3", 1}, {Dtype::I16, "I16", 2},
    {Dtype::U16, "U16", 2},   {Dtype::F16, "F16", 2},       {Dtype::BF16, "BF16", 2},
    {Dtype::I32, "I32", 4},   {Dtype::U32, "U32", 4},       {Dtype::F32, "F32", 4},
    {Dtype::I64, "I64", 8},   {Dtype::U64, "U64", 8},       {Dtype::F64, "F64", 8},
}};

const DtypeEntry& entry_of(Dtype dtype) {
  return *std::find_if(kDtypes.begin(), kDtypes.end(), [&](const auto& e) { return e.dtype == dtype; });
}

[[noreturn]] void fail(const std::string& label, const std::string& problem) {
  throw FormatError(label + ": " + problem);
}

// Untrusted text made safe for a one-line error message: control bytes (and, with
// `ascii`, every non-ASCII byte) become \xNN, and it is cut after `limit` bytes.
std::string printable(std::string_view text, bool ascii, std::size_t limit) {
  std::string out;
  for (const char c : text.substr(0, limit)) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f || (ascii && byte >= 0x80)) {
      constexpr char kHex[] = "0123456789abcdef";
      out += {'\\', 'x', kHex[byte >> 4], kHex[byte & 15]};
    } else {
      out += c;
    }
  }
  return text.size() > limit ? out + "..." : out;
}

std::string shown(std::string_view name) {
  // Appended, not "'" + ... + "'": GCC 12 warns falsely (-Wrestrict) about that concatenation.
  std::string quoted = "'";
  quoted += printable(name, false, 80);
  quoted += '\'';
  return quoted;
}

// Tensor entries are objects of arrays of numbers: anything deeper is hostile. The parser
// callback enforces the depth and rejects duplicate keys, which nlohmann::json would
// otherwise silently overwrite.
constexpr int kMaxDepth = 3;

json parse_json(std::string_view text, const std::string& label) {
  std::vector<std::set<std::string>> open_objects;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth > kMaxDepth) fail(label, "header JSON is nested deeper than a safetensors header");
    switch (event) {
      case json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case json::parse_event_t::object_end:
        open_objects.pop_back();
        break;
      case json::parse_event_t::key: {
        const auto& key = parsed.get_ref<const std::string&>();
        if (!open_objects.back().insert(key).second) fail(label, "duplicate key " + shown(key) + " in header");
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), callback);
  } catch (const json::exception& e) {
    fail(label, "header is not valid JSON: " + printable(e.what(), true, 300));
  }
}

uint64_t read_u64(const json& value, const std::string& label, const std::string& what) {
  if (!value.is_number_unsigned()) fail(label, what + " must be a non-negative integer");
  return value.get<uint64_t>();
}

TensorInfo parse_tensor(const std::string& name, const json& entry, const std::string& label) {
  const std::string where = "tensor " + shown(name);
  if (name.empty()) fail(label, "a tensor has an empty name");
  if (!entry.is_object()) fail(label, where + " must be an object");
  for (const auto& [key, value] : entry.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      fail(label, where + " has unknown key " + shown(key));
  }
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!entry.contains(key)) fail(label, where + " lacks \"" + key + "\"");

  TensorInfo info;
  info.name = name;
  const json& dtype = entry["dtype"];
  if (!dtype.is_string()) fail(label, where + ": dtype must be a string");
  const auto parsed = parse_dtype(dtype.get_ref<const std::string&>());
  if (!parsed) fail(label, where + " has unknown dtype " + shown(dtype.get_ref<const std::string&>()));
  info.dtype = *parsed;

  const json& shape = entry["shape"];
  if (!shape.is_array()) fail(label, where + ": shape must be an array");
  uint64_t numel = 1;
  for (const json& dim : shape) {
    const uint64_t d = read_u64(dim, label, where + ": every dim");
    if (d > uint64_t(std::numeric_limits<int64_t>::max())) fail(label, where + " has a dim too large");
    if (__builtin_mul_overflow(numel, d, &numel)) fail(label, where + ": shape product overflows");
    info.shape.push_back(int64_t(d));
  }
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, dtype_size(info.dtype), &nbytes))
    fail(label, where + ": byte size overflows");

  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2) fail(label, where + ": data_offsets must be [begin, end]");
  info.begin = read_u64(offsets[0], label, where + ": data_offsets[0]");
  info.end = read_u64(offsets[1], label, where + ": data_offsets[1]");
  if (info.end < info.begin) fail(label, where + ": data_offsets end before begin");
  if (info.end - info.begin != nbytes)
    fail(label, where + ": " + std::string(dtype_name(info.dtype)) + " x shape is " +
                    std::to_string(nbytes) + " bytes but data_offsets span " +
                    std::to_string(info.end - info.begin));
  return info;
}

std::map<std::string, std::string> parse_metadata(const json& value, const std::string& label) {
  if (!value.is_object()) fail(label, "__metadata__ must be an object of strings");
  std::map<std::string, std::string> metadata;
  for (const auto& [key, v] : value.items()) {
    if (!v.is_string()) fail(label, "__metadata__ value of " + shown(key) + " must be a string");
    metadata.emplace(key, v.get<std::string>());
  }
  return metadata;
}

}  // namespace

std::optional<Dtype> parse_dtype(std::string_view name) {
  for (const auto& e : kDtypes)
    if (e.name == name) return e.dtype;
  return std::nullopt;
}

std::string_view dtype_name(Dtype dtype) { return entry_of(dtype).name; }
std::size_t dtype_size(Dtype dtype) { return entry_of(dtype).size; }

uint64_t TensorInfo::numel() const {
  uint64_t n = 1;
  for (const int64_t d : shape) n *= uint64_t(d);  // validated not to overflow
  return n;
}

const TensorInfo* Header::find(const std::string& name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors[it->second];
}

Header parse_header(std::span<const std::byte> prefix, uint64_t file_size, const std::string& label) {
  if (file_size < 8 || prefix.size() < 8)
    fail(label, "file is " + std::to_string(file_size) + " bytes, too short for a safetensors header");
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i) length = (length << 8) | uint64_t(prefix[i]);
  if (length > kMaxHeaderBytes)
    fail(label, "header length " + std::to_string(length) + " exceeds the " +
                    std::to_string(kMaxHeaderBytes >> 20) + " MB limit");
  if (length > file_size - 8)
    fail(label, "header length " + std::to_string(length) + " runs past the end of the " +
                    std::to_string(file_size) + "-byte file");
  if (length > prefix.size() - 8) fail(label, "header is truncated");
  const std::string_view text(reinterpret_cast<const char*>(prefix.data()) + 8, length);
  const json root = parse_json(text, label);
  if (!root.is_object()) fail(label, "header must be a JSON object");

  Header header;
  header.data_start = 8 + length;
  for (const auto& [name, value] : root.items()) {
    if (name == "__metadata__")
      header.metadata = parse_metadata(value, label);
    else
      header.tensors.push_back(parse_tensor(name, value, label));
  }
  std::stable_sort(header.tensors.begin(), header.tensors.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // The data ranges must tile the data section: no gap, overlap or overrun.
  const uint64_t data_size = file_size - header.data_start;
  uint64_t expected = 0;
  for (const auto& t : header.tensors) {
    if (t.begin != expected)
      fail(label, "tensor " + shown(t.name) + " starts at byte " + std::to_string(t.begin) + ", expected " +
                      std::to_string(expected) + (t.begin < expected ? " (overlaps the previous tensor)" : " (gap)"));
    if (t.end > data_size)
      fail(label, "tensor " + shown(t.name) + " ends at byte " + std::to_string(t.end) +
                      ", past the end of the data (" + std::to_string(data_size) + " bytes)");
    expected = t.end;
  }
  if (expected != data_size)
    fail(label, "tensors cover " + std::to_string(expected) + " bytes of data but the file holds " +
                    std::to_string(data_size));
  for (std::size_t i = 0; i < header.tensors.size(); ++i)
    header.by_name_.emplace(header.tensors[i].name, i);
  return header;
}

std::string serialize_header(std::vector<TensorInfo>& tensors,
                             const std::map<std::string, std::string>& metadata) {
  json root = json::object();
  if (!metadata.empty()) root["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (auto& t : tensors) {
    uint64_t nbytes = t.numel() * dtype_size(t.dtype);
    t.begin = offset;
    t.end = offset + nbytes;
    offset = t.end;
    if (root.contains(t.name)) throw FormatError("duplicate tensor name " + shown(t.name));
    root[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {t.begin, t.end}}};
  }
  std::string text = root.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t length = text.size();
  for (int i = 0; i < 8; ++i) out[i] = char((length >> (8 * i)) & 0xff);
  return out + text;
}

}  // namespace symprune::safetensors
