// Turns one JSONL record into one training sample: token ids plus a per-token flag saying
// whether the loss covers it. Formats: text (completion: every token trained, EOS appended),
// instruction (alpaca-like fields rendered through a chat template as one user turn and one
// assistant turn), messages (a chat: list of {role, content}), preference (prompt / chosen /
// rejected: validated now; trained on prompt + chosen until preference tuning lands).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/data/packing.h"
#include "engine/formats/jsonl.h"
#include "engine/recipe/recipe.h"
#include "engine/text/chat_template.h"
#include "engine/text/tokenizer.h"

namespace ftune {

// DataFormat (recipe.h) from a flag's text; throws naming the valid names.
DataFormat parse_data_format(const std::string& name);

struct FormatOptions {
  DataFormat format = DataFormat::Text;
  std::string text_field = "text";
  std::string instruction_field = "instruction", input_field = "input", output_field = "output";
  std::string messages_field = "messages", role_field = "role", content_field = "content";
  std::string prompt_field = "prompt", chosen_field = "chosen", rejected_field = "rejected";
  std::string system_prompt;                    // prepended as a system turn when not empty
  std::map<std::string, std::string> role_map;  // dataset role name -> system/user/assistant
  bool train_on_inputs = false;                 // also train on prompts / user turns
  // text: add the post-processor's special tokens (BOS) to each document. The stream layout
  // turns this off: it concatenates documents with only EOS between them.
  bool text_specials = true;
};

// Encodes one record. Returns "" on success, else why the record cannot be used (a missing or
// mistyped field, a conversation the template cannot render) — phrased for a file:line message.
// `tmpl` is required for every format but text.
std::string format_record(const nlohmann::json& rec, const FormatOptions& opt, const Tokenizer& tok,
                          const ChatTemplate* tmpl, std::vector<int32_t>* ids,
                          std::vector<uint8_t>* trainable);

struct BuildStats {
  JsonlStats jsonl;
  int64_t samples = 0;
  int64_t tokens = 0;
  int64_t trainable_tokens = 0;
};

// Streams a JSONL file into `out`, formatting records in parallel batches (record order kept).
// on_progress, when given, is called after each batch with the stats so far and the bytes read.
using BuildProgress = std::function<void(const BuildStats& stats, int64_t bytes_read)>;
void append_samples(const std::string& path, const FormatOptions& opt, const Tokenizer& tok,
                    const ChatTemplate* tmpl, bool skip_bad, int threads, SampleSink* out,
                    BuildStats* stats, const BuildProgress& on_progress = nullptr);

}  // namespace ftune
