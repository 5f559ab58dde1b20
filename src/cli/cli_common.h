// Shared plumbing of the `minipuzzle` commands: option parsing that turns
// every usage mistake into InputError (exit 2), and small output helpers.
#pragma once

#include <boost/program_options.hpp>
#include <string>
#include <vector>

namespace minipuzzle::cli {

namespace po = boost::program_options;

// Parses `args` (without the program and command names). `usage` is the
// first help line, e.g. "minipuzzle eval DIR --data PREFIX [options]".
// Adds --help itself; returns false when help was printed (exit 0).
// Throws InputError for unknown flags, missing values, wrong types and
// missing required options.
bool parse_args(const std::string& usage, const std::vector<std::string>& args,
                po::options_description& options, const po::positional_options_description& positional,
                po::variables_map& vm);

// InputError, before any work, when the output file `path` (given as
// `flag`) cannot be written: its directory is missing or a directory stands
// at that path.
void check_output_file(const std::string& path, const char* flag);

// Throws InputError "missing argument NAME: usage ..." when absent.
void require(const po::variables_map& vm, const char* name, const std::string& usage);

}  // namespace minipuzzle::cli
