// Chat template rendering and recognition of a model's own Jinja chat_template. Rendering is
// hand-written per format (no Jinja interpreter): each mirrors the reference template in
// tests/fixtures/chat_templates/make_fixtures.py character for character.
#include "engine/text/chat_template.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>
#include <utility>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/base/json_limits.h"

namespace ftune {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

const char* const kBuiltinList = "chatml, llama3, llama2, mistral, alpaca, plain";

// ---- Python str.strip() -------------------------------------------------------------------
// Jinja's trim filter and str.strip() both remove what Python's str.isspace() accepts: Unicode
// White_Space plus the ASCII separators U+001C..U+001F, so a content ending in U+3000 loses it.

bool py_isspace(char32_t c) {
  if ((c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20)) return true;
  if (c < 0x85) return false;
  return c == 0x85 || c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 ||
         c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

// Decodes the UTF-8 sequence of exactly `len` bytes at s[i]; false when it is not one.
bool decode_exact(std::string_view s, size_t i, size_t len, char32_t* cp) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  if (i + len > s.size()) return false;
  if (len == 1) {
    if (b(0) >= 0x80) return false;
    *cp = b(0);
    return true;
  }
  static constexpr unsigned char kLeadMask[5] = {0, 0, 0x1f, 0x0f, 0x07};
  static constexpr unsigned char kLeadTag[5] = {0, 0, 0xc0, 0xe0, 0xf0};
  if ((b(0) & ~kLeadMask[len]) != kLeadTag[len]) return false;
  char32_t c = b(0) & kLeadMask[len];
  for (size_t k = 1; k < len; ++k) {
    if ((b(k) & 0xc0) != 0x80) return false;
    c = (c << 6) | (b(k) & 0x3f);
  }
  static constexpr char32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (c < kMin[len] || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return false;
  *cp = c;
  return true;
}

std::string py_strip(std::string_view s) {
  size_t begin = 0, end = s.size();
  while (begin < end) {
    size_t len = 0;
    char32_t cp = 0;
    for (size_t n = 1; n <= 4 && !len; ++n)
      if (decode_exact(s.substr(0, end), begin, n, &cp)) len = n;
    if (!len || !py_isspace(cp)) break;
    begin += len;
  }
  while (end > begin) {
    size_t len = 0;
    char32_t cp = 0;
    for (size_t n = 1; n <= 4 && n <= end - begin && !len; ++n)
      if (decode_exact(s, end - n, n, &cp)) len = n;
    if (!len || !py_isspace(cp)) break;
    end -= len;
  }
  return std::string(s.substr(begin, end - begin));
}

// Collects spans, merging neighbours with the same flag and dropping empty text.
class SpanWriter {
 public:
  void add(std::string_view text, bool trainable = false) {
    if (text.empty()) return;
    if (!spans_.empty() && spans_.back().trainable == trainable)
      spans_.back().text += text;
    else
      spans_.push_back({std::string(text), trainable});
  }
  std::vector<RenderedSpan> take() { return std::move(spans_); }

 private:
  std::vector<RenderedSpan> spans_;
};

// ---- Jinja source scanning ----------------------------------------------------------------
// Recognition looks at what a template can emit: its decoded string literals and raw text, and
// its code (outside literals, whitespace removed) for filters and variables such as "|trim" or
// "bos_token". Enough to tell the known shapes and their variants apart without running Jinja.

struct JinjaScan {
  std::vector<std::string> literals;
  std::string code;

  bool lit_contains(std::string_view s) const {
    return std::any_of(literals.begin(), literals.end(),
                       [&](const std::string& l) { return l.find(s) != std::string::npos; });
  }
  bool lit_equals(std::string_view s) const {
    return std::find(literals.begin(), literals.end(), s) != literals.end();
  }
  bool code_has(std::string_view s) const { return code.find(s) != std::string::npos; }
};

bool is_blank(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
  });
}

// Reads the literal whose opening quote is at src[*i]; leaves *i after the closing quote.
std::string read_literal(std::string_view src, size_t* i) {
  char quote = src[*i];
  std::string out;
  size_t k = *i + 1;
  for (; k < src.size() && src[k] != quote; ++k) {
    if (src[k] != '\\' || k + 1 >= src.size()) {
      out.push_back(src[k]);
      continue;
    }
    char e = src[++k];
    switch (e) {
      case 'n':
        out.push_back('\n');
        break;
      case 't':
        out.push_back('\t');
        break;
      case 'r':
        out.push_back('\r');
        break;
      case '\\':
      case '\'':
      case '"':
        out.push_back(e);
        break;
      default:
        out.push_back('\\');
        out.push_back(e);
    }
  }
  *i = std::min(k + 1, src.size());
  return out;
}

JinjaScan scan_jinja(std::string_view src) {
  JinjaScan scan;
  std::string text;
  auto flush_text = [&] {
    if (!is_blank(text)) scan.literals.push_back(text);
    text.clear();
  };
  size_t i = 0;
  while (i < src.size()) {
    if (src.compare(i, 2, "{#") == 0) {
      flush_text();
      size_t end = src.find("#}", i + 2);
      i = end == std::string_view::npos ? src.size() : end + 2;
      continue;
    }
    if (src.compare(i, 2, "{{") != 0 && src.compare(i, 2, "{%") != 0) {
      text.push_back(src[i++]);
      continue;
    }
    flush_text();
    const char* close = src[i + 1] == '{' ? "}}" : "%}";
    i += 2;
    while (i < src.size() && src.compare(i, 2, close) != 0) {
      char c = src[i];
      if (c == '\'' || c == '"') {
        scan.literals.push_back(read_literal(src, &i));
        scan.code += "''";
      } else {
        if (!is_blank(std::string_view(&c, 1))) scan.code.push_back(c);
        ++i;
      }
    }
    i = std::min(i + 2, src.size());
    scan.code.push_back(';');
  }
  flush_text();
  return scan;
}

// ---- tokenizer_config.json ----------------------------------------------------------------

// A special token entry: a string, or an AddedToken object {"content": ...}; null -> none.
std::optional<std::string> token_text(const json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto c = it->find("content");
    if (c != it->end() && c->is_string()) return c->get<std::string>();
  }
  return std::nullopt;
}

json parse_json_file(const std::string& path) {
  json j;
  try {
    j = parse_json_bounded(read_file(path), path);
  } catch (const json::exception& e) {
    throw Error(path + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object()) throw Error(path + ": expected a JSON object at the top level");
  return j;
}

std::string set_builtin_hint() {
  return std::string("set data.chat_template to a built-in name (") + kBuiltinList +
         ") to choose the format explicitly";
}

// The chat_template value of tokenizer_config.json.
std::string template_from_config(const json& cfg, const std::string& path) {
  auto it = cfg.find("chat_template");
  if (it == cfg.end() || it->is_null())
    throw Error(path + " has no chat_template (and there is no chat_template.jinja beside it): " +
                set_builtin_hint());
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    std::string names;
    for (const json& entry : *it) {
      if (!entry.is_object()) continue;
      auto name = entry.find("name");
      auto tmpl = entry.find("template");
      if (name == entry.end() || !name->is_string()) continue;
      if (*name == "default" && tmpl != entry.end() && tmpl->is_string())
        return tmpl->get<std::string>();
      names += (names.empty() ? "" : ", ") + name->get<std::string>();
    }
    throw Error(path + ": chat_template lists no \"default\" template (found: " +
                (names.empty() ? std::string("none") : names) + "); " + set_builtin_hint());
  }
  throw Error(path + ": chat_template must be a string or a list of {name, template}; " +
              set_builtin_hint());
}

// What recognition learned from a template beyond its format.
struct Recognised {
  std::string name;
  bool uses_bos_var = false;
  bool uses_eos_var = false;
  std::string bos_literal;  // BOS written literally instead of through bos_token
  std::string eos_literal;
  std::optional<std::string> default_system;
};

Recognised recognise(const std::string& source, const std::string& path) {
  JinjaScan s = scan_jinja(source);
  Recognised r;
  auto unsupported = [&](const std::string& why) {
    return Error(path + ": the chat_template looks like " + r.name + " but " + why +
                 ", so ftune cannot reproduce its output exactly; " + set_builtin_hint() + ".");
  };
  auto require = [&](std::string_view lit, const std::string& what) {
    if (!s.lit_contains(lit)) throw unsupported("it has no " + what);
  };
  bool strips = s.code_has("|trim") || s.code_has(".strip()");

  if (s.lit_contains("<|start_header_id|>") && s.lit_contains("<|eot_id|>")) {
    r.name = "llama3";
  } else if (s.lit_contains("<|im_start|>") && s.lit_contains("<|im_end|>")) {
    r.name = "chatml";
  } else if (s.lit_contains("<<SYS>>") && s.lit_contains("[INST]")) {
    r.name = "llama2";
  } else if (s.lit_contains("[INST]") && s.lit_contains("[/INST]")) {
    r.name = "mistral";
  } else if (s.lit_contains("### Instruction:") && s.lit_contains("### Response:")) {
    r.name = "alpaca";
  } else {
    throw Error(path +
                ": the chat_template is not one ftune recognises (it knows the chatml, "
                "llama3, llama2, mistral and alpaca formats); " +
                set_builtin_hint() + ".");
  }
  if (s.lit_contains("<think>") || s.code_has("enable_thinking") || s.code_has("reasoning_content"))
    throw unsupported("it renders reasoning (<think>) blocks");
  r.uses_bos_var = s.code_has("bos_token");
  r.uses_eos_var = s.code_has("eos_token");

  if (r.name == "llama3") {
    if (s.lit_contains("Cutting Knowledge Date") || s.code_has("strftime_now") ||
        s.code_has("date_string"))
      throw unsupported("it adds a dated system header (Llama 3.1 and later)");
    require("<|start_header_id|>assistant<|end_header_id|>\n\n",
            "'<|start_header_id|>assistant<|end_header_id|>\\n\\n' generation prompt");
    if (!strips) throw unsupported("it does not trim message content");
    if (!r.uses_bos_var && s.lit_contains("<|begin_of_text|>")) r.bos_literal = "<|begin_of_text|>";
  } else if (r.name == "chatml") {
    require("<|im_start|>assistant\n", "'<|im_start|>assistant\\n' generation prompt");
    // A default system prompt is one literal "<|im_start|>system\n...<|im_end|>\n". A template
    // that compares roles with "system" without one decides something ftune cannot see.
    const std::string head = "<|im_start|>system\n", tail = "<|im_end|>\n";
    std::set<std::string> defaults;
    for (const std::string& l : s.literals)
      if (l.size() >= head.size() + tail.size() && l.starts_with(head) && l.ends_with(tail))
        defaults.insert(l.substr(head.size(), l.size() - head.size() - tail.size()));
    if (defaults.size() > 1) throw unsupported("it chooses between several default system prompts");
    if (defaults.size() == 1) {
      r.default_system = *defaults.begin();
    } else if (s.lit_equals("system")) {
      throw unsupported("it treats system messages specially in a way ftune cannot read");
    }
  } else if (r.name == "llama2") {
    require("[INST] ", "'[INST] ' literal");
    require(" [/INST]", "' [/INST]' literal");
    require("<<SYS>>\n", "'<<SYS>>\\n' literal");
    require("\n<</SYS>>\n\n", "'\\n<</SYS>>\\n\\n' literal");
    if (!strips) throw unsupported("it does not strip message content");
    // Early Llama 2 templates could switch a built-in default system prompt on.
    std::string lower = s.code;
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (lower.find("default_system") != std::string::npos ||
        lower.find("use_default_prompt") != std::string::npos)
      throw unsupported("it can inject a default system prompt");
  } else if (r.name == "mistral") {
    for (const char* tok :
         {"[SYSTEM_PROMPT]", "[AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[TOOL_RESULTS]"})
      if (s.lit_contains(tok))
        throw unsupported(std::string("it uses ") + tok + " (a later Mistral format)");
    if (s.lit_contains(" [INST]"))
      throw unsupported("it writes a space before [INST] (a later Mistral template revision)");
    if (std::none_of(s.literals.begin(), s.literals.end(),
                     [](const std::string& l) { return l.starts_with("[INST] "); }))
      throw unsupported("it has no '[INST] ' literal");
    require(" [/INST]", "' [/INST]' literal");
    if (strips)
      throw unsupported("it strips message content, which Mistral-7B-Instruct v0.1 does not");
  } else {  // alpaca
    require("### Instruction:\n", "'### Instruction:\\n' literal");
    require("\n\n### Response:\n", "'\\n\\n### Response:\\n' literal");
  }
  if (r.name == "llama2" || r.name == "mistral") {
    if (!r.uses_bos_var && s.lit_contains("<s>")) r.bos_literal = "<s>";
    if (!r.uses_eos_var && s.lit_contains("</s>")) r.eos_literal = "</s>";
  }
  if ((r.name == "llama2" || r.name == "mistral" || r.name == "alpaca") && !r.uses_eos_var &&
      r.eos_literal.empty())
    throw unsupported("it does not end assistant turns with eos_token");
  return r;
}

}  // namespace

const std::vector<std::string>& ChatTemplate::builtin_names() {
  static const std::vector<std::string> names = {"chatml",  "llama3", "llama2",
                                                 "mistral", "alpaca", "plain"};
  return names;
}

ChatTemplate ChatTemplate::builtin(const std::string& name, const ChatSpecialTokens& tokens) {
  static const std::pair<const char*, Kind> kKinds[] = {
      {"chatml", Kind::kChatml},   {"llama3", Kind::kLlama3}, {"llama2", Kind::kLlama2},
      {"mistral", Kind::kMistral}, {"alpaca", Kind::kAlpaca}, {"plain", Kind::kPlain}};
  for (const auto& [n, kind] : kKinds) {
    if (name != n) continue;
    ChatTemplate t(kind, name);
    // ChatML writes neither token and Llama 3 ends turns with <|eot_id|>, never the EOS.
    if (kind != Kind::kChatml)
      t.bos_ = tokens.bos.value_or(kind == Kind::kLlama3 ? "<|begin_of_text|>" : "<s>");
    if (kind != Kind::kChatml && kind != Kind::kLlama3) t.eos_ = tokens.eos.value_or("</s>");
    bool ends_with_eos = kind != Kind::kChatml && kind != Kind::kLlama3;
    if (ends_with_eos && t.eos_.empty())
      throw Error("chat template '" + name +
                  "' ends every assistant response with the EOS token, but the EOS text given is "
                  "empty (the tokenizer defines no eos_token)");
    return t;
  }
  throw Error("unknown chat template '" + name + "': the built-in ones are " + kBuiltinList);
}

ChatTemplate ChatTemplate::from_tokenizer_config(const std::string& model_dir) {
  std::string dir = model_dir, config_path;
  std::error_code ec;
  if (fs::is_regular_file(model_dir, ec)) {
    config_path = model_dir;
    dir = fs::path(model_dir).parent_path().string();
    if (dir.empty()) dir = ".";
  } else {
    if (!fs::is_directory(model_dir, ec))
      throw Error(model_dir + ": no such model directory or tokenizer_config.json");
    config_path = (fs::path(dir) / "tokenizer_config.json").string();
  }
  // Newer transformers versions save the template beside the config, and it then wins; a
  // tokenizer_config.json named explicitly is read on its own.
  std::string jinja_path;
  if (config_path != model_dir) jinja_path = (fs::path(dir) / "chat_template.jinja").string();
  bool have_config = path_exists(config_path);
  json cfg = have_config ? parse_json_file(config_path) : json::object();

  std::string source, source_path;
  if (!jinja_path.empty() && path_exists(jinja_path)) {
    source = read_file(jinja_path);
    source_path = jinja_path;
  } else if (have_config) {
    source = template_from_config(cfg, config_path);
    source_path = config_path;
  } else {
    throw Error(dir +
                " has neither chat_template.jinja nor tokenizer_config.json to read the "
                "model's chat template from; " +
                set_builtin_hint());
  }
  Recognised r = recognise(source, source_path);

  json map = json::object();
  std::string map_path = (fs::path(dir) / "special_tokens_map.json").string();
  if (path_exists(map_path)) map = parse_json_file(map_path);
  auto special = [&](const char* key) {
    std::optional<std::string> v = token_text(cfg, key);
    if (!v && !cfg.contains(key)) v = token_text(map, key);
    return v.value_or("");
  };

  Kind kind = r.name == "chatml"    ? Kind::kChatml
              : r.name == "llama3"  ? Kind::kLlama3
              : r.name == "llama2"  ? Kind::kLlama2
              : r.name == "mistral" ? Kind::kMistral
                                    : Kind::kAlpaca;
  ChatTemplate t(kind, r.name);
  t.bos_ = r.uses_bos_var ? special("bos_token") : r.bos_literal;
  t.eos_ = r.uses_eos_var ? special("eos_token") : r.eos_literal;
  if (t.kind_ == Kind::kChatml || t.kind_ == Kind::kLlama3) t.eos_.clear();
  if (t.kind_ == Kind::kChatml) t.bos_.clear();
  if (t.kind_ != Kind::kChatml && t.kind_ != Kind::kLlama3 && t.eos_.empty())
    throw Error(source_path + ": the " + r.name +
                " chat template ends assistant turns with eos_token, but " +
                (have_config ? config_path : dir) + " sets no eos_token");
  t.default_system_ = r.default_system;
  t.source_ = source_path;
  return t;
}

std::string ChatTemplate::describe() const {
  std::string d = "chat template '" + name_ + "'";
  if (!source_.empty()) d += " (from " + source_ + ")";
  return d;
}

void ChatTemplate::validate(const std::vector<ChatMessage>& msgs, bool gen) const {
  auto fail = [&](const std::string& why) { return Error(describe() + ": " + why); };
  auto at = [](size_t i) { return "messages[" + std::to_string(i) + "]"; };
  if (msgs.empty()) throw fail("the conversation is empty");
  for (size_t i = 0; i < msgs.size(); ++i) {
    const std::string& role = msgs[i].role;
    if (role != "system" && role != "user" && role != "assistant")
      throw fail(at(i) + " has role '" + role +
                 "'; only 'system', 'user' and 'assistant' can be rendered");
    if (role == "system" && kind_ == Kind::kMistral)
      throw fail(at(i) +
                 " is a system message, which the Mistral-7B-Instruct v0.1 format has no place "
                 "for: merge it into the first user message or use a template with system "
                 "prompts (chatml, llama3, llama2)");
    if (role == "system" && i != 0)
      throw fail(at(i) + " is a system message; a system message may only come first");
  }
  bool alternating = kind_ == Kind::kLlama2 || kind_ == Kind::kMistral || kind_ == Kind::kAlpaca;
  if (alternating) {
    size_t first = msgs[0].role == "system" ? 1 : 0;
    for (size_t i = first; i < msgs.size(); ++i) {
      const char* want = (i - first) % 2 == 0 ? "user" : "assistant";
      if (msgs[i].role != want)
        throw fail(at(i) + " has role '" + msgs[i].role + "' where '" + want +
                   "' was expected: this format needs the turns to alternate user/assistant, "
                   "starting with user");
    }
  }
  const std::string& last = msgs.back().role;
  if (gen && last != "user")
    throw fail("the conversation ends with a '" + last +
               "' message, but a generation prompt needs it to end with a user message");
  if (!gen && last != "assistant")
    throw fail("the conversation ends with a '" + last +
               "' message; a training example must end with an assistant response");
}

std::vector<RenderedSpan> ChatTemplate::render(const std::vector<ChatMessage>& msgs,
                                               bool gen) const {
  validate(msgs, gen);
  SpanWriter w;
  bool has_system = msgs[0].role == "system";
  switch (kind_) {
    case Kind::kChatml:
      if (default_system_ && !has_system)
        w.add("<|im_start|>system\n" + *default_system_ + "<|im_end|>\n");
      for (const ChatMessage& m : msgs) {
        w.add("<|im_start|>" + m.role + "\n");
        if (m.role == "assistant") {
          w.add(m.content + "<|im_end|>", true);
          w.add("\n");
        } else {
          w.add(m.content + "<|im_end|>\n");
        }
      }
      if (gen) w.add("<|im_start|>assistant\n");
      break;
    case Kind::kLlama3:
      w.add(bos_);
      for (const ChatMessage& m : msgs) {
        w.add("<|start_header_id|>" + m.role + "<|end_header_id|>\n\n");
        w.add(py_strip(m.content) + "<|eot_id|>", m.role == "assistant");
      }
      if (gen) w.add("<|start_header_id|>assistant<|end_header_id|>\n\n");
      break;
    case Kind::kLlama2:
      // The system block joins the first user message before stripping, as in the reference.
      for (size_t i = has_system ? 1 : 0; i < msgs.size(); ++i) {
        const ChatMessage& m = msgs[i];
        if (m.role == "user") {
          std::string content = m.content;
          if (has_system && i == 1)
            content = "<<SYS>>\n" + msgs[0].content + "\n<</SYS>>\n\n" + content;
          w.add(bos_ + "[INST] " + py_strip(content) + " [/INST]");
        } else {
          w.add(" " + py_strip(m.content) + " " + eos_, true);
        }
      }
      break;
    case Kind::kMistral:
      w.add(bos_);
      for (const ChatMessage& m : msgs) {
        if (m.role == "user")
          w.add("[INST] " + m.content + " [/INST]");
        else
          w.add(m.content + eos_, true);
      }
      break;
    case Kind::kAlpaca:
      w.add(bos_);
      if (has_system) w.add(msgs[0].content + "\n\n");
      for (size_t i = has_system ? 1 : 0; i < msgs.size(); ++i) {
        const ChatMessage& m = msgs[i];
        if (m.role == "user") {
          if (i > (has_system ? 1u : 0u)) w.add("\n\n");
          w.add("### Instruction:\n" + m.content + "\n\n### Response:\n");
        } else {
          w.add(m.content + eos_, true);
        }
      }
      break;
    case Kind::kPlain:
      w.add(bos_);
      for (size_t i = 0; i < msgs.size(); ++i) {
        if (i > 0) w.add("\n");
        if (msgs[i].role == "assistant")
          w.add(msgs[i].content + eos_, true);
        else
          w.add(msgs[i].content);
      }
      if (gen) w.add("\n");
      break;
  }
  return w.take();
}

std::string ChatTemplate::render_text(const std::vector<ChatMessage>& msgs, bool gen) const {
  std::string out;
  for (const RenderedSpan& s : render(msgs, gen)) out += s.text;
  return out;
}

}  // namespace ftune
