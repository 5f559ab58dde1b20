// One function per `minipuzzle` command; each lives in cmd_<name>.cpp and
// receives the arguments after the command name. Return: process exit code.
#pragma once

#include <string>
#include <vector>

namespace minipuzzle::cli {

using Args = std::vector<std::string>;

int cmd_inspect(const Args& args);     // architecture, parameters, memory
int cmd_eval(const Args& args);        // LM loss / accuracy on a dataset
int cmd_data_build(const Args& args);  // text files -> Megatron dataset
int cmd_logits(const Args& args);      // test support: logits for token ids
int cmd_export(const Args& args);      // re-save a checkpoint Hub style (dtype, shards)
int cmd_score(const Args& args);       // importance of layers, neurons, channels, heads
int cmd_search(const Args& args);      // architectures that fit a memory budget, ranked
int cmd_prune(const Args& args);       // slice a checkpoint to a candidate / --set widths
int cmd_distill(const Args& args);     // teacher -> student logit distillation
int cmd_train(const Args& args);       // the same loop with plain cross-entropy, no teacher
int cmd_teacher_logits(const Args& args);  // offline teacher: top-k logits cache for distill
int cmd_compress(const Args& args);        // the whole chain from a YAML job, resumable

}  // namespace minipuzzle::cli
