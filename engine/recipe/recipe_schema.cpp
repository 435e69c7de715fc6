// The recipe schema: the single declaration of every recipe key, and the Markdown reference
// generated from it.
#include "engine/recipe/recipe_schema.h"

#include <charconv>
#include <sstream>

namespace ftune::recipe {
namespace {

std::optional<Limit> ge(double v) {
  return Limit{v, true};
}
std::optional<Limit> gt(double v) {
  return Limit{v, false};
}
std::optional<Limit> le(double v) {
  return Limit{v, true};
}
std::optional<Limit> lt(double v) {
  return Limit{v, false};
}

using C = RecipeConfig;
using D = DataSource;

// data.packing's names auto, stream, pack, pad, then true (pack) and false (pad).
EnumField packing_field() {
  return {[](const RecipeConfig& c) { return int(c.data_packing); },
          [](RecipeConfig& c, int i) {
            constexpr Packing kByName[] = {Packing::Auto, Packing::Stream, Packing::Pack,
                                           Packing::Pad,  Packing::Pack,   Packing::Pad};
            c.data_packing = kByName[i];
          }};
}

std::vector<KeySpec> build_schema() {
  return {
      // top level: the job
      {.key = "output_dir",
       .field = &C::output_dir,
       .doc = "the directory for checkpoints, metrics, the resolved recipe and the exported model",
       .required = true,
       .is_path = true},
      {.key = "seed",
       .field = &C::seed,
       .doc = "seed for shuffling, the validation split and random initialisation",
       .min = ge(0)},
      {.key = "device",
       .field = enum_field<&C::device>(),
       .doc = "where to train; auto picks CUDA when a usable GPU is present, else the CPU",
       .allowed = {"auto", "cpu", "cuda"}},
      {.key = "precision",
       .field = enum_field<&C::precision>(),
       .doc = "compute precision: bf16 runs linear layers, the LM head and attention on bf16 "
              "tensor cores with fp32 accumulation, fp32 master weights, optimizer state and "
              "loss (CUDA only); fp32 computes everything in fp32 (the CPU, or debugging on a "
              "GPU); auto is bf16 on CUDA and fp32 on the CPU",
       .allowed = {"auto", "fp32", "bf16"}},
      {.key = "threads",
       .field = &C::threads,
       .doc = "CPU worker threads; 0 uses every core",
       .min = ge(0),
       .run_control = true},
      {.key = "sharding",
       .field = enum_field<&C::sharding>(),
       .doc = "ZeRO stage across ranks: none keeps everything whole on every rank; zero1 splits "
              "the AdamW state (each rank updates its slice, then the weights are all-gathered); "
              "zero2 also keeps only a slice of the gradients (reduce-scattered layer by layer "
              "during backward); zero3 also splits the weights (each layer gathered just before "
              "use and freed after); zero2/zero3 are for method: full",
       .allowed = {"none", "zero1", "zero2", "zero3"}},
      {.key = "method",
       .field = enum_field<&C::method>(),
       .doc = "full trains every weight; lora freezes the base and trains low-rank adapters",
       .allowed = {"full", "lora"}},
      // dist
      {.key = "dist.timeout",
       .field = &C::dist_timeout,
       .doc = "seconds a collective between ranks may wait before the job is ended (a rank died "
              "or hangs); keep it above the time a checkpoint takes to write; 0 waits forever",
       .min = ge(0),
       .run_control = true},
      {.key = "dist.overlap",
       .field = &C::dist_overlap,
       .doc = "sharding zero2/zero3: reduce each layer's gradients while the next layer's "
              "backward runs, and (zero3) gather the next layer's weights while the current one "
              "computes; costs one more layer of gradients (and weights) per rank, gives the "
              "same results",
       .run_control = true},
      // model
      {.key = "model.path",
       .field = &C::model_path,
       .doc = "the Hugging Face model directory to fine-tune",
       .required = true,
       .is_path = true},
      {.key = "model.init",
       .field = enum_field<&C::model_init>(),
       .doc =
           "pretrained loads the weights; random draws them from the seed (training from scratch)",
       .allowed = {"pretrained", "random"}},
      {.key = "model.key_file",
       .field = &C::model_key_file,
       .doc = "key file (64 hex characters) of a base model whose weights are encrypted",
       .is_path = true},
      {.key = "model.key_env",
       .field = &C::model_key_env,
       .doc = "as model.key_file, the key read from this environment variable"},
      // lora
      {.key = "lora.rank",
       .field = &C::lora_rank,
       .doc = "rank r of each adapter (A is r x in, B is out x r)",
       .min = ge(1)},
      {.key = "lora.alpha",
       .field = &C::lora_alpha,
       .doc = "adapter scale numerator: the update is (alpha / r) B A",
       .min = gt(0)},
      {.key = "lora.dropout",
       .field = &C::lora_dropout,
       .doc = "dropout on each adapter's input while training",
       .min = ge(0),
       .max = lt(1)},
      {.key = "lora.targets",
       .field = &C::lora_targets,
       .doc = "linears that get adapters: a list of q_proj, k_proj, v_proj, o_proj, gate_proj, "
              "up_proj, down_proj, or all-linear",
       .name_list = true},
      {.key = "lora.init",
       .field = enum_field<&C::lora_init>(),
       .doc = "A's initialisation (B starts at zero): kaiming uniform as PEFT, or gaussian "
              "N(0, 1/r)",
       .allowed = {"kaiming", "gaussian"}},
      {.key = "lora.rslora",
       .field = &C::lora_rslora,
       .doc = "rank-stabilised scale alpha / sqrt(r) instead of alpha / r"},
      // data
      {.key = "data.train",
       .field = &C::data_train,
       .doc = "the training set: a JSONL file with one document per line, or a list of "
              "weighted datasets",
       .required = true,
       .is_path = true,
       .source_list = true},
      {.key = "data.validation",
       .field = &C::data_validation,
       .doc =
           "validation JSONL file; when empty, data.val_fraction of the training set is held out",
       .is_path = true},
      {.key = "data.val_fraction",
       .field = &C::data_val_fraction,
       .doc = "share of training documents held out for validation when data.validation is empty",
       .min = ge(0),
       .max = lt(1)},
      {.key = "data.text_field",
       .field = &C::data_text_field,
       .doc = "the JSON field of each line that holds the document text",
       .per_source = &D::text_field},
      {.key = "data.shuffle",
       .field = &C::data_shuffle,
       .doc = "shuffle the training documents every epoch"},
      {.key = "data.format",
       .field = enum_field<&C::data_format>(),
       .doc = "record format: text (completion), instruction (instruction/input/output), "
              "messages (chat), preference (prompt/chosen/rejected; trained as SFT on chosen: "
              "ftune has no preference objective)",
       .allowed = {"text", "instruction", "messages", "preference"},
       .per_source = &D::format},
      {.key = "data.packing",
       .field = packing_field(),
       .doc = "stream cuts concatenated text into blocks; pack (or true) packs whole samples into "
              "rows with per-sample attention; pad (or false) puts one sample per row; auto is "
              "stream for text, pack otherwise",
       .allowed = {"auto", "stream", "pack", "pad", "true", "false"}},
      {.key = "data.chat_template",
       .field = enum_field<&C::data_chat_template>(),
       .doc = "template for instruction/messages/preference data: auto uses the model's own "
              "(alpaca for instruction data when it has none) or a built-in name",
       .allowed = {"auto", "chatml", "llama3", "llama2", "mistral", "alpaca", "plain"}},
      {.key = "data.train_on_inputs",
       .field = &C::data_train_on_inputs,
       .doc = "also train on prompts and user turns (by default only responses are trained)",
       .per_source = &D::train_on_inputs},
      {.key = "data.overlong",
       .field = enum_field<&C::data_overlong>(),
       .doc = "samples longer than train.seq_len are truncated or dropped (counts are reported)",
       .allowed = {"truncate", "drop"}},
      {.key = "data.bucket",
       .field = &C::data_bucket,
       .doc = "padded layout: batch samples of similar length and pad each batch only to its "
              "longest sample"},
      {.key = "data.skip_bad_lines",
       .field = &C::data_skip_bad_lines,
       .doc = "skip and count malformed lines and records instead of stopping at the first"},
      {.key = "data.instruction_field",
       .field = &C::data_instruction_field,
       .doc = "instruction format: the field holding the instruction",
       .per_source = &D::instruction_field},
      {.key = "data.input_field",
       .field = &C::data_input_field,
       .doc = "instruction format: the optional field holding extra input",
       .per_source = &D::input_field},
      {.key = "data.output_field",
       .field = &C::data_output_field,
       .doc = "instruction format: the field holding the response",
       .per_source = &D::output_field},
      {.key = "data.messages_field",
       .field = &C::data_messages_field,
       .doc = "messages format: the field holding the list of messages",
       .per_source = &D::messages_field},
      {.key = "data.role_field",
       .field = &C::data_role_field,
       .doc = "messages format: the field of each message holding its role",
       .per_source = &D::role_field},
      {.key = "data.content_field",
       .field = &C::data_content_field,
       .doc = "messages format: the field of each message holding its text",
       .per_source = &D::content_field},
      {.key = "data.system_prompt",
       .field = &C::data_system_prompt,
       .doc = "a system message put before every instruction/messages/preference sample",
       .per_source = &D::system_prompt},
      {.key = "data.cache",
       .field = &C::data_cache,
       .doc = "keep tokenized samples on disk, reused while data, tokenizer and settings match"},
      {.key = "data.cache_dir",
       .field = &C::data_cache_dir,
       .doc = "where the tokenized-sample cache lives; empty: $XDG_CACHE_HOME/ftune/data",
       .is_path = true},
      // train
      {.key = "train.seq_len",
       .field = &C::seq_len,
       .doc = "tokens per row; documents are packed into rows of this length",
       .min = ge(1)},
      {.key = "train.micro_batch_size",
       .field = &C::micro_batch_size,
       .doc = "rows per forward/backward pass",
       .min = ge(1)},
      {.key = "train.grad_accum",
       .field = &C::grad_accum,
       .doc = "micro-batches whose gradients are summed per optimizer step",
       .min = ge(1)},
      {.key = "train.global_batch_size",
       .field = &C::global_batch_size,
       .doc = "rows per optimizer step across all ranks; when set, train.grad_accum is derived "
              "from it (global / (micro_batch_size x ranks)), so the same recipe gives the same "
              "training on any number of ranks and a checkpoint resumes on a different count; "
              "0 uses train.grad_accum",
       .min = ge(0)},
      {.key = "train.max_steps",
       .field = &C::max_steps,
       .doc = "optimizer steps to run; 0 runs train.epochs instead",
       .min = ge(0)},
      {.key = "train.epochs",
       .field = &C::epochs,
       .doc = "passes over the training set (fractions allowed) when train.max_steps is 0",
       .min = gt(0)},
      {.key = "train.recompute",
       .field = enum_field<&C::recompute>(),
       .doc = "activations backward recomputes instead of keeping: none, mlp (the SwiGLU output) "
              "or full (each layer from its input; about one more forward of compute)",
       .allowed = {"none", "mlp", "full"}},
      // optim
      {.key = "optim.lr", .field = &C::lr, .doc = "peak AdamW learning rate", .min = gt(0)},
      {.key = "optim.beta1",
       .field = &C::beta1,
       .doc = "AdamW decay rate of the gradient average",
       .min = ge(0),
       .max = lt(1)},
      {.key = "optim.beta2",
       .field = &C::beta2,
       .doc = "AdamW decay rate of the squared-gradient average",
       .min = ge(0),
       .max = lt(1)},
      {.key = "optim.eps",
       .field = &C::eps,
       .doc = "AdamW term added to the denominator for stability",
       .min = gt(0)},
      {.key = "optim.weight_decay",
       .field = &C::weight_decay,
       .doc = "decoupled weight decay",
       .min = ge(0)},
      {.key = "optim.clip",
       .field = &C::clip,
       .doc = "global gradient-norm clipping threshold; 0 turns clipping off",
       .min = ge(0)},
      {.key = "optim.decay_norms_and_biases",
       .field = &C::decay_norms_and_biases,
       .doc = "also apply weight decay to norm weights and biases"},
      {.key = "optim.decay_embeddings",
       .field = &C::decay_embeddings,
       .doc = "also apply weight decay to the token embedding table"},
      // schedule
      {.key = "schedule.kind",
       .field = enum_field<&C::schedule_kind>(),
       .doc = "learning-rate decay from optim.lr after warmup",
       .allowed = {"constant", "linear", "cosine"}},
      {.key = "schedule.warmup_steps",
       .field = &C::warmup_steps,
       .doc = "steps of linear warmup from 0 to optim.lr; must be below train.max_steps",
       .min = ge(0)},
      {.key = "schedule.min_lr_ratio",
       .field = &C::min_lr_ratio,
       .doc = "learning rate at the end of a linear or cosine decay, as a fraction of optim.lr",
       .min = ge(0),
       .max = le(1)},
      // eval
      {.key = "eval.every",
       .field = &C::eval_every,
       .doc = "measure the validation loss every N steps; 0 only before and after training",
       .min = ge(0),
       .run_control = true},
      {.key = "eval.max_batches",
       .field = &C::eval_max_batches,
       .doc = "micro-batches per evaluation; 0 uses the whole validation set",
       .min = ge(0),
       .run_control = true},
      // checkpoint
      {.key = "checkpoint.every",
       .field = &C::checkpoint_every,
       .doc = "save a resumable checkpoint every N steps; 0 only at the end",
       .min = ge(0),
       .run_control = true},
      {.key = "checkpoint.keep_last",
       .field = &C::checkpoint_keep_last,
       .doc = "how many of the most recent checkpoints to keep on disk; 0 keeps all",
       .min = ge(0),
       .run_control = true},
      {.key = "checkpoint.on_error",
       .field = enum_field<&C::checkpoint_on_error>(),
       .doc = "a checkpoint that cannot be written (disk full, file-size limit, read-only or "
              "unwritable directory) leaves the previous one and `latest` intact; stop ends the "
              "run with the error (resume with --resume once fixed), continue logs it (and a "
              "metrics.jsonl entry) and keeps training, the next checkpoint trying again",
       .allowed = {"stop", "continue"},
       .run_control = true},
      // guard
      {.key = "guard.nonfinite",
       .field = enum_field<&C::guard_nonfinite>(),
       .doc = "a step whose loss or gradient norm is NaN or infinite: skip leaves the weights and "
              "optimizer state as they were (the step's data is consumed), stop ends the run, "
              "rollback reloads the last checkpoint (or the initial state) and multiplies the "
              "learning rate by guard.lr_backoff; each is logged and written to metrics.jsonl",
       .allowed = {"skip", "stop", "rollback"},
       .run_control = true},
      {.key = "guard.spike_zscore",
       .field = &C::guard_spike_zscore,
       .doc = "a step whose loss is more than this many standard deviations above the mean of "
              "the last guard.spike_window steps is a spike, handled per guard.spike; 0 turns "
              "spike detection off",
       .min = ge(0),
       .run_control = true},
      {.key = "guard.spike_window",
       .field = &C::guard_spike_window,
       .doc = "accepted steps whose losses the spike z-score is taken over; detection starts "
              "once the window is full",
       .min = ge(2),
       .run_control = true},
      {.key = "guard.spike",
       .field = enum_field<&C::guard_spike>(),
       .doc = "what a loss spike does: skip, stop or rollback, as guard.nonfinite",
       .allowed = {"skip", "stop", "rollback"},
       .run_control = true},
      {.key = "guard.lr_backoff",
       .field = &C::guard_lr_backoff,
       .doc = "factor the learning rate is multiplied by at each rollback, for the rest of the "
              "run (kept in checkpoints, so a resume keeps it)",
       .min = gt(0),
       .max = le(1),
       .run_control = true},
      {.key = "guard.max_rollbacks",
       .field = &C::guard_max_rollbacks,
       .doc = "rollbacks allowed in one run; the next bad step then stops it",
       .min = ge(0),
       .run_control = true},
      // export
      {.key = "export.dtype",
       .field = enum_field<&C::export_dtype>(),
       .doc = "dtype of the exported safetensors; auto keeps the base model's",
       .allowed = {"auto", "f32", "bf16", "f16"},
       .run_control = true},
      {.key = "export.max_shard_mb",
       .field = &C::export_max_shard_mb,
       .doc = "largest exported safetensors shard, in MB",
       .min = ge(1),
       .run_control = true},
      {.key = "export.merge",
       .field = &C::export_merge,
       .doc = "method lora: also write the base with the adapters merged in, to output_dir/model",
       .run_control = true},
      {.key = "export.sign_key",
       .field = &C::export_sign_key,
       .doc = "Ed25519 private key (PEM, from ftune keygen --sign) that signs ftune-manifest.json",
       .is_path = true,
       .run_control = true},
      {.key = "export.encrypt.key_file",
       .field = &C::export_encrypt_key_file,
       .doc = "encrypt every weight file written (checkpoints and outputs) with AES-256-GCM under "
              "the key in this file (64 hex characters, from ftune keygen --encrypt)",
       .is_path = true},
      {.key = "export.encrypt.key_env",
       .field = &C::export_encrypt_key_env,
       .doc = "as export.encrypt.key_file, the key read from this environment variable"},
      // generate
      {.key = "generate.prompt",
       .field = &C::generate_prompt,
       .doc = "text the trained model continues after training; empty skips the sample",
       .run_control = true},
      {.key = "generate.max_new_tokens",
       .field = &C::generate_max_new_tokens,
       .doc = "tokens generated after generate.prompt",
       .min = ge(1),
       .run_control = true},
      {.key = "generate.temperature",
       .field = &C::generate_temperature,
       .doc = "sampling temperature; 0 is greedy decoding",
       .min = ge(0),
       .run_control = true},
      {.key = "generate.top_p",
       .field = &C::generate_top_p,
       .doc = "nucleus sampling: sample from the smallest token set with this total probability",
       .min = gt(0),
       .max = le(1),
       .run_control = true},
      // log
      {.key = "log.every",
       .field = &C::log_every,
       .doc = "steps between plain progress lines when the output is not a terminal",
       .min = ge(1),
       .run_control = true},
      // report
      {.key = "report.every",
       .field = &C::report_every,
       .doc = "also rewrite output_dir/report.html every N steps; 0 writes it only when the run "
              "ends (docs/report.md)",
       .min = ge(0),
       .run_control = true},
  };
}

std::vector<SectionSpec> build_sections() {
  return {
      {"", "Top-level keys", "Settings of the run as a whole."},
      {"dist", "dist", "Several ranks (ftune launch, srun): how long collectives may wait."},
      {"model", "model", "The model to start from."},
      {"lora", "lora", "Low-rank adapters, used when `method: lora`."},
      {"data", "data", "Training and validation documents."},
      {"train", "train", "Batch shape and run length."},
      {"optim", "optim", "AdamW hyper-parameters."},
      {"schedule", "schedule", "Learning-rate schedule."},
      {"eval", "eval", "Validation during training."},
      {"checkpoint", "checkpoint", "Resumable checkpoints."},
      {"guard", "guard", "Numeric guards: what a non-finite or spiking step does."},
      {"export", "export", "The fine-tuned model written to `output_dir` at the end."},
      {"generate", "generate", "A sample continuation shown after training."},
      {"log", "log", "Progress output."},
      {"report", "report", "The HTML report, output_dir/report.html (`ftune report`)."},
  };
}

// Markdown table cells cannot hold a raw '|'.
std::string md_cell(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '|') out += '\\';
    out += c;
  }
  return out;
}

std::string md_code(std::string_view s) {
  return "`" + md_cell(s) + "`";
}

}  // namespace

std::string_view KeySpec::section() const {
  size_t dot = key.find('.');
  return dot == std::string_view::npos ? std::string_view() : key.substr(0, dot);
}

const std::vector<KeySpec>& schema() {
  static const std::vector<KeySpec> table = build_schema();
  return table;
}

const std::vector<SectionSpec>& sections() {
  static const std::vector<SectionSpec> table = build_sections();
  return table;
}

const KeySpec* find_key(std::string_view key) {
  for (const KeySpec& k : schema())
    if (k.key == key) return &k;
  return nullptr;
}

const KeySpec* find_source_key(std::string_view name) {
  for (const KeySpec& k : schema())
    if (k.per_source.index() != 0 && k.key.substr(k.key.rfind('.') + 1) == name) return &k;
  return nullptr;
}

std::vector<std::string_view> source_entry_keys() {
  std::vector<std::string_view> names = {"path", "weight"};
  for (const KeySpec& k : schema())
    if (k.per_source.index() != 0) names.push_back(k.key.substr(k.key.rfind('.') + 1));
  return names;
}

bool is_section(std::string_view name) {
  if (name.empty()) return false;
  for (const SectionSpec& s : sections())
    if (s.name == name) return true;
  // A group inside a section (export.encrypt holds export.encrypt.key_file): a map there too.
  for (const KeySpec& k : schema())
    if (k.key.size() > name.size() && k.key.substr(0, name.size()) == name &&
        k.key[name.size()] == '.')
      return true;
  return false;
}

std::string_view type_name(const KeySpec& k) {
  switch (k.type()) {
    case ValueType::kString:
      if (k.source_list) return "path or list";
      return k.is_path ? "path" : "string";
    case ValueType::kEnum:
      return "string";  // one of the allowed names
    case ValueType::kInt:
      return "int";
    case ValueType::kFloat:
      return "float";
    case ValueType::kBool:
      return "bool";
  }
  return "?";
}

std::string format_double(double v) {
  // Both spellings are the shortest that read back exactly; people read 0.0003 more easily
  // than 3e-4, but not 0.00000001 more easily than 1e-8.
  char buf[400];
  auto fixed = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::fixed);
  std::string f(buf, fixed.ptr);
  auto sci = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  std::string s(buf, sci.ptr);
  // "1e-08" -> "1e-8", "5e+03" -> "5e3".
  size_t e = s.find('e');
  if (e != std::string::npos) {
    std::string mant = s.substr(0, e), exp = s.substr(e + 1);
    bool neg = !exp.empty() && exp[0] == '-';
    if (!exp.empty() && (exp[0] == '-' || exp[0] == '+')) exp.erase(0, 1);
    exp.erase(0, std::min(exp.find_first_not_of('0'), exp.size() - 1));
    s = mant + "e" + (neg ? "-" : "") + exp;
  }
  if (f.size() > s.size() + 2 || fixed.ec != std::errc()) return s;
  // A float key shows as a float ("1.0", not "1"), which also keeps YAML readers from
  // taking it for an integer.
  if (f.find_first_of(".ni") == std::string::npos) f += ".0";
  return f;
}

std::string value_text(const KeySpec& k, const RecipeConfig& cfg) {
  if (const EnumField* e = std::get_if<EnumField>(&k.field))
    return std::string(k.allowed[size_t(e->index(cfg))]);
  return std::visit(
      [&](auto member) -> std::string {
        if constexpr (std::is_same_v<decltype(member), EnumField>) {
          return "";  // handled above
        } else {
          const auto& v = cfg.*member;
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, std::string>) {
            return v;
          } else if constexpr (std::is_same_v<T, bool>) {
            return v ? "true" : "false";
          } else if constexpr (std::is_same_v<T, double>) {
            return format_double(v);
          } else {
            return std::to_string(v);
          }
        }
      },
      k.field);
}

std::string constraint_text(const KeySpec& k) {
  if (!k.allowed.empty()) {
    std::string s;
    for (size_t i = 0; i < k.allowed.size(); ++i) {
      if (i) s += ", ";
      s += k.allowed[i];
    }
    return s;
  }
  // Limits are round numbers: the plainest spelling reads best for int and float keys alike.
  auto num = [](double v) {
    char buf[64];
    return std::string(buf, std::to_chars(buf, buf + sizeof(buf), v).ptr);
  };
  if (k.min && k.max) {
    return std::string(k.min->inclusive ? "[" : "(") + num(k.min->value) + ", " +
           num(k.max->value) + (k.max->inclusive ? "]" : ")");
  }
  if (k.min) return (k.min->inclusive ? ">= " : "> ") + num(k.min->value);
  if (k.max) return (k.max->inclusive ? "<= " : "< ") + num(k.max->value);
  return "";
}

}  // namespace ftune::recipe

namespace ftune {

std::string recipe_schema_markdown() {
  using recipe::KeySpec;
  const RecipeConfig defaults;
  std::ostringstream md;
  md << "# Recipe reference\n\n"
        "<!-- Generated from engine/recipe/recipe_schema.cpp by `ftune recipe-docs > "
        "docs/recipes.md`; "
        "do not edit by hand. -->\n\n"
        "A recipe is a YAML file describing one fine-tuning run. Keys are grouped in sections: "
        "the nested map `train: {seq_len: 256}` sets the key `train.seq_len`, and so does the "
        "dotted form `train.seq_len: 256`. Keys left out take the defaults below; unknown keys, "
        "wrong types and out-of-range values are errors that name the file, line and column.\n\n"
        "Any key can be overridden on the command line with `key=value` arguments after the "
        "recipe file, for example `ftune train recipe.yaml train.max_steps=20 optim.lr=1e-4 "
        "data.shuffle=false`. Overrides are checked against the same schema.\n\n"
        "Relative paths (keys of type `path`) written in the recipe file resolve against the "
        "directory that contains the file; relative paths given as overrides resolve against "
        "the current working directory. `ftune train --print-config` prints the fully resolved "
        "recipe (every key, absolute paths, overrides applied) as YAML that can be saved and "
        "used as a recipe.\n\n"
        "A run resumes (`--resume`, `--auto-resume`) only with the training settings it started "
        "with. Keys marked *(run)* below say how the run is watched, logged, checkpointed and "
        "exported rather than what it computes; they may change when it resumes (the change is "
        "printed and `recipe.yaml` updated).\n";
  for (const recipe::SectionSpec& sec : recipe::sections()) {
    md << "\n## " << sec.title << "\n\n" << sec.doc << "\n\n";
    md << "| key | type | default | allowed / range | description |\n";
    md << "|---|---|---|---|---|\n";
    for (const KeySpec& k : recipe::schema()) {
      if (k.section() != sec.name) continue;
      std::string def = recipe::value_text(k, defaults);
      std::string def_cell = k.required    ? "*required*"
                             : def.empty() ? "*empty*"
                                           : recipe::md_code(def);
      std::string range = recipe::constraint_text(k);
      if (!k.allowed.empty()) {
        range.clear();
        for (size_t i = 0; i < k.allowed.size(); ++i) {
          if (i) range += ", ";
          range += recipe::md_code(k.allowed[i]);
        }
      } else {
        range = recipe::md_cell(range);
      }
      md << "| " << recipe::md_code(k.key) << " | " << recipe::type_name(k) << " | " << def_cell
         << " | " << range << " | " << (k.run_control ? "*(run)* " : "") << recipe::md_cell(k.doc)
         << " |\n";
    }
    for (const KeySpec& k : recipe::schema()) {
      if (k.section() != sec.name || !k.source_list) continue;
      std::string keys;
      const std::vector<std::string_view> names = recipe::source_entry_keys();
      for (size_t i = 2; i < names.size(); ++i)
        keys += (i > 2 ? ", " : "") + recipe::md_code(names[i]);
      md << "\n`" << k.key << "` may also be a list of datasets, each a map with a required "
         << "`path`, an optional `weight` (> 0, default 1.0) and any of " << keys
         << ", which default to the `data.*` key of the same name. Every epoch takes "
            "round(weight x samples) samples from each dataset: the whole set once per unit of "
            "weight, plus a subset for the fraction, drawn anew each epoch from the seed. "
            "`data.val_fraction` is held out of each dataset. The `stream` layout concatenates "
            "the documents of every dataset, each repeated by its weight, so it needs whole-number "
            "weights (use `pack` or `pad` for fractions).\n\n"
            "```yaml\ndata:\n  train:\n    - {path: chat.jsonl, format: messages, weight: 2.0}\n"
            "    - {path: notes.jsonl, format: text}\n```\n";
    }
  }
  return md.str();
}

}  // namespace ftune
