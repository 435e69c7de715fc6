// Hugging Face tokenizer.json BPE: byte-level (GPT-2 / Llama 3 / Qwen2 style) and
// SentencePiece-style with byte fallback (Llama 2 / Mistral / TinyLlama). Components ftune does
// not implement are rejected by name.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ftune {

class Tokenizer {
 public:
  // path: a tokenizer.json file, or a directory holding one (plus tokenizer_config.json /
  // config.json, read for BOS/EOS). Errors name the file and the unsupported component.
  static Tokenizer load(const std::string& path);
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Encodes raw text (special-token strings inside text are matched as special tokens).
  // add_special: prepend BOS when the tokenizer's post-processor would.
  std::vector<int32_t> encode(std::string_view text, bool add_special = false) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;
  std::optional<int32_t> token_to_id(const std::string& token) const;
  std::string id_to_token(int32_t id) const;
  int64_t vocab_size() const;  // max id + 1, added tokens included
  int32_t bos_id() const;      // -1 when none
  int32_t eos_id() const;      // -1 when none

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ftune
