// Safetensors reader/writer without torch: also built with ASan/UBSan by scripts/sanitize.sh.

#include "symprune/safetensors.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#ifndef SYMPRUNE_FUZZ_DIR
#error "SYMPRUNE_FUZZ_DIR must name tests/fuzz"
#endif

namespace fs = std::filesystem;
using namespace symprune;
using namespace symprune::safetensors;

namespace {

std::string with_length(const std::string& json, const std::string& data = "") {
  std::string out(8, '\0');
  const uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[i] = char((n >> (8 * i)) & 0xff);
  return out + json + data;
}

Header parse(const std::string& file) {
  return parse_header({reinterpret_cast<const std::byte*>(file.data()), file.size()}, file.size(), "x.safetensors");
}

std::string parse_error(const std::string& file) {
  try {
    parse(file);
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

fs::path temp_dir() {
  auto dir = fs::temp_directory_path() / ("symprune-st-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir;
}

std::vector<std::string> files_in(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

TEST(SafetensorsHeader, ParsesAValidHeader) {
  const auto h = parse(with_length(
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2,3],"data_offsets":[4,16]},)"
      R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
      std::string(16, 'x')));
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[0].name, "a");  // data order
  EXPECT_EQ(h.tensors[1].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(h.tensors[1].dtype, Dtype::BF16);
  EXPECT_EQ(h.metadata.at("format"), "pt");
  EXPECT_EQ(h.find("b")->begin, 4u);
  EXPECT_EQ(h.find("c"), nullptr);
}

TEST(SafetensorsHeader, RejectsHostileHeaders) {
  const std::string t = R"("dtype":"F32","shape":[2],"data_offsets":[0,8])";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {std::string(5, '\0'), "too short"},
      {with_length("{}").substr(0, 9), "runs past the end"},
      {std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}", "exceeds the 100 MB limit"},
      {with_length("{\"a\":{" + t + "}", std::string(8, 'x')), "not valid JSON"},
      {with_length("{\"\xff\xfe\":{" + t + "}}", std::string(8, 'x')), "not valid JSON"},
      {with_length("{\"a\":{" + t + "},\"a\":{" + t + "}}", std::string(8, 'x')), "duplicate key 'a'"},
      {with_length("[1]"), "must be a JSON object"},
      {with_length(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                   std::string(8, 'x')),
       "overlaps"},
      {with_length("{\"a\":{" + t + "}}", std::string(4, 'x')), "past the end of the data"},
      {with_length(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", std::string(8, 'x')), "(gap)"},
      {with_length("{\"a\":{" + t + "}}", std::string(12, 'x')), "cover 8 bytes"},
      {with_length(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, 'x')),
       "is 12 bytes but data_offsets span 8"},
      {with_length(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})"), "overflows"},
      {with_length(R"({"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,8]}})"), "overflows"},
      {with_length(R"({"a":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})"), "too large"},
      {with_length(R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})"), "unknown dtype 'Q4'"},
      {with_length(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})"), "non-negative integer"},
      {with_length(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})"), "non-negative integer"},
      {with_length(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})"), "end before begin"},
      {with_length(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})"), "[begin, end]"},
      {with_length(R"({"a":{"dtype":"F32","shape":[2]}})"), "lacks \"data_offsets\""},
      {with_length(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})"), "unknown key 'x'"},
      {with_length(R"({"a":[1]})"), "must be an object"},
      {with_length(R"({"__metadata__":["pt"]})"), "__metadata__ must be an object"},
      {with_length(R"({"__metadata__":{"format":3}})"), "must be a string"},
      {with_length(R"({"a":{"dtype":"F32","shape":[[[[1]]]],"data_offsets":[0,4]}})"), "nested deeper"},
      {with_length("{\"\":{" + t + "}}", std::string(8, 'x')), "empty name"},
  };
  for (const auto& [file, fragment] : cases) {
    const auto message = parse_error(file);
    EXPECT_NE(message.find(fragment), std::string::npos) << "expected '" << fragment << "', got '" << message << "'";
    EXPECT_EQ(message.rfind("x.safetensors: ", 0), 0u) << message;
  }
}

TEST(SafetensorsFiles, WriteThenReadRoundTrip) {
  const auto dir = temp_dir();
  const auto path = dir / "t.safetensors";
  std::vector<TensorInfo> tensors{{"w", Dtype::F16, {2, 3}}, {"b", Dtype::U8, {5}}, {"e", Dtype::F32, {0}}};
  {
    Writer writer(path, tensors, {{"format", "pt"}});
    const std::vector<std::byte> w(12, std::byte{7}), b(5, std::byte{9});
    writer.write(1, b);
    writer.write(0, w);
    writer.write(2, {});
    EXPECT_EQ(files_in(dir), std::vector<std::string>{"t.safetensors.partial"});
    writer.commit();
  }
  EXPECT_EQ(files_in(dir), std::vector<std::string>{"t.safetensors"});
  const Reader reader(path);
  EXPECT_EQ(reader.header().data_start % 8, 0u);
  const auto* b = reader.header().find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(reader.bytes(*b).size(), 5u);
  EXPECT_EQ(reader.bytes(*b)[4], std::byte{9});
  reader.load(*b);
  reader.release(*b);
  EXPECT_EQ(reader.bytes(*b)[0], std::byte{9});  // pages come back from the page cache

  // Copying between files gives the same bytes.
  const auto copy = dir / "copy.safetensors";
  {
    Writer writer(copy, reader.header().tensors, reader.header().metadata);
    for (std::size_t i = 0; i < reader.header().tensors.size(); ++i) writer.copy(i, reader, reader.header().tensors[i]);
    writer.commit();
  }
  std::ifstream a(path, std::ios::binary), c(copy, std::ios::binary);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(a), {}), std::string(std::istreambuf_iterator<char>(c), {}));
  fs::remove_all(dir);
}

TEST(SafetensorsFiles, UnfinishedWritesLeaveNothing) {
  const auto dir = temp_dir();
  {
    Writer writer(dir / "t.safetensors", {{"w", Dtype::F32, {2}}}, {});
    EXPECT_THROW(writer.write(0, std::vector<std::byte>(3)), FormatError);  // wrong size
    EXPECT_THROW(writer.commit(), FormatError);                             // never written
  }
  EXPECT_TRUE(files_in(dir).empty());
  EXPECT_THROW(Reader(dir / "missing.safetensors"), IoError);
  EXPECT_THROW(Reader{dir}, FormatError);  // a folder is not a regular file
  fs::remove_all(dir);
}

TEST(SafetensorsFiles, TensorsWrittenInPieces) {
  const auto dir = temp_dir();
  const std::vector<float> values{1, 2, 3, 4, 5, 6};
  const auto bytes = std::as_bytes(std::span(values));
  {
    Writer writer(dir / "t.safetensors", {{"w", Dtype::F32, {3, 2}}}, {});
    writer.write_part(0, 16, bytes.subspan(16, 8));  // the last row first
    EXPECT_THROW(writer.write_part(0, 20, bytes.subspan(0, 8)), FormatError);  // past the tensor's end
    EXPECT_THROW(writer.commit(), FormatError);                                  // rows 0 and 1 missing
    writer.write_part(0, 0, bytes.subspan(0, 16));
    writer.commit();
  }
  const Reader reader(dir / "t.safetensors");
  const auto data = reader.bytes(reader.header().tensors[0]);
  EXPECT_TRUE(std::equal(data.begin(), data.end(), bytes.begin(), bytes.end()));
  fs::remove_all(dir);
}

TEST(SafetensorsFiles, IndexShardsMustStayInTheFolder) {
  const auto dir = temp_dir();
  for (const char* shard : {"../evil.safetensors", "/etc/passwd", "..", ""}) {
    std::ofstream(dir / kIndexName) << R"({"weight_map":{"a":")" << shard << R"("}})";
    EXPECT_THROW(find_checkpoint(dir), FormatError) << shard;
  }
  std::ofstream(dir / kIndexName) << R"({"weight_map":{"a":"m-1.safetensors","b":"m-2.safetensors","c":"m-1.safetensors"}})";
  EXPECT_EQ(find_checkpoint(dir).shards, (std::vector<std::string>{"m-1.safetensors", "m-2.safetensors"}));
  // A .safetensors file the index does not name (a stale single-file model, say) is refused.
  std::ofstream(dir / "model.safetensors") << "";
  try {
    find_checkpoint(dir);
    ADD_FAILURE() << "a stray shard was accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("model.safetensors is not named by"), std::string::npos) << e.what();
  }
  fs::remove(dir / "model.safetensors");
  std::ofstream(dir / kIndexName) << "{not json";
  EXPECT_THROW(find_checkpoint(dir), FormatError);
  fs::remove_all(dir);
}

// Every input the fuzzer ever crashed on, and the seed corpus, must parse or be refused cleanly.
TEST(SafetensorsHeader, FuzzRegressionsAndCorpus) {
  int files = 0;
  for (const char* sub : {"regressions", "corpus"}) {
    const fs::path dir = fs::path(SYMPRUNE_FUZZ_DIR) / sub;
    if (!fs::exists(dir)) continue;
    for (const auto& entry : fs::directory_iterator(dir)) {
      std::ifstream in(entry.path(), std::ios::binary);
      const std::string bytes(std::istreambuf_iterator<char>(in), {});
      try {
        parse(bytes);
      } catch (const FormatError&) {
      }
      ++files;
    }
  }
  EXPECT_GT(files, 0);
}
