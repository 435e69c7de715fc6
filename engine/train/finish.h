// The end of a run that trained to its last step: every rank's training peak, the exported
// model or adapter (rank 0 writes; under ZeRO-3 every rank gathers the weights to it one unit
// at a time), the sample generation, memory.json, summary.json, the provenance manifests and
// the report.
#pragma once
#include "engine/dist/communicator.h"
#include "engine/train/fault_injection.h"
#include "engine/train/job.h"
#include "engine/train/run_log.h"
#include "engine/train/session.h"
#include "engine/train/trainer.h"

namespace ftune {

void finish_run(const Job& job, Session& s, Communicator& comm, const TrainState& state,
                const FaultInjection& faults, RunLog& log, TrainResult& result);

// report.html is a view of the run, not part of it: failing to write it is a warning, never a
// failed run. Returns the path, or "" after printing why not.
std::string write_report_or_warn(const std::string& output_dir);

}  // namespace ftune
