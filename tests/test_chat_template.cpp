// Chat templates against transformers: fixtures/chat_templates/cases.json holds, for each format,
// the text apply_chat_template(tokenize=False) produced from ftune's reference Jinja templates and
// the byte ranges its {% generation %} tracking marked as assistant output (make_fixtures.py).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "engine/base/error.h"
#include "engine/base/fs_util.h"
#include "engine/text/chat_template.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

using json = nlohmann::json;
using Ranges = std::vector<std::pair<size_t, size_t>>;

std::string fixture(const std::string& rel) {
  return testing::fixtures_dir() + "/chat_templates/" + rel;
}

const json& suites() {
  static const json j = json::parse(read_file(fixture("cases.json")))["suites"];
  return j;
}

std::vector<ChatMessage> messages_of(const json& j) {
  std::vector<ChatMessage> out;
  for (const json& m : j)
    out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  return out;
}

std::optional<std::string> opt_string(const json& j) {
  if (j.is_null()) return std::nullopt;
  return j.get<std::string>();
}

ChatSpecialTokens tokens_of(const json& suite) {
  // An absent token is unset in the HF tokenizer and renders as "".
  ChatSpecialTokens t;
  t.bos = opt_string(suite["bos_token"]).value_or("");
  t.eos = opt_string(suite["eos_token"]).value_or("");
  return t;
}

Ranges trainable_ranges(const std::vector<RenderedSpan>& spans) {
  Ranges out;
  size_t pos = 0;
  for (const RenderedSpan& s : spans) {
    if (s.trainable) out.emplace_back(pos, pos + s.text.size());
    pos += s.text.size();
  }
  return out;
}

std::string concat(const std::vector<RenderedSpan>& spans) {
  std::string out;
  for (const RenderedSpan& s : spans) out += s.text;
  return out;
}

// Compares every case of a suite: the text byte for byte, the trainable ranges, and the shape
// of the span list. Returns the number of cases checked.
size_t check_suite(const ChatTemplate& t, const json& suite, const std::string& label) {
  size_t n = 0;
  for (const json& c : suite["cases"]) {
    std::vector<ChatMessage> msgs = messages_of(c["messages"]);
    bool gen = c["add_generation_prompt"].get<bool>();
    std::string where = label + " case " + std::to_string(n) + ": " + c["messages"].dump();
    std::vector<RenderedSpan> spans = t.render(msgs, gen);
    EXPECT_EQ(concat(spans), c["text"].get<std::string>()) << where;
    EXPECT_EQ(t.render_text(msgs, gen), c["text"].get<std::string>()) << where;
    Ranges want;
    for (const json& r : c["trainable"]) want.emplace_back(r[0].get<size_t>(), r[1].get<size_t>());
    EXPECT_EQ(trainable_ranges(spans), want) << where;
    for (size_t i = 0; i < spans.size(); ++i) {
      EXPECT_FALSE(spans[i].text.empty()) << where;
      if (i > 0) {
        EXPECT_NE(spans[i].trainable, spans[i - 1].trainable) << where;
      }
    }
    ++n;
  }
  return n;
}

TEST(ChatTemplate, BuiltinsMatchTransformers) {
  size_t total = 0;
  for (const auto& [name, suite] : suites().items()) {
    if (suite["builtin"].is_null()) continue;
    SCOPED_TRACE(name);
    ChatTemplate t = ChatTemplate::builtin(suite["builtin"].get<std::string>(), tokens_of(suite));
    EXPECT_EQ(t.name(), suite["builtin"].get<std::string>());
    size_t n = check_suite(t, suite, name);
    EXPECT_GE(n, 10u);
    total += n;
  }
  EXPECT_GE(total, 150u);
}

// The fixtures use each format's usual tokens, so the defaults must reproduce them.
TEST(ChatTemplate, BuiltinDefaultTokens) {
  for (const char* name : {"chatml", "llama3", "llama2", "mistral", "alpaca"}) {
    SCOPED_TRACE(name);
    check_suite(ChatTemplate::builtin(name), suites()[name], name);
  }
  EXPECT_EQ(ChatTemplate::builtin("llama3").bos(), "<|begin_of_text|>");
  EXPECT_EQ(ChatTemplate::builtin("llama3").eos(), "");
  EXPECT_EQ(ChatTemplate::builtin("chatml").bos(), "");
  EXPECT_EQ(ChatTemplate::builtin("plain").eos(), "</s>");
}

TEST(ChatTemplate, ReferenceRejectionsAreErrors) {
  size_t n = 0;
  for (const auto& [name, suite] : suites().items()) {
    if (suite["builtin"].is_null()) continue;
    ChatTemplate t = ChatTemplate::builtin(suite["builtin"].get<std::string>(), tokens_of(suite));
    for (const json& conv : suite["rejects"]) {
      try {
        t.render(messages_of(conv));
        ADD_FAILURE() << name << " rendered " << conv.dump();
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("chat template '" + t.name() + "'"), std::string::npos)
            << e.what();
      }
      ++n;
    }
  }
  EXPECT_GE(n, 15u);
}

// Trainable spans are exactly the assistant turns: the (stripped, for the formats that strip)
// content followed by the end-of-turn text, one span per assistant message, in order.
TEST(ChatTemplate, TrainableSpansAreAssistantTurns) {
  struct Expect {
    const char* name;
    const char* prefix;
    const char* end;
    bool strips;
  };
  const Expect formats[] = {{"chatml", "", "<|im_end|>", false}, {"llama3", "", "<|eot_id|>", true},
                            {"llama2", " ", " </s>", true},      {"mistral", "", "</s>", false},
                            {"alpaca", "", "</s>", false},       {"plain", "", "</s>", false}};
  std::vector<ChatMessage> msgs = {{"user", "Hi"},
                                   {"assistant", "  Hello there \n"},
                                   {"user", "Again"},
                                   {"assistant", "Sure: <|im_end|> stays text"}};
  for (const Expect& f : formats) {
    SCOPED_TRACE(f.name);
    std::vector<RenderedSpan> spans = ChatTemplate::builtin(f.name).render(msgs);
    std::vector<std::string> got;
    for (const RenderedSpan& s : spans)
      if (s.trainable) got.push_back(s.text);
    std::string a1 = f.strips ? "Hello there" : "  Hello there \n";
    ASSERT_EQ(got.size(), 2u);
    EXPECT_EQ(got[0], f.prefix + a1 + f.end);
    EXPECT_EQ(got[1], std::string(f.prefix) + "Sure: <|im_end|> stays text" + f.end);
    for (const RenderedSpan& s : spans) {
      if (!s.trainable) {
        EXPECT_EQ(s.text.find("Hello"), std::string::npos) << s.text;
      }
    }
  }
  // History turns stay trainable with a generation prompt, as transformers marks them.
  std::vector<ChatMessage> prompt(msgs.begin(), msgs.begin() + 3);
  auto spans = ChatTemplate::builtin("chatml").render(prompt, true);
  ASSERT_EQ(spans.size(), 3u);
  EXPECT_TRUE(spans[1].trainable);
  EXPECT_EQ(spans[2].text, "\n<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, FromTokenizerConfigRecognisesFixtures) {
  size_t n = 0;
  for (const auto& [name, suite] : suites().items()) {
    if (suite["tokenizer_config"].is_null()) continue;
    SCOPED_TRACE(name);
    std::string dir = fixture(suite["tokenizer_config"].get<std::string>());
    ChatTemplate t = ChatTemplate::from_tokenizer_config(dir);
    std::string want = suite["builtin"].is_null() ? "chatml" : suite["builtin"].get<std::string>();
    EXPECT_EQ(t.name(), want);
    EXPECT_NE(t.describe().find(dir + "/tokenizer_config.json"), std::string::npos);
    check_suite(t, suite, name);
    // The tokenizer_config.json path itself works as well.
    EXPECT_EQ(ChatTemplate::from_tokenizer_config(dir + "/tokenizer_config.json").name(), want);
    ++n;
  }
  EXPECT_EQ(n, 7u);
  ChatTemplate qwen = ChatTemplate::from_tokenizer_config(fixture("chatml_default_system"));
  ASSERT_TRUE(qwen.default_system().has_value());
  EXPECT_EQ(*qwen.default_system(), "You are Tiny. Answer in the user's language.");
  EXPECT_FALSE(ChatTemplate::from_tokenizer_config(fixture("chatml")).default_system());
  ChatTemplate no_bos = ChatTemplate::from_tokenizer_config(fixture("alpaca_no_bos"));
  EXPECT_EQ(no_bos.bos(), "");
  EXPECT_EQ(no_bos.eos(), "<|endoftext|>");
}

// ---- tokenizer_config variants written to temp dirs ----------------------------------------

json fixture_config(const std::string& name) {
  return json::parse(read_file(fixture(name + "/tokenizer_config.json")));
}

std::string write_config(const json& cfg, const std::string& tag) {
  std::string dir = testing::make_temp_dir("chat-" + tag);
  std::ofstream(dir + "/tokenizer_config.json") << cfg.dump();
  return dir;
}

std::string write_template(const std::string& tmpl, const std::string& tag) {
  json cfg = {{"chat_template", tmpl}, {"bos_token", "<s>"}, {"eos_token", "</s>"}};
  return write_config(cfg, tag);
}

std::string config_error(const std::string& dir) {
  try {
    ChatTemplate::from_tokenizer_config(dir);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// A fixture's template with every occurrence of `from` replaced.
std::string edited(const std::string& name, const std::string& from, const std::string& to) {
  std::string t = fixture_config(name)["chat_template"].get<std::string>();
  size_t n = 0;
  for (size_t at = t.find(from); at != std::string::npos; at = t.find(from, at + to.size()), ++n)
    t.replace(at, from.size(), to);
  EXPECT_GT(n, 0u) << from;
  return t;
}

TEST(ChatTemplate, UnknownTemplateIsRejectedWithAdvice) {
  std::string gemma =
      "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\\n' "
      "+ message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}";
  std::string dir = write_template(gemma, "unknown");
  std::string err = config_error(dir);
  EXPECT_NE(err.find(dir + "/tokenizer_config.json"), std::string::npos) << err;
  EXPECT_NE(err.find("not one ftune recognises"), std::string::npos) << err;
  EXPECT_NE(err.find("data.chat_template"), std::string::npos) << err;
  EXPECT_NE(err.find("chatml, llama3, llama2, mistral, alpaca, plain"), std::string::npos) << err;
}

TEST(ChatTemplate, VariantsThatRenderDifferentlyAreRejected) {
  struct Case {
    std::string tag, tmpl, why;
  };
  const Case cases[] = {
      {"llama31",
       edited("llama3", "{%- for message",
              "{{- 'Cutting Knowledge Date: December 2023' -}}{%- for message"),
       "dated system header"},
      {"llama3-notrim", edited("llama3", "| trim", ""), "does not trim"},
      {"think",
       edited("chatml", "'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n<think>\\n'"),
       "reasoning"},
      {"chatml-sys",
       edited("chatml", "message['role'] == 'assistant'",
              "message['role'] == 'assistant' or message['role'] == 'system'"),
       "system messages specially"},
      {"mistral-space", edited("mistral", "'[INST] '", "' [INST] '"), "space before [INST]"},
      {"mistral-strip",
       edited("mistral", "message['content'] + eos_token",
              "message['content'].strip() + eos_token"),
       "strips message content"},
      {"mistral-tools",
       edited("mistral", "{{- bos_token -}}", "{{- bos_token + '[AVAILABLE_TOOLS]' -}}"),
       "[AVAILABLE_TOOLS]"},
      {"llama2-nostrip", edited("llama2", ".strip()", ""), "does not strip"},
      {"llama2-default",
       edited("llama2", "{%- set system_message = none -%}",
              "{%- if USE_DEFAULT_PROMPT -%}{%- set system_message = 'Be safe.' -%}{%- endif -%}"),
       "default system prompt"},
      {"alpaca-noeos", edited("alpaca", "message['content'] + eos_token", "message['content']"),
       "eos_token"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.tag);
    std::string err = config_error(write_template(c.tmpl, c.tag));
    EXPECT_NE(err.find("looks like"), std::string::npos) << err;
    EXPECT_NE(err.find(c.why), std::string::npos) << err;
    EXPECT_NE(err.find("data.chat_template"), std::string::npos) << err;
  }
}

TEST(ChatTemplate, ConfigForms) {
  json chatml = fixture_config("chatml");
  std::string tmpl = chatml["chat_template"].get<std::string>();

  // A list of named templates: "default" is used.
  json listed = chatml;
  listed["chat_template"] = json::array({{{"name", "tool_use"}, {"template", "{{ tools }}"}},
                                         {{"name", "default"}, {"template", tmpl}}});
  EXPECT_EQ(ChatTemplate::from_tokenizer_config(write_config(listed, "list")).name(), "chatml");
  listed["chat_template"].erase(1);
  std::string err = config_error(write_config(listed, "list-nodefault"));
  EXPECT_NE(err.find("no \"default\""), std::string::npos) << err;
  EXPECT_NE(err.find("tool_use"), std::string::npos) << err;

  // chat_template.jinja beside the config wins over the config's template.
  std::string dir = write_config(chatml, "jinja");
  std::ofstream(dir + "/chat_template.jinja")
      << fixture_config("llama3")["chat_template"].get<std::string>();
  ChatTemplate t = ChatTemplate::from_tokenizer_config(dir);
  EXPECT_EQ(t.name(), "llama3");
  EXPECT_NE(t.describe().find("chat_template.jinja"), std::string::npos);
  EXPECT_EQ(ChatTemplate::from_tokenizer_config(dir + "/tokenizer_config.json").name(), "chatml");

  // No template at all, and no such directory.
  json none = chatml;
  none.erase("chat_template");
  std::string none_dir = write_config(none, "none");
  err = config_error(none_dir);
  EXPECT_NE(err.find(none_dir + "/tokenizer_config.json has no chat_template"), std::string::npos)
      << err;
  EXPECT_NE(err.find("data.chat_template"), std::string::npos) << err;
  err = config_error("/nonexistent/model");
  EXPECT_NE(err.find("/nonexistent/model"), std::string::npos) << err;
  std::string bad = testing::make_temp_dir("chat-badjson");
  std::ofstream(bad + "/tokenizer_config.json") << "{\"chat_template\": ";
  EXPECT_NE(config_error(bad).find("not valid JSON"), std::string::npos);

  // AddedToken objects for the special tokens; special_tokens_map.json as the fallback.
  json llama2 = fixture_config("llama2");
  llama2["bos_token"] = {{"__type", "AddedToken"}, {"content", "<B>"}, {"lstrip", false}};
  llama2.erase("eos_token");
  std::string l2 = write_config(llama2, "added");
  std::ofstream(l2 + "/special_tokens_map.json") << R"({"eos_token": "<E>"})";
  ChatTemplate lt = ChatTemplate::from_tokenizer_config(l2);
  EXPECT_EQ(lt.render_text({{"user", "q"}, {"assistant", "a"}}), "<B>[INST] q [/INST] a <E>");

  // A format that ends turns with eos_token needs one.
  json mistral = fixture_config("mistral");
  mistral["eos_token"] = nullptr;
  err = config_error(write_config(mistral, "noeos"));
  EXPECT_NE(err.find("sets no eos_token"), std::string::npos) << err;
}

std::string render_error(const ChatTemplate& t, const std::vector<ChatMessage>& msgs,
                         bool gen = false) {
  try {
    t.render(msgs, gen);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(ChatTemplate, RenderErrorsNameTemplateAndProblem) {
  ChatTemplate chatml = ChatTemplate::builtin("chatml");
  ChatTemplate llama2 = ChatTemplate::builtin("llama2");
  ChatTemplate mistral = ChatTemplate::builtin("mistral");
  struct Case {
    const ChatTemplate* t;
    std::vector<ChatMessage> msgs;
    bool gen;
    std::string want;
  };
  const Case cases[] = {
      {&chatml, {}, false, "chat template 'chatml': the conversation is empty"},
      {&chatml,
       {{"user", "u"}, {"tool", "t"}, {"assistant", "a"}},
       false,
       "messages[1] has role 'tool'"},
      {&chatml,
       {{"user", "u"}, {"system", "s"}, {"assistant", "a"}},
       false,
       "messages[1] is a system message; a system message may only come first"},
      {&mistral,
       {{"system", "s"}, {"user", "u"}, {"assistant", "a"}},
       false,
       "chat template 'mistral': messages[0] is a system message"},
      {&llama2,
       {{"system", "s"}, {"assistant", "a"}},
       false,
       "chat template 'llama2': messages[1] has role 'assistant' where 'user' was expected"},
      {&llama2,
       {{"user", "u"}, {"assistant", "a"}, {"assistant", "b"}},
       false,
       "messages[2] has role 'assistant' where 'user' was expected"},
      {&chatml, {{"user", "u"}}, false, "must end with an assistant response"},
      {&chatml, {{"user", "u"}, {"assistant", "a"}}, true, "needs it to end with a user message"},
      {&chatml, {{"system", "s"}}, true, "ends with a 'system' message"},
  };
  for (const Case& c : cases) {
    std::string err = render_error(*c.t, c.msgs, c.gen);
    EXPECT_NE(err.find(c.want), std::string::npos) << err;
  }
  // Free-order formats take what the alternating ones refuse.
  EXPECT_NO_THROW(chatml.render({{"assistant", "a"}, {"user", "u"}, {"user", "v"}}, true));

  std::string err;
  try {
    ChatTemplate::builtin("vicuna");
  } catch (const Error& e) {
    err = e.what();
  }
  EXPECT_NE(err.find("unknown chat template 'vicuna'"), std::string::npos) << err;
  EXPECT_NE(err.find("chatml, llama3, llama2, mistral, alpaca, plain"), std::string::npos) << err;
  err.clear();
  try {
    ChatTemplate::builtin("alpaca", {.bos = "", .eos = ""});
  } catch (const Error& e) {
    err = e.what();
  }
  EXPECT_NE(err.find("'alpaca'"), std::string::npos) << err;
  EXPECT_NE(err.find("EOS"), std::string::npos) << err;
  EXPECT_EQ(ChatTemplate::builtin_names().size(), 6u);
}

// Stripping follows Python's str.isspace and leaves bytes that are not UTF-8 alone.
TEST(ChatTemplate, StripIsPythonStrip) {
  ChatTemplate t = ChatTemplate::builtin("llama3", {.bos = "", .eos = std::nullopt});
  auto body = [&](const std::string& content) {
    std::string text = t.render_text({{"assistant", content}});
    std::string head = "<|start_header_id|>assistant<|end_header_id|>\n\n";
    EXPECT_EQ(text.rfind(head, 0), 0u) << text;
    return text.substr(head.size(), text.size() - head.size() - std::string("<|eot_id|>").size());
  };
  EXPECT_EQ(body("\x1f\u2028 x\u00a0y \u3000\u205f"), "x\u00a0y");
  EXPECT_EQ(body("\u200bx\u200b"), "\u200bx\u200b");  // zero-width space is not whitespace
  EXPECT_EQ(body("\xff \t"), "\xff");
  EXPECT_EQ(body(" \xe3\x80"), "\xe3\x80");  // truncated sequence
  EXPECT_EQ(body(" \t\n "), "");
  EXPECT_EQ(body("\xc2\x85z\xc2"), "z\xc2");  // U+0085 is space; a lone lead byte is not
}

}  // namespace
}  // namespace ftune
