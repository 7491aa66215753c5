"""formatted and exports: render rows with the target tokenizer's chat template, decontaminate against
benchmarks, split and subset, and write immutable export folders."""
