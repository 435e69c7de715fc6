#include "engine/data/data_format.h"

#include <omp.h>

#include "engine/base/error.h"

namespace ftune {

DataFormat parse_data_format(const std::string& name) {
  if (name == "text") return DataFormat::Text;
  if (name == "instruction") return DataFormat::Instruction;
  if (name == "messages") return DataFormat::Messages;
  if (name == "preference") return DataFormat::Preference;
  throw Error("data.format: unknown format '" + name +
              "' (use text, instruction, messages or preference)");
}

namespace {

// Reads a string field; "" when fine, else the reason.
std::string get_string(const nlohmann::json& rec, const std::string& field, bool required,
                       std::string* out) {
  auto it = rec.find(field);
  if (it == rec.end() || it->is_null()) {
    if (required) return "no \"" + field + "\" field";
    out->clear();
    return "";
  }
  if (!it->is_string()) return "field \"" + field + "\" must be a string";
  *out = it->get<std::string>();
  return "";
}

std::string read_messages(const nlohmann::json& arr, const std::string& field,
                          const FormatOptions& o, std::vector<ChatMessage>* out) {
  if (!arr.is_array()) return "field \"" + field + "\" must be a list of messages";
  for (size_t i = 0; i < arr.size(); ++i) {
    const auto& m = arr[i];
    const std::string where = "\"" + field + "\"[" + std::to_string(i) + "]";
    if (!m.is_object()) return where + " must be an object";
    ChatMessage cm;
    if (auto why = get_string(m, o.role_field, true, &cm.role); !why.empty())
      return where + ": " + why;
    if (auto why = get_string(m, o.content_field, true, &cm.content); !why.empty())
      return where + ": " + why;
    if (auto r = o.role_map.find(cm.role); r != o.role_map.end()) cm.role = r->second;
    if (cm.role != "system" && cm.role != "user" && cm.role != "assistant")
      return where + ": unknown role '" + cm.role + "' (map it with data.role_map)";
    out->push_back(std::move(cm));
  }
  return "";
}

// Tokenizes rendered spans one by one so the loss mask follows span boundaries exactly.
void encode_spans(const std::vector<RenderedSpan>& spans, bool train_all, const Tokenizer& tok,
                  std::vector<int32_t>* ids, std::vector<uint8_t>* trainable) {
  for (const auto& sp : spans) {
    std::vector<int32_t> t = tok.encode(sp.text, false);
    ids->insert(ids->end(), t.begin(), t.end());
    trainable->insert(trainable->end(), t.size(), uint8_t(train_all || sp.trainable));
  }
}

}  // namespace

std::string format_record(const nlohmann::json& rec, const FormatOptions& o, const Tokenizer& tok,
                          const ChatTemplate* tmpl, std::vector<int32_t>* ids,
                          std::vector<uint8_t>* trainable) {
  ids->clear();
  trainable->clear();
  if (o.format == DataFormat::Text) {
    std::string text;
    if (auto why = get_string(rec, o.text_field, true, &text); !why.empty())
      return why + "; set data.text_field to the field holding the text";
    *ids = tok.encode(text, o.text_specials);
    if (tok.eos_id() >= 0) ids->push_back(tok.eos_id());
    trainable->assign(ids->size(), 1);
    return "";
  }
  FTUNE_CHECK(tmpl != nullptr, "a chat template is needed for this format");
  std::vector<ChatMessage> msgs;
  if (!o.system_prompt.empty()) msgs.push_back({"system", o.system_prompt});
  if (o.format == DataFormat::Instruction) {
    std::string instruction, input, output;
    for (auto [field, dst, required] :
         {std::tuple{&o.instruction_field, &instruction, true},
          std::tuple{&o.input_field, &input, false}, std::tuple{&o.output_field, &output, true}})
      if (auto why = get_string(rec, *field, required, dst); !why.empty()) return why;
    msgs.push_back({"user", input.empty() ? instruction : instruction + "\n\n" + input});
    msgs.push_back({"assistant", output});
  } else if (o.format == DataFormat::Messages) {
    auto it = rec.find(o.messages_field);
    if (it == rec.end()) return "no \"" + o.messages_field + "\" field";
    if (auto why = read_messages(*it, o.messages_field, o, &msgs); !why.empty()) return why;
  } else {  // preference: prompt (text or messages), chosen and rejected (text)
    auto p = rec.find(o.prompt_field);
    if (p == rec.end()) return "no \"" + o.prompt_field + "\" field";
    if (p->is_string()) {
      msgs.push_back({"user", p->get<std::string>()});
    } else if (auto why = read_messages(*p, o.prompt_field, o, &msgs); !why.empty()) {
      return why;
    }
    std::string chosen, rejected;
    if (auto why = get_string(rec, o.chosen_field, true, &chosen); !why.empty()) return why;
    if (auto why = get_string(rec, o.rejected_field, true, &rejected); !why.empty()) return why;
    if (chosen == rejected)
      return "\"" + o.chosen_field + "\" and \"" + o.rejected_field + "\" are identical";
    msgs.push_back({"assistant", chosen});
  }
  try {
    encode_spans(tmpl->render(msgs, false), o.train_on_inputs, tok, ids, trainable);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void append_samples(const std::string& path, const FormatOptions& opt, const Tokenizer& tok,
                    const ChatTemplate* tmpl, bool skip_bad, int threads, SampleSink* out,
                    BuildStats* stats, const BuildProgress& on_progress) {
  BuildStats local;
  BuildStats& st = stats ? *stats : local;
  // Records are gathered in batches and formatted in parallel; verdicts are applied in file
  // order afterwards, so errors and skip counts never depend on thread timing.
  constexpr size_t kBatch = 2048;
  std::vector<nlohmann::json> recs;
  std::vector<int64_t> lines;
  std::vector<std::string> malformed;  // per queued line: why it is not JSON ("" when it is)
  auto process = [&] {
    const size_t n = recs.size();
    std::vector<std::vector<int32_t>> ids(n);
    std::vector<std::vector<uint8_t>> masks(n);
    std::vector<std::string> why(n);
#pragma omp parallel for schedule(dynamic, 16) num_threads(std::max(1, threads))
    for (size_t i = 0; i < n; ++i)
      why[i] = malformed[i].empty() ? format_record(recs[i], opt, tok, tmpl, &ids[i], &masks[i])
                                    : malformed[i];
    for (size_t i = 0; i < n; ++i) {
      if (!why[i].empty()) {
        std::string where = path + ":" + std::to_string(lines[i]) + ": " + why[i];
        if (!skip_bad) throw Error(where + " (set data.skip_bad_lines: true to skip such lines)");
        st.jsonl.skipped++;
        if (st.jsonl.examples.size() < 5) st.jsonl.examples.push_back(where);
        continue;
      }
      st.jsonl.records++;
      st.samples++;
      st.tokens += int64_t(ids[i].size());
      for (uint8_t m : masks[i]) st.trainable_tokens += m;
      out->add(ids[i], masks[i]);
    }
    recs.clear();
    lines.clear();
    malformed.clear();
  };
  JsonlStats js;
  auto batch_done = [&] {
    process();
    if (on_progress) on_progress(st, js.bytes);
  };
  for_each_jsonl(
      path, skip_bad,
      [&](const nlohmann::json& j, int64_t line) {
        recs.push_back(j);
        lines.push_back(line);
        malformed.emplace_back();
        if (recs.size() == kBatch) batch_done();
        return std::string();
      },
      &js,
      [&](int64_t line, const std::string& why) {
        recs.emplace_back();
        lines.push_back(line);
        malformed.push_back(why);
        if (recs.size() == kBatch) batch_done();
      });
  batch_done();
  st.jsonl.lines += js.lines;
}

}  // namespace ftune
