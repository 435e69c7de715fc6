// A fine-tune recipe: YAML file + `a.b=c` command-line overrides -> one resolved RecipeConfig.
// The schema (key, type, default, allowed values, doc) is declared once in recipe_schema.cpp;
// validation, --print-config, did-you-mean suggestions and docs/recipes.md all derive from it.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ftune {

// One entry of a `data.train` list: a JSONL file, its mixing weight (each epoch takes
// round(weight x its samples) from it) and the data.* settings it overrides; unset fields take
// the recipe's data.<same key>.
// The recipe's choices, typed from the moment the recipe loads: the schema (recipe_schema.cpp)
// maps each key's YAML names to these, so no code past loading compares strings. An enum's value
// is the index of its name in the key's `allowed` list.
enum class ModelInit { Pretrained, Random };
enum class Method { Full, Lora };
enum class LoraInit { Kaiming, Gaussian };
enum class Packing { Auto, Stream, Pack, Pad };  // YAML true and false mean pack and pad
enum class Overlong { Truncate, Drop };
enum class Recompute { None, Mlp, Full };
enum class ScheduleKind { Constant, Linear, Cosine };
enum class OnCheckpointError { Stop, Continue };
enum class GuardPolicy { Skip, Stop, Rollback };
enum class ExportDtype { Auto, F32, Bf16, F16 };
enum class PrecisionSetting { Auto, Fp32, Bf16 };
enum class Sharding { None, Zero1, Zero2, Zero3 };
enum class DeviceSetting { Auto, Cpu, Cuda };
enum class DataFormat { Text, Instruction, Messages, Preference };
// data.chat_template: the model's own (auto) or one of the builtin templates by name.
enum class ChatTemplateChoice { Auto, Chatml, Llama3, Llama2, Mistral, Alpaca, Plain };
constexpr Sharding kAllShardings[] = {Sharding::None, Sharding::Zero1, Sharding::Zero2,
                                      Sharding::Zero3};

// The names recipes write (and outputs such as summary.json record).
const char* method_name(Method m);                     // full | lora
const char* sharding_name(Sharding s);                 // none | zero1 | zero2 | zero3
const char* recompute_name(Recompute r);               // none | mlp | full
const char* data_format_name(DataFormat f);            // text | instruction | messages | preference
const char* chat_template_name(ChatTemplateChoice t);  // auto | chatml | llama3 | ...

struct DataSource {
  std::string path;
  double weight = 1.0;
  std::optional<DataFormat> format;
  std::optional<std::string> text_field, instruction_field, input_field, output_field,
      messages_field, role_field, content_field, system_prompt;
  std::optional<bool> train_on_inputs;

  bool has_overrides() const;  // any field besides path and weight set
  bool operator==(const DataSource&) const = default;
};

struct RecipeConfig {
  // model
  std::string model_path;  // model.path: HF directory (config.json, safetensors, tokenizer.json)
  ModelInit model_init = ModelInit::Pretrained;  // model.init: pretrained | random (scratch)
  std::string model_key_file;    // model.key_file: key of an encrypted base model (64 hex chars)
  std::string model_key_env;     // model.key_env: variable holding that key
  Method method = Method::Full;  // method: full | lora
  // lora (method: lora)
  int64_t lora_rank = 8;                                     // lora.rank
  double lora_alpha = 16.0;                                  // lora.alpha
  double lora_dropout = 0.0;                                 // lora.dropout
  std::string lora_targets = "q_proj,k_proj,v_proj,o_proj";  // lora.targets (list or a,b,c)
  LoraInit lora_init = LoraInit::Kaiming;                    // lora.init: kaiming | gaussian
  bool lora_rslora = false;                                  // lora.rslora
  // data
  std::string data_train;                // data.train: JSONL file (the first source's path)
  std::vector<DataSource> data_sources;  // the data.train entries; one for a plain path
  std::string data_validation;           // data.validation: JSONL file (optional)
  double data_val_fraction = 0.05;       // data.val_fraction: used when data.validation is empty
  std::string data_text_field = "text";  // data.text_field
  bool data_shuffle = true;              // data.shuffle
  DataFormat data_format = DataFormat::Text;  // data.format: text | instruction | messages | ...
  Packing data_packing = Packing::Auto;       // data.packing: auto | stream | pack | pad
  ChatTemplateChoice data_chat_template = ChatTemplateChoice::Auto;  // data.chat_template
  bool data_train_on_inputs = false;                                 // data.train_on_inputs
  Overlong data_overlong = Overlong::Truncate;         // data.overlong: truncate | drop
  bool data_skip_bad_lines = false;                    // data.skip_bad_lines
  bool data_bucket = true;                             // data.bucket
  std::string data_instruction_field = "instruction";  // data.instruction_field
  std::string data_input_field = "input";              // data.input_field
  std::string data_output_field = "output";            // data.output_field
  std::string data_messages_field = "messages";        // data.messages_field
  std::string data_role_field = "role";                // data.role_field
  std::string data_content_field = "content";          // data.content_field
  std::string data_system_prompt;                      // data.system_prompt
  bool data_cache = true;                              // data.cache
  std::string data_cache_dir;  // data.cache_dir (empty: $XDG_CACHE_HOME/ftune/data)
  // train
  int64_t seq_len = 256;                  // train.seq_len
  int64_t micro_batch_size = 4;           // train.micro_batch_size
  int64_t grad_accum = 1;                 // train.grad_accum
  int64_t global_batch_size = 0;          // train.global_batch_size (0: micro x accum x ranks)
  int64_t max_steps = 0;                  // train.max_steps (0: run train.epochs)
  double epochs = 1.0;                    // train.epochs
  Recompute recompute = Recompute::None;  // train.recompute: none | mlp | full
  // optim
  double lr = 3e-4;                     // optim.lr
  double beta1 = 0.9;                   // optim.beta1
  double beta2 = 0.95;                  // optim.beta2
  double eps = 1e-8;                    // optim.eps
  double weight_decay = 0.0;            // optim.weight_decay
  double clip = 1.0;                    // optim.clip (0: off)
  bool decay_norms_and_biases = false;  // optim.decay_norms_and_biases
  bool decay_embeddings = false;        // optim.decay_embeddings
  // schedule
  ScheduleKind schedule_kind = ScheduleKind::Cosine;  // schedule.kind: constant | linear | cosine
  int64_t warmup_steps = 0;                           // schedule.warmup_steps
  double min_lr_ratio = 0.0;                          // schedule.min_lr_ratio
  // eval
  int64_t eval_every = 0;        // eval.every (0: only before and after training)
  int64_t eval_max_batches = 0;  // eval.max_batches (0: whole validation set)
  // checkpoint
  int64_t checkpoint_every = 0;      // checkpoint.every (0: only at the end)
  int64_t checkpoint_keep_last = 2;  // checkpoint.keep_last
  OnCheckpointError checkpoint_on_error = OnCheckpointError::Stop;  // checkpoint.on_error
  // guard: what a bad step (non-finite loss or gradient norm, or a loss spike) does
  GuardPolicy guard_nonfinite = GuardPolicy::Stop;  // guard.nonfinite: skip | stop | rollback
  GuardPolicy guard_spike = GuardPolicy::Stop;      // guard.spike: skip | stop | rollback
  double guard_spike_zscore = 0.0;                  // guard.spike_zscore (0: no spike detection)
  int64_t guard_spike_window = 50;  // guard.spike_window: losses the z-score is taken over
  double guard_lr_backoff = 0.5;    // guard.lr_backoff: lr factor applied per rollback
  int64_t guard_max_rollbacks = 3;  // guard.max_rollbacks: then the run stops
  // export
  ExportDtype export_dtype = ExportDtype::Auto;  // export.dtype: auto (base's) | f32 | bf16 | f16
  int64_t export_max_shard_mb = 5000;            // export.max_shard_mb
  bool export_merge = false;                     // export.merge: LoRA also writes the merged model
  std::string export_sign_key;          // export.sign_key: Ed25519 private key (PEM) signing
  std::string export_encrypt_key_file;  // export.encrypt.key_file: AES-256 key (64 hex chars)
  std::string export_encrypt_key_env;   // export.encrypt.key_env: variable holding that key
  // generation shown after training
  std::string generate_prompt;           // generate.prompt (empty: none)
  int64_t generate_max_new_tokens = 48;  // generate.max_new_tokens
  double generate_temperature = 0.0;     // generate.temperature (0: greedy)
  double generate_top_p = 1.0;           // generate.top_p
  // job
  std::string output_dir;                               // output_dir
  int64_t seed = 42;                                    // seed
  DeviceSetting device = DeviceSetting::Auto;           // device: auto | cpu | cuda
  PrecisionSetting precision = PrecisionSetting::Auto;  // precision: auto | fp32 | bf16
  int64_t threads = 0;                                  // threads (0: all cores)
  int64_t log_every = 10;    // log.every: plain progress line period when not a TTY
  int64_t report_every = 0;  // report.every: rewrite report.html every N steps (0: at end)
  Sharding sharding = Sharding::None;  // sharding: none | zero1 | zero2 | zero3
  double dist_timeout = 600;           // dist.timeout: seconds a collective may take
  bool dist_overlap = true;            // dist.overlap: ZeRO-2/3 collectives run under the compute
};

struct Recipe {
  RecipeConfig cfg;
  std::string source;  // recipe file path ("" when built from a string)
  std::string
      resolved_yaml;  // canonical YAML of every key after overrides (print-config, manifests)
  // The same without the run-control keys (logging, checkpoint cadence, guards, export format,
  // threads, timeouts): what the training computes. A run resumes when this is unchanged.
  std::string identity_yaml;
};

// Loads a recipe file and applies overrides ("train.max_steps=20"). Relative paths inside the
// file resolve against the file's directory; paths given as overrides resolve against the CWD.
// Errors are ftune::Error with "file:line:column: key: what is wrong; what to do".
Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides = {});
// Same, from YAML text; `label` stands in for the file name in messages, base_dir for paths.
Recipe load_recipe_text(const std::string& yaml, const std::string& label,
                        const std::string& base_dir,
                        const std::vector<std::string>& overrides = {});
// The training sources to read: cfg.data_sources, or one source of cfg.data_train when the list
// is empty or no longer starts with data_train (code that sets data_train directly).
std::vector<DataSource> recipe_data_sources(const RecipeConfig& cfg);
// `cfg` with the source's overrides applied to the data.* fields and data_train set to its path.
RecipeConfig recipe_for_source(const RecipeConfig& cfg, const DataSource& src);
// Canonical YAML of a config (every schema key, grouped by section, in schema order).
std::string recipe_to_yaml(const RecipeConfig& cfg);
// recipe_to_yaml with every run-control key at its default (Recipe::identity_yaml).
// Micro-batches per optimizer step on each of `world_size` ranks: train.grad_accum, or what
// train.global_batch_size (rows per step over all ranks) gives, so every rank count trains the
// same batch. A global batch that does not divide is an error ending in `fix`.
int64_t recipe_grad_accum(const RecipeConfig& c, int world_size,
                          const std::string& fix = "change one of them");
std::string recipe_identity_yaml(const RecipeConfig& cfg);
// "key: old -> new" for each schema key whose value differs between two configs (data.train
// list entries count as one key), in schema order; run-control keys only, or only the others.
std::vector<std::string> recipe_differences(const RecipeConfig& before, const RecipeConfig& after,
                                            bool run_control);
// The schema as a Markdown reference (docs/recipes.md is generated from this).
std::string recipe_schema_markdown();

}  // namespace ftune
