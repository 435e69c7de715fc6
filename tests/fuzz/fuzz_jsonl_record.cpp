// JSONL records through for_each_jsonl, each record turned into a sample (token ids + loss
// mask) by format_record in all four data formats, with a small real tokenizer and built-in
// chat templates.
#include <cstdint>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/data/data_format.h"
#include "engine/formats/jsonl.h"
#include "engine/text/chat_template.h"
#include "engine/text/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using namespace ftune;

struct Setup {
  Tokenizer tok = Tokenizer::load(FTUNE_SOURCE_DIR "/tests/fixtures/tokenizer/llama3_style");
  ChatTemplate llama3 = ChatTemplate::builtin("llama3");
  ChatTemplate chatml = ChatTemplate::builtin("chatml");
  std::vector<std::pair<FormatOptions, const ChatTemplate*>> variants;
  Setup() {
    FormatOptions text;
    FormatOptions instruction;
    instruction.format = DataFormat::Instruction;
    instruction.system_prompt = "Be brief.";
    FormatOptions messages;
    messages.format = DataFormat::Messages;
    messages.role_map = {{"human", "user"}, {"gpt", "assistant"}};
    messages.train_on_inputs = true;
    FormatOptions preference;
    preference.format = DataFormat::Preference;
    variants = {{text, nullptr},
                {instruction, &llama3},
                {messages, &chatml},
                {messages, &llama3},
                {preference, &chatml}};
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Setup s;
  const std::string path = fuzz::scratch_file("data.jsonl", fuzz::as_text(data, size));
  std::vector<int32_t> ids;
  std::vector<uint8_t> trainable;
  try {
    for_each_jsonl(
        path, /*skip_bad=*/true,
        [&](const nlohmann::json& rec, int64_t) {
          for (const auto& [opt, tmpl] : s.variants) {
            if (format_record(rec, opt, s.tok, tmpl, &ids, &trainable).empty()) {
              if (ids.size() != trainable.size()) std::abort();  // a mask per token, always
              s.tok.decode(ids);
            }
          }
          return std::string();
        },
        nullptr);
  } catch (const Error&) {
  }
  return 0;
}
