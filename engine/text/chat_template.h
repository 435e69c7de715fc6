// Chat templates: a conversation of {role, content} messages rendered to the exact text Hugging
// Face's apply_chat_template(tokenize=False) produces for the same format, split into spans so the
// trainer learns only the assistant responses. The text carries every special token the format
// writes (BOS included), as plain strings the tokenizer matches as added tokens: encode it with
// add_special = false. tests/fixtures/chat_templates/make_fixtures.py holds the reference Jinja
// template of each built-in format and documents them.
#pragma once
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ftune {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

struct RenderedSpan {
  std::string text;
  // Part of an assistant response, its end-of-turn / EOS text included; role headers and
  // separators around it are not.
  bool trainable = false;
};

// BOS / EOS token text as the template writes it (the tokenizer's token strings, e.g. "<s>").
// Unset: the template's default. An empty BOS means the vocabulary has none.
struct ChatSpecialTokens {
  std::optional<std::string> bos;
  std::optional<std::string> eos;
};

class ChatTemplate {
 public:
  // chatml, llama3, llama2, mistral, alpaca, plain.
  static const std::vector<std::string>& builtin_names();
  // Default tokens: llama3 BOS "<|begin_of_text|>"; llama2, mistral, alpaca and plain use
  // "<s>" / "</s>", so pass the model's own for other vocabularies. chatml writes neither.
  // Unknown name or an empty EOS for a format that ends turns with it: ftune::Error.
  static ChatTemplate builtin(const std::string& name, const ChatSpecialTokens& tokens = {});
  // The model's own template: chat_template.jinja in model_dir, else the chat_template of its
  // tokenizer_config.json (a string, or a list of {name, template} whose "default" entry is
  // used); model_dir may also be the tokenizer_config.json path itself. BOS / EOS come from
  // tokenizer_config.json (or special_tokens_map.json). The Jinja source is recognised by the
  // literals and filters that decide the output of the known shapes, including a ChatML default
  // system prompt; anything else is an ftune::Error naming the file that says to set
  // data.chat_template to a built-in name.
  static ChatTemplate from_tokenizer_config(const std::string& model_dir);

  const std::string& name() const { return name_; }
  const std::string& bos() const { return bos_; }
  const std::string& eos() const { return eos_; }
  // ChatML only: the system prompt injected when the first message is not a system message.
  const std::optional<std::string>& default_system() const { return default_system_; }
  // "chat template 'llama2'", plus the file it was read from; the prefix of render errors.
  std::string describe() const;

  // Every format takes a system message only as the first message; llama2, alpaca and mistral
  // need user/assistant alternation starting with user, and mistral (v0.1) takes no system
  // message. Training renders (add_generation_prompt = false) must end with an assistant message;
  // with a generation prompt the last message must be from the user. Anything else, an empty
  // conversation or an unknown role is an ftune::Error that names the template and the message.
  // Adjacent spans alternate between trainable and not; none is empty.
  std::vector<RenderedSpan> render(const std::vector<ChatMessage>& msgs,
                                   bool add_generation_prompt = false) const;
  std::string render_text(const std::vector<ChatMessage>& msgs,
                          bool add_generation_prompt = false) const;

 private:
  enum class Kind { kChatml, kLlama3, kLlama2, kMistral, kAlpaca, kPlain };
  ChatTemplate(Kind kind, std::string name) : kind_(kind), name_(std::move(name)) {}
  void validate(const std::vector<ChatMessage>& msgs, bool add_generation_prompt) const;

  Kind kind_;
  std::string name_;
  std::string bos_;
  std::string eos_;
  std::optional<std::string> default_system_;
  std::string source_;  // file it came from; empty for a built-in
};

}  // namespace ftune
