#!/usr/bin/env -S node --
// `--`: Node 20 reads `--env-file PATH` anywhere on its command line, even after the script,
// and exits 9 ("node: PATH: not found") when the file is missing; the CLI's own --env-file must
// reach the CLI, whose error names the flag (exit 2).
import "../dist/main.js"
