#include <gtest/gtest.h>

#include <fstream>

#include "engine/base/error.h"
#include "engine/data/data_format.h"
#include "tests/test_util.h"

namespace ftune {
namespace {

const Tokenizer& tok() {
  static Tokenizer t =
      Tokenizer::load(std::string(FTUNE_SOURCE_DIR) + "/configs/models/quickstart-base");
  return t;
}

std::string decode_where(const std::vector<int32_t>& ids, const std::vector<uint8_t>& m,
                         bool want) {
  std::vector<int32_t> pick;
  for (size_t i = 0; i < ids.size(); ++i)
    if (bool(m[i]) == want) pick.push_back(ids[i]);
  return tok().decode(pick);
}

TEST(DataFormat, TextTrainsEveryTokenAndEndsWithEos) {
  FormatOptions o;
  std::vector<int32_t> ids;
  std::vector<uint8_t> m;
  ASSERT_EQ(format_record({{"text", "Plant: Basil"}}, o, tok(), nullptr, &ids, &m), "");
  auto plain = tok().encode("Plant: Basil");
  ASSERT_EQ(ids.size(), plain.size() + 1);
  EXPECT_EQ(ids.back(), tok().eos_id());
  EXPECT_EQ(m, std::vector<uint8_t>(ids.size(), 1));
  EXPECT_NE(format_record({{"body", "x"}}, o, tok(), nullptr, &ids, &m).find("data.text_field"),
            std::string::npos);
}

TEST(DataFormat, InstructionTrainsOnlyTheResponse) {
  FormatOptions o;
  o.format = DataFormat::Instruction;
  ChatTemplate t = ChatTemplate::builtin("chatml");
  nlohmann::json rec = {
      {"instruction", "Name a herb."}, {"input", "For pasta."}, {"output", "Basil."}};
  std::vector<int32_t> ids;
  std::vector<uint8_t> m;
  ASSERT_EQ(format_record(rec, o, tok(), &t, &ids, &m), "");
  std::vector<ChatMessage> msgs = {{"user", "Name a herb.\n\nFor pasta."}, {"assistant", "Basil."}};
  EXPECT_EQ(tok().decode(ids), t.render_text(msgs));
  std::string trained;
  for (const auto& sp : t.render(msgs))
    if (sp.trainable) trained += sp.text;
  EXPECT_EQ(decode_where(ids, m, true), trained);
  EXPECT_NE(trained.find("Basil."), std::string::npos);
  EXPECT_NE(decode_where(ids, m, false).find("Name a herb."), std::string::npos);
  EXPECT_EQ(decode_where(ids, m, false).find("Basil."), std::string::npos);

  o.train_on_inputs = true;
  ASSERT_EQ(format_record(rec, o, tok(), &t, &ids, &m), "");
  EXPECT_EQ(m, std::vector<uint8_t>(ids.size(), 1));
  EXPECT_EQ(format_record({{"instruction", "x"}}, o, tok(), &t, &ids, &m), "no \"output\" field");
}

TEST(DataFormat, MessagesWithRoleMapping) {
  FormatOptions o;
  o.format = DataFormat::Messages;
  o.messages_field = "conversations";
  o.role_field = "from";
  o.content_field = "value";
  o.role_map = {{"human", "user"}, {"gpt", "assistant"}};
  ChatTemplate t = ChatTemplate::builtin("chatml");
  nlohmann::json rec = {{"conversations",
                         {{{"from", "human"}, {"value", "Hi"}},
                          {{"from", "gpt"}, {"value", "Hello!"}},
                          {{"from", "human"}, {"value", "Water?"}},
                          {{"from", "gpt"}, {"value", "Weekly."}}}}};
  std::vector<int32_t> ids;
  std::vector<uint8_t> m;
  ASSERT_EQ(format_record(rec, o, tok(), &t, &ids, &m), "");
  std::string trained = decode_where(ids, m, true);
  EXPECT_NE(trained.find("Hello!"), std::string::npos);
  EXPECT_NE(trained.find("Weekly."), std::string::npos);
  EXPECT_EQ(trained.find("Water?"), std::string::npos);
  rec["conversations"][0]["from"] = "narrator";
  EXPECT_NE(format_record(rec, o, tok(), &t, &ids, &m).find("unknown role 'narrator'"),
            std::string::npos);
  nlohmann::json ends_with_user = {{"conversations", {{{"from", "human"}, {"value", "Hi"}}}}};
  EXPECT_NE(format_record(ends_with_user, o, tok(), &t, &ids, &m).find("chatml"), std::string::npos)
      << "a conversation the template cannot train on is rejected, naming the template";
}

TEST(DataFormat, PreferenceIsValidated) {
  FormatOptions o;
  o.format = DataFormat::Preference;
  ChatTemplate t = ChatTemplate::builtin("chatml");
  std::vector<int32_t> ids;
  std::vector<uint8_t> m;
  EXPECT_EQ(format_record({{"prompt", "Best herb?"}, {"chosen", "Basil."}, {"rejected", "Rocks."}},
                          o, tok(), &t, &ids, &m),
            "");
  EXPECT_NE(decode_where(ids, m, true).find("Basil."), std::string::npos);
  EXPECT_EQ(decode_where(ids, m, true).find("Rocks."), std::string::npos);
  EXPECT_EQ(format_record({{"prompt", "p"}, {"chosen", "a"}}, o, tok(), &t, &ids, &m),
            "no \"rejected\" field");
  EXPECT_NE(
      format_record({{"prompt", "p"}, {"chosen", "a"}, {"rejected", "a"}}, o, tok(), &t, &ids, &m)
          .find("identical"),
      std::string::npos);
}

TEST(DataFormat, AppendSamplesReportsOrSkipsBadRecords) {
  std::string path = testing::make_temp_dir("fmt") + "/d.jsonl";
  std::ofstream(path)
      << "{\"text\": \"one\"}\n{\"txt\": \"two\"}\nnot json\n{\"text\": \"three\"}\n";
  FormatOptions o;
  SampleSet s;
  try {
    append_samples(path, o, tok(), nullptr, false, 2, &s, nullptr);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("d.jsonl:2: no \"text\" field"), std::string::npos)
        << e.what();
  }
  SampleSet s2;
  BuildStats st;
  append_samples(path, o, tok(), nullptr, true, 2, &s2, &st);
  EXPECT_EQ(s2.size(), 2);
  EXPECT_EQ(st.samples, 2);
  EXPECT_EQ(st.jsonl.skipped, 2);
  EXPECT_EQ(st.tokens, int64_t(s2.tokens.size()));
  // Record order is kept whatever the thread count.
  EXPECT_EQ(tok().decode({s2.tokens.begin(), s2.tokens.begin() + s2.length(0) - 1}), "one");
}

}  // namespace
}  // namespace ftune
